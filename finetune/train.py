"""LoRA / QLoRA supervised fine-tuning with TRL's ``SFTTrainer`` and peft.

Choices, and why:

- **TRL's SFTTrainer + peft, not a hand-written loop.** It brings resume (optimizer, scheduler,
  RNG and step restored from ``checkpoint-N``), evaluation during training, gradient
  checkpointing, mixed precision, QLoRA's adapter-dtype handling, packing with a padding-free
  collator, and ``accelerate launch`` (DDP/FSDP/DeepSpeed) for free. The ``training:`` section of
  the YAML is passed to ``trl.SFTConfig`` unchanged, so its fields are TRL's own.
- **We tokenize, TRL does not.** ``finetune.data`` hands SFTTrainer rows that already hold
  ``input_ids`` and ``labels`` (-100 over the prompt), which TRL uses as they are. TRL's own
  prompt-completion path (``completion_only_loss``) would truncate ``keep_start`` *after* adding
  EOS, losing it on long examples; ours cuts the response and keeps EOS. ``completion_only_loss``
  and ``assistant_only_loss`` therefore do not apply (the labels already say what is learned);
  ``data.train_on_inputs`` switches prompt loss on.
- **Right padding; labels padded with -100 by position** (TRL's collator), so EOS stays learned
  when pad == EOS and fp16 sees no left-padding NaNs.
- **Packing** (``training.packing: true``) uses TRL's best-fit-decreasing packing with the
  padding-free collator: examples are concatenated with ``position_ids`` restarting at 0 and no
  attention mask. With flash-attention the varlen kernel separates the examples; with ``sdpa``
  and ``eager`` transformers 5 builds a block-diagonal mask from the position_ids, so no example
  attends to another on any backend (tested in tests/test_finetune_train.py). Packing is off by
  default.
- **report_to none** unless the YAML says otherwise; the loss is printed and recorded.
- After saving, the adapter file is opened and checked to hold every LoRA tensor and to differ
  from its initialisation; an empty or untouched adapter (a known failure after library
  upgrades) is an error, not a silent success.

- **Full fine-tuning** (``method: full``, Alpaca's recipe) is the same trainer without peft:
  every weight is trained and the output directory is a whole model (sharded by FSDP when
  ``training.fsdp`` is set and the run is launched with ``torchrun``/``accelerate``).
- **Fill-in-the-middle and long context** are data and config, not a second loop:
  ``data.fim`` turns a share of the code examples into FIM rows (:mod:`finetune.fim`), and
  ``model.rope_theta`` / ``model.rope_scaling`` are set on the base config before the weights
  are built and recorded so that loading the adapter sets them again.

The adapter directory gets ``adapter_model.safetensors``, ``adapter_config.json``, the tokenizer,
``prompt_format.json`` (how prompts were built, the base model, the FIM sentinels, the config
overrides) and ``train_summary.json`` (first and last training loss, evaluation loss, steps,
tokens, seconds, data counts).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from finetune.config import TrainConfig, to_dict
from finetune.data import build_datasets, latest_data, prompt_format_dict
from finetune.model import (
    config_overrides,
    load_base_model,
    load_tokenizer,
    lora_config,
    model_reference,
    resolve_dtype,
    resolve_model,
    write_prompt_format,
)


def default_output_dir(data_path: Path | None) -> Path:
    """``outputs/<run>/adapter`` for a run's data, else ``outputs/train-<timestamp>``."""
    data_path = Path(data_path) if data_path is not None else None
    if data_path is not None and data_path.parent.parent.name == "outputs":
        return data_path.parent / "adapter"
    return Path("outputs") / f"train-{datetime.now():%Y%m%d-%H%M%S}"


def sft_config(cfg: TrainConfig, output_dir: Path, has_eval: bool, torch_dtype: Any) -> Any:
    """``trl.SFTConfig`` from the ``training:`` mapping plus our defaults (theirs win)."""
    import torch
    from trl import SFTConfig

    defaults: dict[str, Any] = {
        "output_dir": str(output_dir),
        "report_to": "none",
        "logging_steps": 1,
        "bf16": torch_dtype == torch.bfloat16,
        "fp16": torch_dtype == torch.float16,
        "save_strategy": "steps",
        "save_total_limit": 2,
        # bf16 autocast (the 4-bit path's compute dtype) is allowed on the CPU only with use_cpu
        "use_cpu": not torch.cuda.is_available(),
    }
    if has_eval:
        defaults["eval_strategy"] = "steps"
        defaults["per_device_eval_batch_size"] = cfg.training.get("per_device_train_batch_size", 8)
    args = {**defaults, **cfg.training, "max_length": cfg.data.max_length}
    if not has_eval:  # no validation examples: evaluation settings from the YAML cannot apply
        args["eval_strategy"] = "no"
        args["eval_on_start"] = False
    try:
        return SFTConfig(**args)
    except TypeError as e:
        raise ValueError(
            f"training: {e} (keys of trl.SFTConfig / transformers.TrainingArguments)"
        ) from None


def check_adapter(adapter_dir: Path, initial: dict[str, Any]) -> int:
    """Raise if the saved adapter is empty or its LoRA-B matrices are still all zero."""
    from safetensors.torch import load_file

    path = adapter_dir / "adapter_model.safetensors"
    if not path.exists():
        raise RuntimeError(f"{path}: adapter weights were not written")
    tensors = load_file(path)
    lora = {k: v for k, v in tensors.items() if "lora_" in k}
    if not lora:
        raise RuntimeError(f"{path}: holds no LoRA tensors ({len(tensors)} tensors in all)")
    if len(lora) < len(initial):
        raise RuntimeError(f"{path}: {len(lora)} LoRA tensors saved, {len(initial)} trained")
    moved = any(not v.float().allclose(initial[k].float()) for k, v in lora.items() if k in initial)
    if initial and not moved:
        raise RuntimeError(f"{path}: the saved adapter equals its initialisation")
    return len(lora)


def check_full_model(out: Path) -> None:
    """Raise if a full fine-tune wrote no weights."""
    if not any((out / f).exists() for f in ("model.safetensors", "model.safetensors.index.json")):
        raise RuntimeError(f"{out}: the fine-tuned model's weights were not written")


def _saved_name(param_name: str) -> str:
    # peft saves "base_model.model.x.lora_A.weight" for the parameter "...lora_A.default.weight"
    return param_name.replace(".default", "")


def compile_blocks(model: Any) -> int:
    """``torch.compile`` each repeated decoder block in place (one graph, reused by every block)."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        return 0
    blocks = max(lists, key=len)
    for block in blocks:
        block.compile()
    return len(blocks)


def train(
    cfg: TrainConfig,
    data_path: str | Path | None = None,
    *,
    resume: str | bool | None = None,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train a LoRA adapter; returns the summary also written to ``train_summary.json``."""
    return run_training(cfg, data_path, resume=resume, output_dir=output_dir)[1]


def run_training(
    cfg: TrainConfig,
    data_path: str | Path | None = None,
    *,
    resume: str | bool | None = None,
    output_dir: str | Path | None = None,
) -> tuple[Any, dict[str, Any]]:
    """:func:`train`, also returning the SFTTrainer (whose ``model`` is the trained PeftModel)."""
    from peft.helpers import disable_input_dtype_casting
    from transformers import AutoConfig, TrainerCallback
    from trl import SFTTrainer

    given = data_path or cfg.data.path
    # Raw text alone (e.g. a repository's code for FIM) needs no instruction file.
    path = Path(given) if given else (None if cfg.data.raw_text else latest_data())
    out = Path(output_dir or cfg.training.get("output_dir") or default_output_dir(path))
    base = resolve_model(cfg.model.name_or_path, cfg.model.gguf_file)
    tokenizer = load_tokenizer(base)
    train_ds, eval_ds, data_stats = build_datasets(cfg.data, tokenizer, path)
    fim_note = ""
    if "fim" in data_stats:
        rows = {**data_stats["train"].get("fim", {})}
        for mode, n in data_stats.get("raw_text", {}).get("fim", {}).items():
            rows[mode] = rows.get(mode, 0) + n
        fim_note = f"; FIM rows {rows} with {data_stats['fim']['family']} sentinels"
    print(
        f"data: {path or cfg.data.raw_text}: {len(train_ds)} train / "
        f"{len(eval_ds) if eval_ds else 0} validation examples "
        f"(truncated {data_stats['train']['truncated']}, dropped {data_stats['train']['dropped']})"
        f"{fim_note}",
        flush=True,
    )
    overrides = config_overrides(
        cfg.model,
        cfg.data.max_length,
        AutoConfig.from_pretrained(base, trust_remote_code=cfg.model.trust_remote_code),
    )
    if overrides:
        print(f"model config overrides: {json.dumps(overrides)}", flush=True)
    torch_dtype = resolve_dtype(cfg.model.dtype, "auto", cfg.model.quantization)
    # The arguments come first: under DeepSpeed ZeRO-3 they must exist before the model is
    # built so that from_pretrained shards the weights as it loads them.
    args = sft_config(cfg, out, eval_ds is not None, torch_dtype)
    model = load_base_model(
        base,
        dtype=cfg.model.dtype,
        quantization=cfg.model.quantization,
        attn_implementation=cfg.model.attn_implementation,
        trust_remote_code=cfg.model.trust_remote_code,
        config_overrides=overrides or None,
        sharded=bool(args.fsdp or args.deepspeed),
    )
    # Packed rows are recognised from position_ids only when no KV cache is built (training).
    model.config.use_cache = False
    if args.packing:
        attn = model.config._attn_implementation
        print(
            f"packing: on (best-fit decreasing, padding-free position_ids; attention '{attn}' "
            "keeps examples apart)",
            flush=True,
        )

    losses: list[tuple[int, float]] = []
    evals: list[tuple[int, float]] = []
    tokens = [0]

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            logs = logs or {}
            if "loss" in logs:
                losses.append((state.global_step, float(logs["loss"])))
            if "eval_loss" in logs:
                evals.append((state.global_step, float(logs["eval_loss"])))
            if "num_tokens" in logs:
                tokens[0] = int(float(logs["num_tokens"]))

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora) if cfg.method == "lora" else None,
        callbacks=[Record()],
    )
    if cfg.method == "lora":
        trainer.model.print_trainable_parameters()
    else:
        n_params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        print(f"full fine-tune: {n_params:,} trainable parameters", flush=True)
    initial = {
        _saved_name(n): p.detach().cpu().clone()
        for n, p in trainer.model.named_parameters()
        if p.requires_grad and "lora_" in n
    }
    if cfg.model.compile:
        compile_blocks(trainer.model)
    # Under bf16/fp16 autocast peft would still cast every LoRA input to the adapters' fp32
    # (an fp32 copy of each activation, saved for backward): 12% slower and 8 GiB more on a 7B
    # at 8k tokens a step (BENCHMARKS.md). Autocast already runs the adapter
    # matmuls in half precision on fp32 master weights, so the cast buys nothing while training.
    mixed = bool(args.bf16 or args.fp16)
    t0 = time.perf_counter()
    casting = (
        disable_input_dtype_casting(trainer.model, active=mixed)
        if cfg.method == "lora"
        else contextlib.nullcontext()
    )
    with casting:
        result = trainer.train(resume_from_checkpoint=resume)
        if eval_ds is not None and (not evals or evals[-1][0] != trainer.state.global_step):
            trainer.evaluate()
    seconds = time.perf_counter() - t0

    trainer.save_model(str(out))
    if not trainer.is_world_process_zero():  # other ranks of a multi-GPU run are done here
        return trainer, {}
    tokenizer.save_pretrained(str(out))
    if cfg.method == "lora":
        n_tensors = check_adapter(out, initial)
    else:
        check_full_model(out)
        n_tensors = 0
    fmt = prompt_format_dict(cfg.data)
    if fmt["format"] == "alpaca":
        from pipeline.prompts import load

        fmt["template_input"] = load("alpaca_input").template
        fmt["template_no_input"] = load("alpaca_no_input").template
    fmt.update(model_reference(cfg.model.name_or_path, cfg.model.gguf_file))
    fmt["max_length"] = cfg.data.max_length
    fmt["method"] = cfg.method
    if "fim" in data_stats:
        fmt["fim"] = {**data_stats["fim"], "spm_rate": cfg.data.fim.spm_rate}
    if overrides:
        fmt["model_config"] = overrides
    write_prompt_format(out, fmt)

    summary = {
        "adapter_dir": str(out),
        "data": data_stats,
        "global_step": trainer.state.global_step,
        "first_loss": losses[0][1] if losses else None,
        "last_loss": losses[-1][1] if losses else None,
        "losses": losses,
        "eval_losses": evals,
        "train_runtime_s": round(seconds, 2),
        "train_loss_mean": result.training_loss,
        "tokens_seen": tokens[0],
        "packing": bool(args.packing),
        "lora_tensors": n_tensors,
        "config": to_dict(cfg),
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    first, last = summary["first_loss"], summary["last_loss"]
    if first is not None and last is not None:
        print(f"loss: first {first:.4f} -> last {last:.4f} over {summary['global_step']} steps")
    if evals:
        ev = evals[-1][1]
        before = f"{evals[0][1]:.4f} at step 0 -> " if evals[0][0] == 0 and len(evals) > 1 else ""
        print(f"eval loss: {before}{ev:.4f} (perplexity {math.exp(min(ev, 50)):.2f})")
    print(f"adapter: {out}")
    return trainer, summary
