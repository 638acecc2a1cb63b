"""Teacher to student, measured: a teacher model writes N execution-verified code records with
the pipeline, a LoRA adapter is trained on them for a small student, and HumanEval pass@1 of the
student without and with the adapter is measured side by side in the same sandbox (the base arm
through peft's ``disable_adapter``, so both arms see the same prompts).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_distill.py            # CPU scale (defaults)
    PYTHONPATH=. .venv/bin/python benchmarks/bench_distill.py --num 500 --steps 600 \\
        --limit 164 --student Qwen/Qwen2.5-Coder-0.5B-Instruct --device cuda   # a GPU

Every step is the command a user runs (``python -m pipeline generate``, ``python -m finetune
train``, ``python -m finetune eval``), so the figures are the product's, not a harness's. It
prints the figures and the commands; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sh(cmd: list[str]) -> float:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="qwen2.5-coder-1.5b", help="embedded model name")
    ap.add_argument("--num", type=int, default=8, help="verified code records to make")
    ap.add_argument("--candidates", type=int, default=2, help="candidates per problem")
    ap.add_argument("--selection", default="", help="verify.selection (default: the config's)")
    ap.add_argument("--student", default="", help="student model (default: embedded SmolLM2)")
    ap.add_argument("--steps", type=int, default=40, help="training steps")
    ap.add_argument("--limit", type=int, default=40, help="HumanEval problems (164 = all)")
    ap.add_argument("--device", default="", help="eval device (auto | cpu | cuda)")
    ap.add_argument(
        "--max-new-tokens", type=int, default=0, help="eval tokens per sample (0 = eval's default)"
    )
    ap.add_argument(
        "--batch-size", type=int, default=0, help="eval prompts per batch (0 = eval's default)"
    )
    ap.add_argument("--out", default="outputs/bench-distill", help="working directory")
    args = ap.parse_args()

    out = ROOT / args.out
    run = out / "teacher"
    py = sys.executable
    gen = [
        py, "-m", "pipeline", "generate", "--config", "configs/code.yaml",
        "--mode", "code", "--num", str(args.num),
        "--no-progress", "--no-report", "--run", run.name,
        "--set", f"output_dir={out}", "--set", f"llm.embedded_model={args.teacher}",
        "--set", f"generation.num_candidates={args.candidates}",
        "--set", "generation.code_rounds=6",
    ]  # fmt: skip
    if args.selection:
        gen += ["--set", f"verify.selection={args.selection}"]
    t_gen = sh(gen)
    stats = json.loads((run / "stats.json").read_text())
    records = json.loads((run / "data.json").read_text())
    v = stats["stages"].get("verify", {}).get("extra", {})
    print(
        f"teacher {args.teacher}: {len(records)} verified records in {t_gen:.0f} s, "
        f"{stats['llm']['requests']} requests, candidates passed "
        f"{v.get('candidates_passed', 0)}/{v.get('candidates_run', 0)}",
        flush=True,
    )
    if not records:
        print("no verified records: nothing to train on")
        return 0

    adapter = out / "adapter"
    train = [
        py, "-m", "finetune", "train", "--config", "configs/train-smollm2-cpu.yaml",
        "--data", str(run / "data.json"), "--output-dir", str(adapter),
        "--set", f"training.max_steps={args.steps}", "--set", "data.validation_fraction=0",
        "--set", "training.eval_strategy=no", "--set", "training.eval_on_start=false",
    ]  # fmt: skip
    if args.student:
        train += ["--set", f"model.name_or_path={args.student}"]
    t_train = sh(train)

    result = out / "humaneval"  # eval writes <label>.jsonl and summary.json here
    ev = [
        py, "-m", "finetune", "eval", "--adapter", str(adapter), "--limit", str(args.limit),
        "--output", str(result),
    ]  # fmt: skip
    if args.device:
        ev += ["--device", args.device]
    if args.max_new_tokens:
        ev += ["--max-new-tokens", str(args.max_new_tokens)]
    if args.batch_size:
        ev += ["--batch-size", str(args.batch_size)]
    t_eval = sh(ev)
    res = json.loads((result / "summary.json").read_text())["results"]

    print("\n== teacher -> student")
    print(
        f"teacher {args.teacher}: {len(records)} verified records in {t_gen:.0f} s, "
        f"{stats['llm']['requests']} requests, candidates passed "
        f"{v.get('candidates_passed', 0)}/{v.get('candidates_run', 0)}"
    )
    print(
        f"student {args.student or 'SmolLM2-135M-Instruct'}: {args.steps} steps in {t_train:.0f} s"
    )
    for label in ("base", "adapter"):
        arm = res.get(label, {})
        print(
            f"HumanEval pass@1 ({arm.get('problems', args.limit)} problems), student {label}: "
            f"{arm.get('pass@1')} (solved {arm.get('solved')}, statuses {arm.get('statuses')})"
        )
    print(f"eval {t_eval:.0f} s; results in {result}/summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
