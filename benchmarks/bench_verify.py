"""Sandboxed verification throughput against plain subprocesses, measured in the same run.

500 small candidates (half of them pass their tests) go through :func:`stages.execution.run_many`
with one worker slot per core, and then, side by side, the same candidates as plain
``python3 -I -c <program + tests>`` subprocesses with the same parallelism (the interpreter the
sandbox uses). A smaller sample also goes through ``fresh=True`` (one whole bwrap sandbox per
candidate) to show why the warm slots exist. Prints figures; asserts nothing about time.

    .venv/bin/python benchmarks/bench_verify.py [--n 500] [--workers 0] [--fresh-n 100]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages import execution  # noqa: E402


def make_jobs(n: int) -> list[tuple[str, str, bool]]:
    jobs = []
    for i in range(n):
        good = i % 2 == 0
        op = "+" if good else "-"
        prog = f"def solve_{i}(xs):\n    total = 0\n    for x in xs:\n        total = total {op} x\n    return total\n"
        tests = f"assert solve_{i}([1, 2, 3]) == 6\nassert solve_{i}([]) == 0\nassert solve_{i}([{i}]) == {i}\n"
        jobs.append((prog, tests, good))
    return jobs


def bench_sandbox(jobs, workers: int, fresh: bool = False) -> tuple[float, int]:
    t0 = time.perf_counter()
    results = list(
        execution.run_many([(p, t) for p, t, _ in jobs], workers=workers, timeout=10, fresh=fresh)
    )
    dt = time.perf_counter() - t0
    wrong = sum(
        (r.status == "passed") != good for r, (_, _, good) in zip(results, jobs, strict=True)
    )
    return dt, wrong


def bench_plain(jobs, workers: int, python: str) -> tuple[float, int]:
    def one(job):
        prog, tests, _ = job
        r = subprocess.run(
            [python, "-I", "-c", prog + "\n" + tests], capture_output=True, timeout=10
        )
        return r.returncode == 0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        ok = list(ex.map(one, jobs))
    dt = time.perf_counter() - t0
    wrong = sum(o != good for o, (_, _, good) in zip(ok, jobs, strict=True))
    return dt, wrong


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--workers", type=int, default=0, help="0 = all cores")
    ap.add_argument(
        "--fresh-n",
        type=int,
        default=100,
        help="candidates for the one-bwrap-per-candidate mode; 0 = skip",
    )
    args = ap.parse_args(argv)
    workers = args.workers or os.cpu_count() or 1
    why = execution.check_sandbox()
    if why:
        print(f"no sandbox here: {why}")
        return 1
    jobs = make_jobs(args.n)
    python = execution._sandbox_python()
    print(f"cores={os.cpu_count()} workers={workers} candidates={len(jobs)} python={python}")
    bench_sandbox(jobs[: 2 * workers], workers)  # warm-up: page cache, trusted-path probe
    dt_s, wrong_s = bench_sandbox(jobs, workers)
    dt_p, wrong_p = bench_plain(jobs, workers, python)
    rate_s, rate_p = len(jobs) / dt_s, len(jobs) / dt_p
    print(
        f"sandboxed (warm slot per worker): {rate_s:7.1f} runs/s  ({dt_s:.2f} s, wrong verdicts: {wrong_s})"
    )
    print(
        f"plain python3 -I subprocess:      {rate_p:7.1f} runs/s  ({dt_p:.2f} s, wrong verdicts: {wrong_p})"
    )
    print(f"ratio sandboxed / plain:          {rate_s / rate_p:7.2f}")
    if args.fresh_n:
        sub = jobs[: args.fresh_n]
        dt_f, wrong_f = bench_sandbox(sub, workers, fresh=True)
        print(
            f"one bwrap per candidate (fresh):  {len(sub) / dt_f:7.1f} runs/s  ({len(sub)} candidates, wrong verdicts: {wrong_f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
