"""The published runs as configs: each parses with its source's numbers, and each starts and
trains two steps on a tiny model of the same family on the CPU.

What the short runs override, and why (everything else is the recipe as shipped):

- every recipe: ``model.name_or_path`` (a tiny random model built here instead of a 7B-40B
  checkpoint), ``training.max_steps=2`` (a warmup schedule's first step has learning rate 0)
  and ``training.gradient_accumulation_steps=1`` (one step of 128 sequences would be 32
  micro-batches; one micro-batch a step starts the run just the same);
- Jerboa: nothing else. The tiny model is a Falcon (fused ``query_key_value``) loaded in 8-bit
  through bitsandbytes' CPU kernels, so LoRA r8 on that projection is what runs;
- Alpaca 7B/13B: ``training.fsdp=false`` and ``fsdp_config=null`` (FSDP needs a process group
  of GPUs) and ``training.tf32=false`` (TF32 needs an Ampere GPU); the full fine-tune itself
  (``method: full``) runs;
- Code Llama FIM + long context: ``model.attn_implementation=sdpa`` (flash-attention needs a
  GPU); FIM at rate 0.9, RoPE base 1,000,000 and 16,384-token packed rows run as shipped;
- ingest mix: nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.config import load_train_config
from tests.finetune_fixtures import (
    make_fim_tiny_model,
    make_tiny_falcon,
    make_tiny_model,
    require_torch,
    write_alpaca_data,
)

torch = require_torch()
REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


def _numbers(cfg) -> dict:
    t = cfg.training
    return {
        "lr": t["learning_rate"],
        "epochs": t.get("num_train_epochs"),
        "micro": t["per_device_train_batch_size"],
        "accum": t["gradient_accumulation_steps"],
    }


def test_jerboa_numbers():
    cfg = load_train_config(CONFIGS / "train-jerboa-falcon40b.yaml")
    assert cfg.method == "lora" and cfg.model.quantization == "8bit"
    assert cfg.lora.r == 8 and cfg.lora.target_modules == ["query_key_value"]
    assert _numbers(cfg) == {"lr": 3e-4, "epochs": 2, "micro": 4, "accum": 8}
    assert 4 * 4 * 8 == 128  # micro-batch x accumulation x GPUs in the launch command


@pytest.mark.parametrize(("name", "lr", "epochs"), [("7b", 2e-5, 3), ("13b", 1e-5, 5)])
def test_alpaca_numbers(name, lr, epochs):
    cfg = load_train_config(CONFIGS / f"train-alpaca-{name}-fsdp.yaml")
    assert cfg.method == "full" and cfg.model.quantization == "none"
    assert _numbers(cfg) == {"lr": lr, "epochs": epochs, "micro": 4, "accum": 8}
    t = cfg.training
    assert t["warmup_steps"] == 0.03 and t["lr_scheduler_type"] == "cosine"
    assert t["weight_decay"] == 0.0 and cfg.data.max_length == 512
    assert t["fsdp"] is True and t["fsdp_config"]["reshard_after_forward"] is True
    assert t["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]


def test_ingest_mix_and_codellama_numbers():
    mix = load_train_config(CONFIGS / "train-ingest-mix.yaml")
    assert mix.training["learning_rate"] == 2e-5 and mix.training["lr_scheduler_type"] == "cosine"
    assert mix.training["warmup_steps"] == 0
    assert mix.lora.r >= 64
    cl = load_train_config(CONFIGS / "train-codellama-fim-long.yaml")
    assert cl.data.fim.rate == 0.9 and cl.data.fim.spm_rate == 0.5
    assert cl.model.rope_theta == 1_000_000 and cl.data.max_length == 16384
    assert cl.training["packing"] is True and cl.training["learning_rate"] == 2e-5


def _code_data(path: Path) -> Path:
    code = [
        "def add(a, b):\n    return a + b\n",
        "def is_even(n):\n    return n % 2 == 0\n",
        "def first(xs):\n    for x in xs:\n        return x\n    return None\n",
    ]
    rows = [
        {"instruction": "Write it.", "output": code[i % 3], "language": "python"} for i in range(24)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _mix_data(tmp: Path) -> tuple[Path, Path]:
    msgs = tmp / "messages.jsonl"
    msgs.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Repeat the word {w} twice."},
                        {"role": "assistant", "content": f"{w} {w}"},
                    ]
                }
            )
            + "\n"
            for w in ("apple", "pear", "plum", "lion", "bear", "wolf")
        )
    )
    raw = tmp / "raw_text.jsonl"
    raw.write_text(
        json.dumps({"text": "def add(a, b):\n    return a + b\n" * 5, "source": "src/a.py"})
        + "\n"
        + json.dumps({"text": "read the word list twice " * 10, "source": "README.md"})
        + "\n"
    )
    return msgs, raw


def _run(config: str, model: Path, data: Path, out: Path, *extra: str):
    from finetune.train import run_training

    cfg = load_train_config(
        CONFIGS / config,
        [
            f"model.name_or_path={model}",
            "training.max_steps=2",
            "training.gradient_accumulation_steps=1",
            *extra,
        ],
    )
    trainer, summary = run_training(cfg, data, output_dir=out)
    assert summary["global_step"] == 2
    assert all(loss == loss for _, loss in summary["losses"])  # no NaN
    return trainer, summary


def test_jerboa_starts_on_a_tiny_8bit_falcon(tmp_path):
    import bitsandbytes as bnb

    tiny = make_tiny_falcon(tmp_path / "falcon")
    trainer, summary = _run(
        "train-jerboa-falcon40b.yaml",
        tiny,
        write_alpaca_data(tmp_path / "data.json"),
        tmp_path / "out",
    )
    int8 = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert len(int8) == 2 * 4  # qkv, dense, 4h, h_to_4h per layer: Falcon's projections
    adapted = {n.split(".lora_")[0] for n, _ in trainer.model.named_parameters() if "lora_" in n}
    assert adapted and all(n.endswith("query_key_value") for n in adapted)
    assert summary["lora_tensors"] == 2 * 2


@pytest.mark.parametrize("name", ["7b", "13b"])
def test_alpaca_full_finetune_starts(name, tmp_path):
    from safetensors.torch import load_file

    tiny = make_tiny_model(tmp_path / "tiny")
    out = tmp_path / "out"
    _run(
        f"train-alpaca-{name}-fsdp.yaml",
        tiny,
        write_alpaca_data(tmp_path / "data.json"),
        out,
        "training.fsdp=false",
        "training.fsdp_config=null",
        "training.tf32=false",
    )
    before, after = load_file(tiny / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(before) == set(after) and not (out / "adapter_model.safetensors").exists()
    moved = [k for k in before if not torch.equal(before[k], after[k].to(before[k].dtype))]
    assert len(moved) > len(before) // 2  # every weight is trained, not an adapter
    assert json.loads((out / "prompt_format.json").read_text())["method"] == "full"


def test_codellama_fim_long_context_starts(tmp_path):
    tiny = make_fim_tiny_model(tmp_path / "tiny", "codellama")
    trainer, summary = _run(
        "train-codellama-fim-long.yaml",
        tiny,
        _code_data(tmp_path / "code.jsonl"),
        tmp_path / "out",
        "model.attn_implementation=sdpa",
    )
    assert sum(summary["data"]["train"]["fim"].values()) > 10  # rate 0.9 of ~24
    fmt = json.loads((tmp_path / "out" / "prompt_format.json").read_text())
    assert fmt["fim"]["family"] == "codellama" and fmt["fim"]["end"] == "▁<EOT>"
    assert fmt["model_config"]["rope_parameters"]["rope_theta"] == 1_000_000.0
    assert fmt["model_config"]["max_position_embeddings"] == 16384
    assert summary["packing"] is True
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and (batch["position_ids"][0] == 0).sum() > 1


def test_ingest_mix_starts(tmp_path):
    tiny = make_tiny_model(tmp_path / "tiny")
    msgs, raw = _mix_data(tmp_path)
    _, summary = _run(
        "train-ingest-mix.yaml",
        tiny,
        msgs,
        tmp_path / "out",
        f"data.raw_text={raw}",
        f"data.validation_path={msgs}",
    )
    assert summary["data"]["raw_text"]["rows"] >= 2 and summary["data"]["train"]["kept"] == 6
