"""What agreement-based verification costs: per-assert runs against whole-suite runs, on the seeds.

Every code seed's reference solution runs against the seed's own tests, ``--repeat`` times, in
the same warm sandbox, once as one program (what ``verify.selection=first_pass`` runs) and once
per assert (``per_assert=True``, what ``verify.selection=agreement`` runs: each check in its own
``try``, each proven by its own report frame), alternating the two modes round by round so that
the machine's load falls on both alike. Then the whole verify stage over the seeds under both
selections (first_pass: stub + candidate; agreement: candidate and stub per assert, then the
kept candidate on the reduced tests). Prints figures; asserts nothing about time.

    .venv/bin/python benchmarks/bench_agreement.py [--repeat 5] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages import execution, sandbox_program, verify  # noqa: E402
from stages.base import StageStats  # noqa: E402


def code_seeds() -> list[dict]:
    with open(ROOT / "seed_tasks.jsonl", encoding="utf-8") as f:
        return [s for s in map(json.loads, f) if s.get("tests")]


def timed(box: execution.Sandbox, jobs, per_assert: bool) -> tuple[float, int]:
    """Seconds for ``jobs``, and how many verdicts were wrong (every reference passes)."""
    t0 = time.perf_counter()
    results = list(box.map(jobs, timeout=10, per_assert=per_assert))
    dt = time.perf_counter() - t0
    if per_assert:
        wrong = sum(not (r.passed and r.asserts and all(r.asserts)) for r in results)
    else:
        wrong = sum(not r.passed for r in results)
    return dt, wrong


def stage_rate(records: list[dict], selection: str, workers: int) -> tuple[float, int]:
    cfg = verify.VerifyConfig(timeout=10, workers=workers, selection=selection)
    stats = StageStats(stage="verify")
    t0 = time.perf_counter()
    kept = list(verify.run(records, cfg, stats))
    return len(records) / (time.perf_counter() - t0), len(kept)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="rounds over the seeds per mode")
    ap.add_argument("--workers", type=int, default=0, help="0 = all cores")
    args = ap.parse_args(argv)
    workers = args.workers or os.cpu_count() or 1
    why = execution.check_sandbox()
    if why:
        print(f"no sandbox here: {why}")
        return 1
    seeds = code_seeds()
    jobs = [(s["instances"][0]["output"], s["tests"]) for s in seeds]
    checks = sum(sandbox_program.count_checks(t) for _, t in jobs)
    print(
        f"cores={os.cpu_count()} workers={workers} seeds={len(jobs)} "
        f"checks={checks} ({checks / len(jobs):.1f} per seed) rounds={args.repeat}"
    )
    totals = {False: [0.0, 0], True: [0.0, 0]}
    with execution.Sandbox(workers) as box:
        timed(box, jobs[: 2 * workers], False)  # warm-up: slots started, page cache
        for _ in range(args.repeat):
            for per_assert in (False, True):
                dt, wrong = timed(box, jobs, per_assert)
                totals[per_assert][0] += dt
                totals[per_assert][1] += wrong
    n = len(jobs) * args.repeat
    rate_whole, rate_each = n / totals[False][0], n / totals[True][0]
    print(
        f"whole suite, one proof per run:   {rate_whole:7.1f} runs/s  (wrong verdicts: {totals[False][1]})"
    )
    print(
        f"per assert, one proof per check:  {rate_each:7.1f} runs/s  (wrong verdicts: {totals[True][1]})"
    )
    print(f"ratio per-assert / whole:         {rate_each / rate_whole:7.2f}")
    records = [verify.seed_to_record(s) for s in seeds]
    for selection in verify.SELECTIONS:
        rate, kept = stage_rate(records, selection, workers)
        print(
            f"verify stage, {selection + ':':12s}      {rate:7.1f} records/s  ({kept}/{len(records)} kept)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
