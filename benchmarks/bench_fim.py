"""Fill-in-the-middle on the CPU: the embedded SmolLM2-135M-Instruct trained briefly with FIM on
this repository's own code, and HumanEval single-line infilling pass@1 on a seeded subset
before (the base) and after (the adapter), in one `finetune eval` run. Also the harness check
on every problem of the three infilling splits: canonical middles and empty middles.

SmolLM2's tokenizer has no FIM tokens, so three of its existing special tokens stand in as the
sentinels (``--sentinels``; the adapter records them and evaluation prompts with them):
``<jupyter_text>`` before the prefix, ``<jupyter_output>`` before the suffix and
``<jupyter_code>`` before the middle, whose pretraining use (code follows it) suits the middle.
The base model has never seen them in this role; the "before" figure measures that.

Training data: the ``.py`` files of ``finetune/``, ``pipeline/`` and ``stages/`` as raw text
(``data.raw_text`` alone, ``data.fim.rate=1``: every window becomes a FIM row, half SPM). The
tests are left out: tests/test_eval.py quotes HumanEval solutions.

    PYTHONPATH=. python benchmarks/bench_fim.py --data-dir ../shared/bench/humaneval_infilling

    PYTHONPATH=. python benchmarks/bench_fim.py --harness-only   # every problem, no model

Prints the figures and writes them, with the eval outputs, under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def write_repo_code(path: Path, folders: list[str]) -> tuple[int, int]:
    """``{text, source}`` per Python file of ``folders``: what ``pipeline ingest`` would write."""
    n_files = n_chars = 0
    with open(path, "w", encoding="utf-8") as f:
        for folder in folders:
            for p in sorted((REPO / folder).rglob("*.py")):
                text = p.read_text(encoding="utf-8")
                if not text.strip():
                    continue
                rel = p.relative_to(REPO).as_posix()
                f.write(json.dumps({"text": text, "source": rel}) + "\n")
                n_files += 1
                n_chars += len(text)
    return n_files, n_chars


def harness_check(data_dir: str, timeout: float) -> dict:
    """Canonical and empty middles on every problem of every split."""
    import tempfile

    from finetune import eval as ev
    from finetune import infilling

    out = {}
    for split in infilling.SPLITS:
        problems = infilling.load_problems(data_dir, split)
        t0 = time.perf_counter()
        arms = {
            "canonical": {"samples": infilling.canonical_samples(problems)},
            "empty": {"samples": infilling.empty_samples(problems)},
        }
        doc = ev.evaluate(
            arms, problems, [1], Path(tempfile.mkdtemp()), settings={}, timeout=timeout
        )
        res = doc["results"]
        out[split] = {
            "problems": len(problems),
            "canonical_pass@1": res["canonical"]["pass@1"],
            "empty_pass@1": res["empty"]["pass@1"],
            "empty_passed": res["empty"]["statuses"].get("passed", 0),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"harness {split}: {json.dumps(out[split])}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared/bench/humaneval_infilling"))
    ap.add_argument("--out", default="outputs/bench-fim")
    # Sized for 2 CPU cores: a SmolLM2 LoRA step of 4 x 128 tokens takes 15-20 s on this
    # project's (idle) ones, so the defaults train about 15 minutes and evaluate about 5.
    ap.add_argument("--steps", type=int, default=50, help="training steps")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--subset", type=int, default=30, help="single-line problems evaluated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sentinels", default="<jupyter_text>,<jupyter_output>,<jupyter_code>")
    ap.add_argument("--folders", default="finetune,pipeline,stages")
    ap.add_argument(
        "--harness-only",
        action="store_true",
        help="only the check of every problem (canonical and empty middles), no training",
    )
    ap.add_argument("--harness-timeout", type=float, default=5.0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.harness_only:
        t0 = time.perf_counter()
        harness = harness_check(args.data_dir, args.harness_timeout)
        harness["total_seconds"] = round(time.perf_counter() - t0, 1)
        (out / "harness.json").write_text(json.dumps(harness, indent=2) + "\n")
        print(f"harness: {out / 'harness.json'}")
        return 0

    from finetune import eval as ev
    from finetune.config import load_train_config
    from finetune.train import run_training

    figures: dict = {"command": " ".join(sys.argv)}
    t_all = time.perf_counter()

    raw = out / "raw_text.jsonl"
    n_files, n_chars = write_repo_code(raw, args.folders.split(","))
    print(f"training text: {n_files} files, {n_chars} characters", flush=True)
    pre, suf, mid = args.sentinels.split(",")
    cfg = load_train_config(
        REPO / "configs" / "train-smollm2-cpu.yaml",
        [
            f"data.raw_text={raw}",
            "data.fim.rate=1.0",
            f"data.fim.prefix_token={pre}",
            f"data.fim.suffix_token={suf}",
            f"data.fim.middle_token={mid}",
            f"data.fim.seed={args.seed}",
            f"data.max_length={args.max_length}",
            "data.validation_fraction=0",
            f"lora.r={args.rank}",
            f"lora.alpha={args.rank}",
            "lora.target_modules=all-linear",
            f"training.max_steps={args.steps}",
            f"training.per_device_train_batch_size={args.batch_size}",
            f"training.learning_rate={args.lr}",
            "training.warmup_steps=10",
            "training.eval_strategy='no'",  # quoted: YAML reads a bare no as false
            "training.eval_on_start=false",
            "training.save_strategy='no'",
            "training.logging_steps=5",
            f"training.seed={args.seed}",
        ],
    )
    t0 = time.perf_counter()
    _, summary = run_training(cfg, None, output_dir=out / "adapter")
    train_s = time.perf_counter() - t0
    figures["train"] = {
        "files": n_files,
        "characters": n_chars,
        "rows": summary["data"]["raw_text"]["rows"],
        "fim_rows": summary["data"]["train"].get("fim"),
        "steps": summary["global_step"],
        "tokens": summary["tokens_seen"],
        "first_loss": summary["first_loss"],
        "last_loss": summary["last_loss"],
        "seconds": round(train_s, 1),
    }
    print(f"train: {json.dumps(figures['train'])}", flush=True)

    t0 = time.perf_counter()
    ev_argv = [
        "--adapter",
        str(out / "adapter"),
        "--benchmark",
        "humaneval-infilling",
        "--split",
        "single-line",
        "--data-dir",
        args.data_dir,
        "--subset",
        str(args.subset),
        "--seed",
        str(args.seed),
        "--max-new-tokens",
        "48",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--output",
        str(out / "eval"),
    ]
    ev.main(ev_argv)
    doc = json.loads((out / "eval" / "summary.json").read_text())
    figures["infilling"] = {
        arm: {k: res[k] for k in ("problems", "pass@1", "solved", "statuses", "prompt")}
        | {"generation_seconds": res["generation"]["seconds"]}
        for arm, res in doc["results"].items()
    }
    figures["eval_seconds"] = round(time.perf_counter() - t0, 1)
    figures["total_seconds"] = round(time.perf_counter() - t_all, 1)
    (out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    before, after = figures["infilling"]["base"], figures["infilling"]["adapter"]
    print(
        f"single-line infilling pass@1 on {before['problems']} problems (seed {args.seed}): "
        f"before {before['pass@1']:.3f} ({before['solved']} solved) -> after "
        f"{after['pass@1']:.3f} ({after['solved']} solved); training {train_s:.0f} s, "
        f"total {figures['total_seconds']:.0f} s"
    )
    print(f"figures: {out / 'figures.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
