"""The trainer end to end on a tiny Llama (2 layers, hidden 32) with a tokenizer trained here:
adapter weights move and base weights do not, save/reload/merge give the same logits, resume
restores step and optimizer state, the 4-bit path runs on the CPU, packing keeps examples apart,
the CLI works as a real subprocess, and (slow) SmolLM2 trains from its GGUF."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.config import load_train_config
from tests.finetune_fixtures import make_tiny_model, require_torch, write_alpaca_data

torch = require_torch()
REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "configs" / "train-tiny-test.yaml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_alpaca_data(tmp_path_factory.mktemp("data") / "data.json")


def cfg_for(tiny: Path, *overrides: str):
    return load_train_config(TINY_CONFIG, [f"model.name_or_path={tiny}", *overrides])


def probe_batch(tokenizer) -> dict:
    from finetune.data import format_prompt

    texts = [
        format_prompt("Repeat the word plum twice.", "", tokenizer, "alpaca") + "plum plum",
        format_prompt("Repeat the word twice.", "lion", tokenizer, "alpaca"),
    ]
    tokenizer.padding_side = "right"
    return tokenizer(texts, return_tensors="pt", padding=True)


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits.float()


@pytest.fixture(scope="module")
def trained(tiny, data, tmp_path_factory):
    from finetune.train import run_training

    out = tmp_path_factory.mktemp("run") / "adapter"
    cfg = cfg_for(tiny, "training.max_steps=30")
    trainer, summary = run_training(cfg, data, output_dir=out)
    return trainer, summary, out


def test_loss_falls_and_summary_is_recorded(trained):
    _, summary, out = trained
    losses = [loss for _, loss in summary["losses"]]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2, losses
    assert summary["first_loss"] == losses[0] and summary["last_loss"] == losses[-1]
    assert summary["eval_losses"] and summary["eval_losses"][-1][0] == 30
    saved = json.loads((out / "train_summary.json").read_text())
    assert saved["global_step"] == 30 and saved["data"]["train"]["kept"] > 0


def test_adapter_weights_move_and_base_weights_do_not(trained, tiny):
    from safetensors.torch import load_file

    trainer, _, out = trained
    base_before = load_file(tiny / "model.safetensors")
    model = trainer.model
    n_checked = 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        assert key in base_before, key
        assert torch.equal(p.detach().cpu(), base_before[key]), f"base weight {key} changed"
        assert not p.requires_grad
        n_checked += 1
    assert n_checked == len(base_before)
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero
    # all-linear on a Llama: q, k, v, o, gate, up, down in each of 2 layers, A and B each
    assert len(adapter) == 2 * 7 * 2


def test_save_reload_and_merge_give_identical_logits(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    from finetune.merge import merge
    from finetune.model import load_model, read_prompt_format

    trainer, _, out = trained
    fmt = read_prompt_format(out)
    assert fmt["format"] == "alpaca" and Path(fmt["base_model"]).exists()
    assert "${instruction}" in fmt["template_no_input"]

    live = trainer.model.eval()
    batch = probe_batch(trainer.processing_class)
    expected = logits(live, {k: v.to(live.device) for k, v in batch.items()}).cpu()

    reloaded, tok = load_model(None, str(out), dtype="fp32", device="cpu")
    assert tok.eos_token_id == trainer.processing_class.eos_token_id
    torch.testing.assert_close(logits(reloaded, batch), expected, atol=1e-5, rtol=1e-5)

    merged_dir = merge(out, tmp_path / "merged", dtype="fp32")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, batch), expected, atol=1e-4, rtol=1e-4)
    assert (merged_dir / "prompt_format.json").exists()
    # The base alone differs, so the comparison above is not vacuous.
    with reloaded.disable_adapter():
        assert not torch.allclose(logits(reloaded, batch), expected, atol=1e-3)


def test_generate_uses_the_training_prompt_and_stops(trained):
    from finetune.generate import generate
    from finetune.model import load_model, read_prompt_format

    _, _, out = trained
    model, tok = load_model(None, str(out), dtype="fp32", device="cpu")
    text = generate(
        model,
        tok,
        "Repeat the word plum twice.",
        prompt_format=read_prompt_format(out),
        max_new_tokens=12,
    )
    assert isinstance(text, str) and "###" not in text[:3]


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


def test_resume_restores_step_and_optimizer_state(tiny, data, tmp_path):
    from finetune.train import run_training

    over = [
        "training.max_steps=6",
        "training.save_steps=3",
        "training.learning_rate=0.02",
        "data.validation_fraction=0",
    ]
    full_dir = tmp_path / "full"
    run_training(cfg_for(tiny, *over), data, output_dir=full_dir)
    assert (full_dir / "checkpoint-3" / "optimizer.pt").exists()

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(full_dir / "checkpoint-3", resumed_dir / "checkpoint-3")
    trainer, summary = run_training(cfg_for(tiny, *over), data, output_dir=resumed_dir, resume=True)
    assert trainer.state.global_step == 6
    assert [step for step, _ in summary["losses"]] == [4, 5, 6]
    full, resumed = _adapter(full_dir), _adapter(resumed_dir)
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], atol=1e-6, rtol=1e-5)

    # Control: the same resume without the optimizer's moments ends elsewhere, so the match
    # above is due to the restored optimizer state and not to the weights alone.
    blank_dir = tmp_path / "no-optimizer"
    blank_dir.mkdir()
    shutil.copytree(full_dir / "checkpoint-3", blank_dir / "checkpoint-3")
    (blank_dir / "checkpoint-3" / "optimizer.pt").unlink()
    run_training(cfg_for(tiny, *over), data, output_dir=blank_dir, resume=True)
    blank = _adapter(blank_dir)
    assert any(not torch.allclose(blank[k], full[k], atol=1e-6) for k in full)


def test_qlora_4bit_trains_on_cpu(tiny, data, tmp_path):
    import bitsandbytes as bnb

    from finetune.train import run_training

    cfg = cfg_for(
        tiny,
        "model.quantization=4bit",
        "model.dtype=auto",
        "training.max_steps=3",
        "data.validation_fraction=0",
    )
    trainer, summary = run_training(cfg, data, output_dir=tmp_path / "q")
    quantized = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7
    assert quantized[0].weight.quant_state.quant_type == "nf4"
    assert summary["lora_tensors"] == 28 and summary["global_step"] == 3
    assert all(loss == loss for _, loss in summary["losses"])  # no NaN


def test_packed_examples_do_not_attend_to_each_other(tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    a = torch.tensor([[1, 50, 60, 70, 80]])
    b = torch.tensor([[1, 90, 100, 110]])
    packed = torch.cat([a, b], dim=1)
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]])
    with torch.no_grad():
        # use_cache=False as in training: with a cache, transformers treats the row as one sequence
        together = model(input_ids=packed, position_ids=pos, use_cache=False).logits
        alone_b = model(input_ids=b, use_cache=False).logits
        crossed = model(input_ids=packed, use_cache=False).logits  # one sequence: b sees a
    torch.testing.assert_close(together[:, 5:], alone_b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(crossed[:, 5:], alone_b, atol=1e-3)


def test_packing_run_feeds_position_ids_without_attention_mask(tiny, data, tmp_path):
    from finetune.train import run_training

    cfg = cfg_for(
        tiny, "training.packing=true", "training.max_steps=2", "data.validation_fraction=0"
    )
    trainer, summary = run_training(cfg, data, output_dir=tmp_path / "p")
    assert summary["packing"] is True
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and "position_ids" in batch
    assert batch["input_ids"].shape[0] == 1  # examples packed into one row
    starts = (batch["position_ids"][0] == 0).sum()
    assert starts > 1


def test_empty_or_untouched_adapter_is_an_error(tmp_path):
    from safetensors.torch import save_file

    from finetune.train import check_adapter

    with pytest.raises(RuntimeError, match="not written"):
        check_adapter(tmp_path, {})
    save_file({"other": torch.zeros(2)}, tmp_path / "adapter_model.safetensors")
    with pytest.raises(RuntimeError, match="no LoRA tensors"):
        check_adapter(tmp_path, {"x.lora_A.weight": torch.zeros(2)})
    init = {"x.lora_A.weight": torch.ones(2), "x.lora_B.weight": torch.zeros(2)}
    save_file(init, tmp_path / "adapter_model.safetensors")
    with pytest.raises(RuntimeError, match="equals its initialisation"):
        check_adapter(tmp_path, init)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "finetune", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_cli_help_and_config_error():
    r = _cli("--help")
    assert r.returncode == 0 and "train" in r.stdout and "merge" in r.stdout
    r = _cli("train", "--config", str(TINY_CONFIG), "--set", "lora.rank=4")
    assert r.returncode == 2 and "lora.rank" in r.stderr


@pytest.mark.slow
def test_cli_train_generate_merge(tiny, data, tmp_path):
    out = tmp_path / "adapter"
    r = _cli(
        "train",
        "--config",
        str(TINY_CONFIG),
        "--data",
        str(data),
        "--set",
        f"model.name_or_path={tiny}",
        "--set",
        "training.max_steps=4",
        "--output-dir",
        str(out),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "loss: first" in r.stdout and (out / "prompt_format.json").exists()
    r = _cli(
        "generate", "--adapter", str(out), "--max-new-tokens", "5", "Repeat the word plum twice."
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r = _cli("merge", "--adapter", str(out), "--output", str(tmp_path / "merged"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "merged" / "config.json").exists()


@pytest.mark.slow
def test_smollm2_from_gguf_trains_a_few_steps(data, tmp_path):
    from finetune.model import EMBEDDED
    from finetune.train import run_training

    cfg = load_train_config(
        REPO / "configs" / "train-smollm2-cpu.yaml",
        ["training.max_steps=3", "training.eval_strategy=no", "data.validation_fraction=0"],
    )
    trainer, summary = run_training(cfg, data, output_dir=tmp_path / "smol")
    assert summary["global_step"] == 3 and summary["lora_tensors"] > 0
    fmt = json.loads((tmp_path / "smol" / "prompt_format.json").read_text())
    assert fmt["base_model"] == EMBEDDED
    tok = trainer.processing_class
    assert tok.pad_token_id == tok.eos_token_id  # SmolLM2: pad == EOS, and EOS is still learned
    row = trainer.train_dataset[0]
    assert row["labels"][-1] == tok.eos_token_id


def test_rope_theta_round_trips_through_save_and_reload(tiny, data, tmp_path):
    """Long-context fine-tuning: the RoPE base set for training is saved with the adapter and
    set again when the adapter is loaded (and merged); without it the logits would differ."""
    from transformers import AutoModelForCausalLM

    from finetune.merge import merge
    from finetune.model import load_model, read_prompt_format
    from finetune.train import run_training

    cfg = cfg_for(
        tiny,
        "model.rope_theta=1000000",
        "data.max_length=1024",  # over the tiny model's 512 positions: raised with the RoPE
        "training.max_steps=4",
        "data.validation_fraction=0",
    )
    out = tmp_path / "long"
    trainer, _ = run_training(cfg, data, output_dir=out)
    assert trainer.model.config.rope_parameters["rope_theta"] == 1_000_000.0
    fmt = read_prompt_format(out)
    assert fmt["model_config"]["rope_parameters"]["rope_theta"] == 1_000_000.0
    assert fmt["model_config"]["max_position_embeddings"] == 1024

    batch = probe_batch(trainer.processing_class)
    live = trainer.model.eval()
    expected = logits(live, {k: v.to(live.device) for k, v in batch.items()}).cpu()
    reloaded, _ = load_model(None, str(out), dtype="fp32", device="cpu")
    assert reloaded.config.rope_parameters["rope_theta"] == 1_000_000.0
    assert reloaded.config.max_position_embeddings == 1024
    torch.testing.assert_close(logits(reloaded, batch), expected, atol=1e-5, rtol=1e-5)

    # Control: the same adapter on the base's own RoPE (10,000) gives other logits.
    from peft import PeftModel

    plain = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    assert plain.config.rope_parameters["rope_theta"] == 10_000.0
    plain = PeftModel.from_pretrained(plain, out).eval()
    assert not torch.allclose(logits(plain, batch), expected, atol=1e-3)

    merged = AutoModelForCausalLM.from_pretrained(
        merge(out, tmp_path / "merged", dtype="fp32"), dtype=torch.float32
    ).eval()
    assert merged.config.rope_parameters["rope_theta"] == 1_000_000.0
    torch.testing.assert_close(logits(merged, batch), expected, atol=1e-4, rtol=1e-4)


def test_rope_scaling_is_validated_and_applied(tiny, tmp_path):
    from finetune.config import ConfigError
    from finetune.model import config_overrides, load_base_model

    with pytest.raises(ConfigError, match=r"model\.rope_scaling\.rope_type='spline'"):
        cfg_for(tiny, "model.rope_scaling={rope_type: spline, factor: 2}")
    with pytest.raises(ConfigError, match=r"model\.rope_theta=-1"):
        cfg_for(tiny, "model.rope_theta=-1")
    cfg = cfg_for(tiny, "model.rope_scaling={rope_type: linear, factor: 4}")
    from transformers import AutoConfig

    over = config_overrides(cfg.model, 128, AutoConfig.from_pretrained(tiny))
    assert over == {"rope_parameters": {"rope_theta": 10_000.0, "rope_type": "linear", "factor": 4}}
    model = load_base_model(tiny, dtype="fp32", device="cpu", config_overrides=over)
    assert model.config.rope_parameters["rope_type"] == "linear"
    assert config_overrides(cfg_for(tiny).model, 128, AutoConfig.from_pretrained(tiny)) == {}
