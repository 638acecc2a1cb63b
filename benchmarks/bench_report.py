"""How long ``write_report`` takes on a large run, and where the time goes.

Builds a run directory in a temporary folder, in the generate layout of ``pipeline.rundir``:
N kept records (instructions from the shared benchmark file when it is there, else made-up
ones) in every stage file (generate, dedup, answer, filter), a quarter as many rejected at
dedup and filter, an eighth as many past the target rejected at export, data.json, messages.jsonl and a
stats.json; then times loading, each analysis step and the whole page.

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

from pipeline.report import load_run, render_html
from pipeline.report.analysis import nearest_rouge_l, verb_object
from pipeline.rundir import STAGE_FILES

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


def _jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


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
    stems = STAGE_FILES["generate"]
    # Every stage before export holds the same records: the loader reads each kept file whole.
    for stage in ("generate", "dedup", "answer", "filter"):
        _jsonl(run / f"{stems[stage]}.jsonl", recs)
    dedup_rej = [r | {"reject": {"stage": "dedup", "reason": "rouge_duplicate"}} for r in recs]
    _jsonl(run / f"{stems['dedup']}.rejected.jsonl", dedup_rej[:n_rej])
    reasons = ["too_short", "too_long", "blocklisted_word"]
    _jsonl(
        run / f"{stems['filter']}.rejected.jsonl",
        [
            r | {"reject": {"stage": "filter", "reason": reasons[i % 3]}}
            for i, r in enumerate(recs[:n_rej])
        ],
    )
    _jsonl(
        run / f"{stems['export']}.rejected.jsonl",
        [r | {"reject": {"stage": "export", "reason": "over_target"}} for r in recs[: n_rej // 2]],
    )
    data = [{k: r[k] for k in ("instruction", "input", "output")} for r in recs]
    (run / "data.json").write_text(json.dumps(data), encoding="utf-8")
    _jsonl(
        run / "messages.jsonl",
        [
            {
                "id": r["id"],
                "messages": [
                    {"role": "user", "content": r["instruction"]},
                    {"role": "assistant", "content": r["output"]},
                ],
            }
            for r in recs
        ],
    )
    stats = {"run": "bench-run", "mode": "general", "books": "balanced"}
    (run / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
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
