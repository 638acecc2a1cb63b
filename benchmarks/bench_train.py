"""Training throughput of the LoRA / QLoRA setup: tokens/s, model FLOPs utilisation, peak memory.

The model is loaded and wrapped exactly as ``finetune.train`` does it (``finetune.model``:
``load_base_model`` with the same bitsandbytes config, ``lora_config`` from a ``lora:`` section,
adapter weights cast to bf16 for quantized models as TRL does, non-reentrant gradient
checkpointing with input grads enabled), then trained on random full-length token sequences
(no padding) with fused AdamW under bf16 autocast, as Trainer runs with ``bf16: true``. TRL's data
pipeline and Trainer bookkeeping are left out: they cost the same for any model size and would
only blur the number this measures.

MFU convention (stated because LoRA numbers are often quoted without one):

    MFU = tokens/s x FLOPs/token / peak dense bf16 FLOP/s of the GPU
    FLOPs/token (LoRA) = 4 N  +  6 N_lora            ("4N", the column the anchors use)
    FLOPs/token incl. attention = 4 N + 6 N_lora + 12 L h s   (PaLM-style, no causal discount)

N counts the parameters that take part in matrix products (every linear layer including
``lm_head``; not the input embedding, a lookup). Full fine-tuning costs 6N per token (forward 2N,
backward 2N for activation grads + 2N for weight grads). LoRA freezes the base, so the weight-grad
products of the base are never computed: 4N (forward 2N + activation grads 2N), plus 6 N_lora for
the adapters themselves. The extra forward that gradient checkpointing recomputes is real work
but not useful work, so it is not counted (it would be hardware FLOPs utilisation, HFU). With
these conventions, the published anchors come out as quoted: Llama-2-7B LoRA on an A100 at
~2,950 tok/s is 4 x 6.6e9 x 2950 / 312e12 = 25%; Llama-3-8B on an H100 at 12,500 tok/s is 41%.

Usage (GPU):

    python benchmarks/bench_train.py --model llama2-7b --mode lora --seq-len 2048 --batch-size 2
    python benchmarks/bench_train.py --model llama2-7b --mode qlora --seq-len 512 --batch-size 1 \
        --gradient-checkpointing

``--model llama2-7b`` is a Llama-2-7B-shaped LlamaConfig with random weights (saved once to
``--scratch`` so the 4-bit path loads it through ``from_pretrained`` like a real checkpoint);
``--model tiny`` is a small config for a CPU smoke run; anything else is a model directory.
Prints one JSON line per run (and appends it to ``--jsonl`` if given).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}

SHAPES = {
    "llama2-7b": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    ),
    "tiny": dict(
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
    ),
}


def peak_flops(override: float | None) -> tuple[float, str]:
    import torch

    if override:
        return override * 1e12, "given"
    if not torch.cuda.is_available():
        return float("nan"), "cpu"
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16.items():
        if key in name:
            return value, name
    return float("nan"), name


def random_checkpoint(shape: str, scratch: Path) -> Path:
    """Save a randomly initialised model of a named shape once; return its directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = scratch / f"random-{shape}"
    if (out / "config.json").exists():
        return out
    cfg = LlamaConfig(**SHAPES[shape], tie_word_embeddings=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t = time.perf_counter()
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out)
    print(f"# saved random {shape} to {out} in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def count_params(model) -> tuple[int, int, int]:
    """(matmul params of the base, LoRA params, all params)."""
    import torch

    n_matmul = n_lora = n_all = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Embedding):
            continue
        for pname, p in mod.named_parameters(recurse=False):
            numel = p.numel()
            if hasattr(p, "quant_state") or p.dtype == torch.uint8:  # bnb 4-bit packs 2 per byte
                numel = math.prod(p.quant_state.shape) if hasattr(p, "quant_state") else numel * 2
            if "lora_" in name:
                n_lora += numel
            elif pname == "weight" and p.dim() == 2 or hasattr(p, "quant_state"):
                n_matmul += numel
    n_all = sum(p.numel() for p in model.parameters())
    return n_matmul, n_lora, n_all


def run(args: argparse.Namespace) -> dict:
    import torch

    from finetune.model import load_base_model, lora_config

    cuda = torch.cuda.is_available()
    if args.model in SHAPES:
        path = random_checkpoint(args.model, Path(args.scratch))
    else:
        path = Path(args.model)
    quant = {"lora": "none", "qlora": "4bit", "lora8": "8bit"}[args.mode]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t_load = time.perf_counter()
    model = load_base_model(
        path, dtype="bf16", quantization=quant, attn_implementation=args.attn, device="auto"
    )
    load_s = time.perf_counter() - t_load
    from peft import get_peft_model

    section = SimpleNamespace(
        r=args.lora_r,
        alpha=2 * args.lora_r,
        dropout=args.lora_dropout,
        target_modules=args.target_modules
        if args.target_modules == "all-linear"
        else args.target_modules.split(","),
        bias="none",
        use_rslora=False,
    )
    model = get_peft_model(model, lora_config(section))
    if quant != "none":  # TRL keeps QLoRA adapters in bf16 (QLoRA paper, section 3)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    model.train()
    if not args.keep_input_cast:
        # As finetune.train does under bf16 autocast: LoRA inputs stay bf16 (see its docstring).
        from peft.tuners.tuners_utils import BaseTunerLayer

        for mod in model.modules():
            if isinstance(mod, BaseTunerLayer):
                mod.cast_input_dtype_enabled = False
    if args.compile:
        # One compiled graph per decoder block, reused by all blocks (torchtitan's approach).
        for layer in model.get_base_model().model.layers:
            layer.compile()
    n_matmul, n_lora, n_all = count_params(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
    device = next(p for p in model.parameters() if p.device.type != "meta").device
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(0)

    def step() -> float:
        ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=gen).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        last_loss = step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    tokens = args.steps * args.batch_size * args.seq_len
    tps = tokens / seconds
    cfg = model.config
    attn = 12 * cfg.num_hidden_layers * cfg.hidden_size * args.seq_len
    flops_4n = 4 * n_matmul + 6 * n_lora
    peak, gpu = peak_flops(args.peak_tflops)
    result = {
        "model": args.model,
        "mode": args.mode,
        "gpu": gpu,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "gradient_checkpointing": args.gradient_checkpointing,
        "lora_r": args.lora_r,
        "target_modules": args.target_modules,
        "attn": model.config._attn_implementation,
        "lora_input_cast": args.keep_input_cast,
        "compile": args.compile,
        "params_matmul": n_matmul,
        "params_lora": n_lora,
        "steps": args.steps,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tps, 1),
        "mfu_4n": round(tps * flops_4n / peak, 4) if peak == peak else None,
        "mfu_4n_plus_attn": round(tps * (flops_4n + attn) / peak, 4) if peak == peak else None,
        "peak_mem_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if cuda
        else None,
        "peak_mem_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)
        if cuda
        else None,
        "load_s": round(load_s, 1),
        "last_loss": round(float(last_loss), 4),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="llama2-7b | tiny | a model directory")
    p.add_argument("--mode", default="lora", choices=["lora", "qlora", "lora8"])
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--target-modules", default="all-linear", help="all-linear or q_proj,v_proj,...")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--keep-input-cast",
        action="store_true",
        help="let peft cast LoRA inputs to the adapters' fp32 (its default; slower)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder block")
    p.add_argument("--attn", default="sdpa", help="sdpa | flash_attention_2 | eager")
    p.add_argument(
        "--peak-tflops", type=float, help="peak dense bf16 TFLOP/s (default: by GPU name)"
    )
    p.add_argument(
        "--scratch", default="/tmp/bench_train", help="where random checkpoints are saved"
    )
    p.add_argument("--jsonl", help="append the result line to this file")
    args = p.parse_args(argv)
    result = run(args)
    line = json.dumps(result)
    print(line, flush=True)
    if args.jsonl:
        with open(args.jsonl, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
