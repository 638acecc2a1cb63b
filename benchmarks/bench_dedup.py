"""Dedup benchmark: the exact ROUGE-L method against Alpaca's rouge_score loop, and MinHash.

Prints, all measured in this run, every timed command a whole process (``subprocess``, wall
time including interpreter start and imports):

1. the 25k corpus through ``python -m pipeline dedup`` (exact): wall time, peak RSS, kept and
   rejected;
2. the public 3000-record reference: how many decisions match rouge_score's;
3. the first N records (default 2000): Alpaca's greedy loop (each candidate scored against every
   kept one with ``RougeScorer.score``) vs ``python -m pipeline dedup``, the speed ratio, and
   whether the decisions agree;
4. MinHash LSH on the 25k (verified and unverified): wall time, recall and precision of the
   exact method's rejections.

Never asserts on time. Skips cleanly when ../shared/bench is absent.

    .venv/bin/python benchmarks/bench_dedup.py [--n-compare 2000] [--skip-reference-loop]
"""

from __future__ import annotations

import argparse
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

# Alpaca's dedup, as a stand-alone program: every candidate against every kept instruction
# with rouge_score's public ``score``; reject when the best F is above the threshold.
ALPACA_LOOP = r"""
import json, sys
from rouge_score import rouge_scorer
src, dst, threshold = sys.argv[1], sys.argv[2], float(sys.argv[3])
scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
kept = []
with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
    for line in f:
        rec = json.loads(line)
        text = rec["instruction"]
        scores = [scorer.score(k, text)["rougeL"].fmeasure for k in kept]
        if scores and max(scores) > threshold:
            continue
        kept.append(text)
        out.write(json.dumps({"id": rec["id"]}) + "\n")
"""


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """Run a command; (wall seconds, peak RSS MiB of that child, stderr tail)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024, err[-400:]


def ids(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["id"] for line in f if line.strip()]


def head(n: int, dst: Path) -> Path:
    with open(CORPUS, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            if i == n:
                break
            out.write(line)
    return dst


def dedup_cmd(src: Path, dst: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "dedup", str(src), "--output", str(dst), *extra]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-compare", type=int, default=2000, help="records for the rouge_score loop")
    ap.add_argument("--skip-reference-loop", action="store_true", help="skip the slow loop")
    ap.add_argument("--threshold", type=float, default=0.7)
    args = ap.parse_args(argv)
    if not CORPUS.exists():
        print(f"skipped: {CORPUS} not found (shared benchmark data)")
        return 0
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    thr = ["--threshold", str(args.threshold)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        # 1. the whole corpus, exact.
        out = tmp / "exact.jsonl"
        wall, rss, _ = timed(dedup_cmd(CORPUS, out, *thr))
        kept = ids(out)
        exact_rejected = set(ids(tmp / "exact.rejected.jsonl"))
        n = len(kept) + len(exact_rejected)
        print(
            f"exact 25k: {n} records in {wall:.2f} s wall (whole process), peak RSS {rss:.0f} MiB, "
            f"kept {len(kept)}, rejected {len(exact_rejected)}"
        )

        # 2. the public reference.
        if REFERENCE.exists():
            ref = json.loads(REFERENCE.read_text())
            src = head(ref["n"], tmp / "ref_in.jsonl")
            wall, _, _ = timed(
                dedup_cmd(src, tmp / "ref_out.jsonl", "--threshold", str(ref["threshold"]))
            )
            ours = set(ids(tmp / "ref_out.jsonl"))
            same = sum((d["id"] in ours) == d["keep"] for d in ref["decisions"])
            print(
                f"reference {ref['n']}: {same}/{len(ref['decisions'])} decisions identical to "
                f"rouge_score's ({wall:.2f} s here; the reference run took {ref['seconds']:.0f} s)"
            )

        # 3. rouge_score's loop vs ours on the first N records, both whole processes.
        src = head(args.n_compare, tmp / "cmp_in.jsonl")
        ours_wall, ours_rss, _ = timed(dedup_cmd(src, tmp / "cmp_ours.jsonl", *thr))
        print(f"ours   first {args.n_compare}: {ours_wall:.2f} s wall, peak RSS {ours_rss:.0f} MiB")
        if not args.skip_reference_loop:
            loop = [
                sys.executable,
                "-c",
                ALPACA_LOOP,
                str(src),
                str(tmp / "cmp_ref.jsonl"),
                str(args.threshold),
            ]
            ref_wall, ref_rss, _ = timed(loop)
            agree = ids(tmp / "cmp_ref.jsonl") == ids(tmp / "cmp_ours.jsonl")
            print(
                f"rouge_score loop first {args.n_compare}: {ref_wall:.1f} s wall, peak RSS "
                f"{ref_rss:.0f} MiB; kept ids identical: {agree}"
            )
            print(f"speed-up (whole processes): {ref_wall / ours_wall:.0f}x")

        # 4. MinHash LSH on the corpus.
        for label, extra in [
            ("minhash + exact check", []),
            ("minhash only", ["--set", "dedup.verify_minhash=false"]),
        ]:
            out = tmp / "mh.jsonl"
            wall, rss, _ = timed(dedup_cmd(CORPUS, out, *thr, "--method", "minhash", *extra))
            got = set(ids(tmp / "mh.rejected.jsonl"))
            hit = len(got & exact_rejected)
            print(
                f"{label} 25k: {wall:.2f} s wall, peak RSS {rss:.0f} MiB, rejected {len(got)}; "
                f"recall of exact rejections {hit / max(1, len(exact_rejected)):.4f}, "
                f"precision {hit / max(1, len(got)):.4f}"
            )
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
