"""How long ``write_report`` takes on a large run, and where the time goes.

Builds a run directory in a temporary folder: N kept records (instructions from the shared
benchmark file when it is there, else made-up ones), a quarter as many rejected at dedup and
filter, and a stats.json; then times loading, each analysis step and the whole page.

    .venv/bin/python benchmarks/bench_report.py [--n 25000] [--instructions PATH]

Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from pipeline.report import load_run, nearest_rouge_l, render_html, verb_object

DEFAULT_INSTRUCTIONS = Path("/work/shared/bench/instructions_25k.jsonl")


def _instructions(path: Path, n: int) -> list[str]:
    if path.exists():
        with open(path, encoding="utf-8") as f:
            texts = [json.loads(line)["instruction"] for line in f if line.strip()]
        return [texts[i % len(texts)] for i in range(n)]
    rng = random.Random(0)
    verbs = ["Write", "Explain", "List", "Summarize", "Create", "Describe", "Translate", "Find"]
    nouns = ["poem", "story", "function", "recipe", "email", "plan", "table", "query", "list"]
    return [
        f"{rng.choice(verbs)} a {rng.choice(nouns)} about topic {rng.randrange(5000)}."
        for _ in range(n)
    ]


def _write_run(root: Path, texts: list[str]) -> Path:
    run = root / "bench-run"
    run.mkdir()
    rng = random.Random(1)
    recs = [
        {
            "id": f"r{i}",
            "instruction": t,
            "input": "some input text " * rng.randrange(0, 6),
            "output": "an answer sentence " * rng.randrange(1, 60),
            "meta": {"usage": {"prompt_tokens": 300, "completion_tokens": 200}},
        }
        for i, t in enumerate(texts)
    ]
    n_rej = len(recs) // 4
    with open(run / "03_filter.jsonl", "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    with open(run / "02_dedup.rejected.jsonl", "w", encoding="utf-8") as f:
        for r in recs[:n_rej]:
            f.write(json.dumps(r | {"reject": {"stage": "dedup", "reason": "rouge_duplicate"}}))
            f.write("\n")
    with open(run / "03_filter.rejected.jsonl", "w", encoding="utf-8") as f:
        for i, r in enumerate(recs[:n_rej]):
            reason = ["too_short", "too_long", "blocklisted_word"][i % 3]
            f.write(json.dumps(r | {"reject": {"stage": "filter", "reason": reason}}) + "\n")
    data = [{k: r[k] for k in ("instruction", "input", "output")} for r in recs]
    (run / "data.json").write_text(json.dumps(data), encoding="utf-8")
    (run / "stats.json").write_text(json.dumps({"run": "bench-run", "mode": "general"}))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=25_000, help="kept records")
    ap.add_argument("--instructions", type=Path, default=DEFAULT_INSTRUCTIONS)
    args = ap.parse_args()
    texts = _instructions(args.instructions, args.n)
    source = args.instructions if args.instructions.exists() else "made-up instructions"
    print(f"report benchmark: {args.n:,} kept records ({source})")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = _write_run(Path(tmp), texts)
        t0 = time.perf_counter()
        run = load_run(run_dir)
        t1 = time.perf_counter()
        pairs = [verb_object(t) for t in texts]
        t2 = time.perf_counter()
        nn = nearest_rouge_l(texts)
        t3 = time.perf_counter()
        page = render_html([run])
        t4 = time.perf_counter()
    print(f"  load run directory          {t1 - t0:7.2f} s")
    print(f"  verb/object extraction      {t2 - t1:7.2f} s  ({len(pairs) / (t2 - t1):,.0f} /s)")
    print(f"  nearest ROUGE-L ({len(nn):,} texts) {t3 - t2:5.2f} s")
    print(f"  whole page (analysis, charts) {t4 - t3:5.2f} s  ({len(page) / 1e6:.2f} MB of HTML)")
    print(f"  total                       {t4 - t0:7.2f} s")


if __name__ == "__main__":
    main()
