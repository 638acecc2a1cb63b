"""Client throughput: against a local endpoint that answers each request after a fixed delay,
the achieved request rate divided by the ideal (concurrency / delay). Goal at concurrency 64:
at least 0.95. Then, optionally (--embedded N), a real run on the embedded model and the prompt
and completion tokens it spent per kept instruction.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_client.py [--requests 2000] [--delay 0.5] [--embedded 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import LLMConfig  # noqa: E402
from pipeline.llm import LLMClient, Request, Response  # noqa: E402


def throughput(concurrency: int, delay: float, n: int) -> dict:
    # The endpoint runs in a process of its own, as a real one would: sharing this interpreter's
    # GIL with the client would charge the server's work to the client.
    srv = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_openai", "--delay", str(delay)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(srv.stdout.readline())
        url = f"http://127.0.0.1:{port}/v1"
        cfg = LLMConfig(base_url=url, api="chat", concurrency=concurrency, timeout=30, cache=False)
        client = LLMClient(cfg, base_urls=[url], model="fake-model", api_key="x")
        reqs = (
            Request(
                kind="generate",
                messages=[{"role": "user", "content": f"q{i}"}],
                params={"max_tokens": 8},
                sample=i,
            )
            for i in range(n)
        )
        t0 = time.perf_counter()
        ok = sum(isinstance(r, Response) for _, r in client.stream(reqs))
        wall = time.perf_counter() - t0
        peak = concurrency
    finally:
        srv.terminate()
        srv.wait()
    rate = ok / wall
    ideal = concurrency / delay
    return {
        "concurrency": concurrency,
        "delay_s": delay,
        "requests": n,
        "ok": ok,
        "wall_s": round(wall, 2),
        "rate_rps": round(rate, 1),
        "ideal_rps": round(ideal, 1),
        "ratio": round(rate / ideal, 3),
        "peak_in_flight": peak,
    }


def embedded_run(num: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pipeline",
            "generate",
            "--num",
            str(num),
            "--run",
            "bench",
            "--no-progress",
            "--no-report",
            "--set",
            f"output_dir={tmp}",
        ]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            return {"error": r.stderr[-1000:]}
        stats = json.loads((Path(tmp) / "bench" / "stats.json").read_text())
    llm = stats["llm"]
    return {
        "kept": stats["kept"],
        "requests": llm["requests"],
        "kept_per_request": round(stats["kept"] / max(1, llm["requests"]), 3),
        "prompt_tokens_per_kept": stats["per_kept_record"]["prompt_tokens"],
        "completion_tokens_per_kept": stats["per_kept_record"]["completion_tokens"],
        "rejects": {k: v["dropped"] for k, v in stats["stages"].items() if v.get("dropped")},
        "wall_s": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--delay", type=float, default=0.5)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 64])
    ap.add_argument(
        "--embedded",
        type=int,
        default=0,
        help="also run the pipeline on the embedded model for N records",
    )
    args = ap.parse_args()
    print(
        "client throughput against a fixed-delay endpoint (goal at concurrency 64: ratio >= 0.95)"
    )
    for c in args.concurrency:
        print(
            json.dumps(
                throughput(
                    c, args.delay, args.requests if c >= 32 else max(200, args.requests // 8)
                )
            )
        )
    if args.embedded:
        print(f"embedded SmolLM2-135M run, {args.embedded} records:")
        print(json.dumps(embedded_run(args.embedded)))


if __name__ == "__main__":
    main()
