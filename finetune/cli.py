"""``python -m finetune {train,merge,generate,eval}``.

- ``train --config configs/train-*.yaml [--data PATH] [--set key=value ...] [--resume [DIR]]``:
  with no ``--data`` (and no ``data.path`` in the config) the latest run under ``outputs/`` that
  has a ``data.json`` is used.
- ``merge --adapter DIR --output DIR [--model M]``: a merged full model.
- ``generate --adapter DIR "instruction" [--input TEXT]``: greedy by default, the training prompt.
- ``eval ...``: handed to ``finetune.eval.main(argv)`` when that module exists.

Heavy imports happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys


def cmd_train(args: argparse.Namespace) -> int:
    from finetune.config import ConfigError, load_train_config
    from finetune.train import train

    try:
        cfg = load_train_config(args.config, args.set)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    resume: str | bool | None = None
    if args.resume is not None:
        resume = True if args.resume == "latest" else args.resume
    try:
        train(cfg, args.data, resume=resume, output_dir=args.output_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from finetune.merge import merge

    out = merge(args.adapter, args.output, model=args.model, dtype=args.dtype)
    print(f"merged model: {out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from finetune.generate import generate
    from finetune.model import load_model, read_prompt_format

    fmt = read_prompt_format(args.adapter)
    model, tokenizer = load_model(args.model, args.adapter, dtype=args.dtype, device=args.device)
    text = generate(
        model,
        tokenizer,
        args.instruction,
        args.input,
        prompt_format=fmt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
    )
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m finetune", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a LoRA/QLoRA adapter with TRL's SFTTrainer")
    t.add_argument("--config", default="configs/train-smollm2-cpu.yaml", help="YAML train config")
    t.add_argument(
        "--data", help="data.json or messages.jsonl; default: latest outputs/*/data.json"
    )
    t.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. lora.r=16"
    )
    t.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        help="resume from a checkpoint dir, or the latest checkpoint-N in the output dir",
    )
    t.add_argument("--output-dir", help="adapter directory (default: outputs/<run>/adapter)")
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("merge", help="merge an adapter into its base model")
    m.add_argument("--adapter", required=True)
    m.add_argument("--output", required=True)
    m.add_argument("--model", help="base model (default: the one in prompt_format.json)")
    m.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    m.set_defaults(func=cmd_merge)

    g = sub.add_parser("generate", help="answer an instruction with an adapter")
    g.add_argument("instruction")
    g.add_argument("--input", default="", help="optional input/context for the instruction")
    g.add_argument("--adapter", required=True)
    g.add_argument("--model", help="base model (default: the one in prompt_format.json)")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.set_defaults(func=cmd_generate)

    sub.add_parser(
        "eval", help="evaluate (HumanEval); see `python -m finetune eval --help`", add_help=False
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":
        if importlib.util.find_spec("finetune.eval") is None:
            print("error: finetune.eval is not installed in this checkout", file=sys.stderr)
            return 2
        from finetune import eval as evaluation

        return int(evaluation.main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
