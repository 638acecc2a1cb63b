"""Embedding throughput of the embedded server for semantic dedup, and what its cosines look like.

Starts the embedded llama.cpp server with embeddings on (as ``generate`` does when
``semdedup.enabled``), embeds the instructions of ``seed_tasks.jsonl`` through the pipeline's
``LLMClient.embed`` (``semdedup.batch`` texts asked per request; llama-cpp-python's per-token
answers make the client fall back to one text a request), then embeds them again from the
response cache. Prints texts/s both ways, and the distribution of each seed's nearest-neighbour
cosine among the other seeds (what ``semdedup.threshold`` is compared with: the seeds are
distinct tasks, so a nearest cosine above the threshold is a false duplicate).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_semdedup.py [--model smollm2-135m] [--n 293]

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import LLMConfig  # noqa: E402
from pipeline.llm import LLMClient, ResponseCache  # noqa: E402
from pipeline.records import enumerate_jsonl  # noqa: E402
from pipeline.server import EmbeddedServer  # noqa: E402
from stages import seeds  # noqa: E402
from stages.semdedup import nearest, normalise  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=0, help="seed instructions embedded; 0 = all")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    path = ROOT / "seed_tasks.jsonl"
    texts = [r["instruction"] for r in seeds.load_seed_records(enumerate_jsonl(path), str(path))]
    texts = texts[: args.n or None]
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; {len(texts)} texts")
    with tempfile.TemporaryDirectory() as tmp, EmbeddedServer(args.model, embedding=True) as srv:
        cfg = LLMConfig(base_url=srv.base_url, api="completion")
        client = LLMClient(
            cfg,
            base_urls=[srv.base_url],
            model=srv.model_name,
            api_key=None,
            cache=ResponseCache(Path(tmp) / "cache.jsonl"),
        )
        t0 = time.perf_counter()
        vecs = client.embed(texts, batch=args.batch)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        client.embed(texts, batch=args.batch)
        warm = time.perf_counter() - t0
    ok = [(str(i), normalise(v)) for i, v in enumerate(vecs) if v is not None]
    print(f"{args.model}: {len(ok)}/{len(texts)} embedded, dimension {len(ok[0][1])}")
    print(f"  cold: {cold:.1f} s, {len(texts) / cold:.1f} texts/s")
    print(f"  from the cache: {warm:.3f} s, {len(texts) / warm:.0f} texts/s")
    best = sorted(nearest(v, [p for p in ok if p[0] != i])[1] for i, v in ok)
    q = {p: best[min(len(best) - 1, int(p / 100 * len(best)))] for p in (5, 50, 95)}
    print(
        f"  nearest-seed cosine: min {best[0]:.3f}, p5 {q[5]:.3f}, median {q[50]:.3f}, "
        f"p95 {q[95]:.3f}, max {best[-1]:.3f}"
    )
    for t in (0.9, 0.95, 0.97, 0.98, 0.99):
        n = sum(1 for b in best if b > t)
        print(f"  seeds whose nearest other seed is above {t}: {n} ({n / len(best):.0%})")


if __name__ == "__main__":
    main()
