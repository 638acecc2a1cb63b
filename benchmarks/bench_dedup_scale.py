"""Dedup at scale: the exact batch join (``dedup.algorithm=pairs``) against today's streaming
exact dedup, on seeded near-duplicate corpora of 100k to 1M records.

Corpora come from ``../shared/bench/make_scale_corpus.py N OUT`` (each of the 25,292 real
instructions once, then word-level edits at 5-100% edit rates, shuffled with seed 11). Every
timed item is a whole ``python -m pipeline dedup`` process; for each it prints wall time, CPU
time (user + sys of that process: on a shared machine this is the figure that does not depend
on the neighbours), peak RSS, kept and rejected, and where both algorithms ran, whether the kept
file and the rejected file (reason, nearest id, score) are byte-identical. Also: the 25k corpus
and the public 3000-record reference (rouge_score's decisions). Prints the load average at the
start and after each run. Never asserts on time; skips cleanly without ../shared/bench.

    nice -n 10 .venv/bin/python benchmarks/bench_dedup_scale.py \\
        [--sizes 100000,200000,1000000] [--stream-max 200000] [--workers 0]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "bench"
CORPUS = BENCH / "instructions_25k.jsonl"
REFERENCE = BENCH / "dedup_ref_public_3000.json"
MAKE = BENCH / "make_scale_corpus.py"


def timed(cmd: list[str]) -> dict:
    """Run a command: wall s, cpu s (user + sys of the child), peak RSS MiB."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{err[-2000:]}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss": usage.ru_maxrss / 1024,
    }


def count(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def dedup(src: Path, dst: Path, algorithm: str, workers: int) -> dict:
    cmd = [sys.executable, "-m", "pipeline", "dedup", str(src), "--output", str(dst)]
    cmd += ["--set", f"dedup.algorithm={algorithm}", "--set", f"dedup.workers={workers}"]
    r = timed(cmd)
    r["kept"] = count(dst)
    r["rejected"] = count(dst.with_name(dst.stem + ".rejected.jsonl"))
    print(
        f"  {algorithm:6s}: {r['wall']:7.1f} s wall, {r['cpu']:7.1f} s cpu, peak RSS "
        f"{r['rss']:6.0f} MiB, kept {r['kept']}, rejected {r['rejected']}; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return r


def identical(a: Path, b: Path) -> bool:
    rej = lambda p: p.with_name(p.stem + ".rejected.jsonl")  # noqa: E731
    return filecmp.cmp(a, b, shallow=False) and filecmp.cmp(rej(a), rej(b), shallow=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,200000,1000000")
    ap.add_argument("--stream-max", type=int, default=200000, help="largest size for 'stream'")
    ap.add_argument("--workers", type=int, default=0, help="dedup.workers (0 = all cores)")
    args = ap.parse_args(argv)
    if not CORPUS.exists() or not MAKE.exists():
        print(f"skipped: {BENCH} not found (shared benchmark data)")
        return 0
    print(
        f"machine: {os.cpu_count()} cores, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at start",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("25k corpus:")
        out = {a: tmp / f"25k_{a}.jsonl" for a in ("stream", "pairs")}
        for a, dst in out.items():
            dedup(CORPUS, dst, a, args.workers)
        print(f"  kept and rejected files identical: {identical(out['stream'], out['pairs'])}")
        if REFERENCE.exists():
            ref = json.loads(REFERENCE.read_text())
            src = tmp / "ref.jsonl"
            with open(CORPUS, encoding="utf-8") as f, open(src, "w", encoding="utf-8") as o:
                for _, line in zip(range(ref["n"]), f, strict=False):
                    o.write(line)
            dst = tmp / "ref_pairs.jsonl"
            subprocess.run(
                [sys.executable, "-m", "pipeline", "dedup", str(src), "--output", str(dst)]
                + ["--set", "dedup.algorithm=pairs", "--threshold", str(ref["threshold"])],
                cwd=ROOT,
                check=True,
                stderr=subprocess.DEVNULL,
            )
            with open(dst, encoding="utf-8") as f:
                ours = {json.loads(line)["id"] for line in f}
            same = sum((d["id"] in ours) == d["keep"] for d in ref["decisions"])
            print(f"reference {ref['n']}: {same}/{len(ref['decisions'])} decisions identical")

        for n in (int(x) for x in args.sizes.split(",")):
            src = tmp / f"scale_{n}.jsonl"
            subprocess.run(
                [sys.executable, str(MAKE), str(n), str(src)], check=True, stdout=subprocess.DEVNULL
            )
            print(f"{n} records (make_scale_corpus.py {n}, seed 11):", flush=True)
            got = {}
            for a in ("stream", "pairs") if n <= args.stream_max else ("pairs",):
                got[a] = dedup(src, tmp / f"{n}_{a}.jsonl", a, args.workers)
            if len(got) == 2:
                same = identical(tmp / f"{n}_stream.jsonl", tmp / f"{n}_pairs.jsonl")
                print(
                    f"  identical: {same}; pairs/stream: wall {got['pairs']['wall'] / got['stream']['wall']:.2f}x, "
                    f"cpu {got['pairs']['cpu'] / got['stream']['cpu']:.2f}x",
                    flush=True,
                )
            for p in tmp.glob(f"{n}_*"):
                p.unlink()
            src.unlink()
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
