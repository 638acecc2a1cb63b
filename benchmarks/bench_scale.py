"""The Ray engine at scale, side by side in one run, on a local multi-node Ray cluster
(``ray.cluster_utils.Cluster``: a head that runs only the driver, and worker nodes of
``--cpus`` CPUs each, all on this machine):

1. verify: sandboxed candidate runs per second, local engine vs Ray with one and two worker
   nodes (sandbox actors of one warm worker each, one actor per worker CPU);
2. exact dedup of the 25k corpus: wall time, local engine vs Ray with one and two worker
   nodes, and whether the decisions (kept ids, nearest ids, scores) are identical;
3. the LLM client: requests/s through 1, 2 and 4 client actors against a local endpoint that
   answers at once (a fake OpenAI server in its own process), and the local client for scale;
4. optionally (``--dedup-scale N``), exact dedup of N records generated from the 25k corpus with
   word-level edits (``shared/bench/make_scale_corpus.py``, seeded) on the Ray engine: wall time,
   the driver's peak RSS and the peak RSS of the biggest worker.

Several nodes on one machine share its cores: on a 2-core machine a second node adds no
compute, so the node columns show the engine's overhead and that the work spreads, not a
cluster's speed-up. Figures only; nothing is asserted.

    nice .venv/bin/python benchmarks/bench_scale.py [--cpus 2] [--dedup-scale 1000000]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH = ROOT.parent / "shared" / "bench"
CORPUS = BENCH / "instructions_25k.jsonl"


def verify_records(n: int) -> list[dict]:
    """``n`` problems of two candidates each (the first wrong, the second right)."""
    out = []
    for i in range(n):
        tests = f"assert f{i}(2) == {2 * i + 1}\nassert f{i}(0) == 1\n"
        wrong = f"def f{i}(x):\n    return x * {i}\n"
        right = f"def f{i}(x):\n    return x * {i} + 1\n"
        out.append(
            {
                "id": f"v{i}",
                "instruction": f"Write f{i}(x) returning {i} times x plus one.",
                "input": "",
                "output": "",
                "language": "python",
                "tests": tests,
                "candidates": [wrong, right],
                "meta": {},
            }
        )
    return out


def time_verify(engine, records, vcfg) -> tuple[float, int, list]:
    from stages.base import StageStats

    st = StageStats("verify")
    t0 = time.perf_counter()
    kept = [r["id"] for r in engine.verify(records, vcfg, st)]
    wall = time.perf_counter() - t0
    return wall, st.extra["candidates_run"], kept


def time_dedup(engine, records, dcfg) -> tuple[float, list]:
    from stages.base import StageStats

    out: list = []
    st = StageStats("dedup", sink=lambda r: out.append((r["id"], r["reject"])))
    t0 = time.perf_counter()
    kept = [r["id"] for r in engine.dedup(records, dcfg, st)]
    return time.perf_counter() - t0, [kept, out]


FAKE_SERVER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.fake_openai import FakeOpenAI, Reply, completion_body
    body = completion_body("Task 4\\nInstruction: Say hi.\\nInput: <none>\\nOutput: Hi.", chat=True)
    with FakeOpenAI(lambda b, n: Reply(body=body)) as srv:
        print(srv.base_url, flush=True)
        time.sleep(3600)
    """
)


def client_rates(pcfg_for, engines, n_requests: int) -> dict[str, float]:
    from stages.base import Request

    reqs = [
        Request(
            kind="generate", messages=[{"role": "user", "content": f"q{i}"}], params={"seed": i}
        )
        for i in range(n_requests)
    ]
    rates = {}
    for name, engine, cfg in engines:
        with engine.open_client(cfg, cache=None) as client:
            list(client.stream(reqs[:200]))  # warm: actors started, connections open
            t0, c0 = time.perf_counter(), time.process_time()
            n = sum(1 for _ in client.stream(reqs))
            # The driver's own CPU per request bounds how many actors one driver can feed.
            rates[name] = (n / (time.perf_counter() - t0), (time.process_time() - c0) / n)
    return rates


def client_part(local, ray_engine, n_requests: int) -> None:
    from pipeline.config import load_config

    # One endpoint process per client actor, as replicas are: one Python server would be the
    # bottleneck of the measurement, not the clients.
    servers = [
        subprocess.Popen(
            [sys.executable, "-c", FAKE_SERVER.format(root=str(ROOT))],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        urls = [srv.stdout.readline().strip() for srv in servers]
        engines = []
        for n in (1, 2, 4):
            llm = {"base_urls": urls[:n], "api": "chat", "concurrency": 32, "cache": False}
            engine = {"kind": "ray", "client_actors": n, "request_chunk": 32}
            cfg = load_config(None, None, {"llm": llm, "engine": engine})
            engines.append((f"ray, {n} client actor(s)", ray_engine(2), cfg))
        llm = {"base_urls": urls[:1], "api": "chat", "concurrency": 32, "cache": False}
        engines.insert(
            0, ("local client (one process)", local, load_config(None, None, {"llm": llm}))
        )
        rates = client_rates(None, engines, n_requests)
    finally:
        for srv in servers:
            srv.kill()
    print(f"\n3. LLM client, {n_requests} requests, one endpoint per actor that answers at once")
    one = rates["ray, 1 client actor(s)"][0]
    for name, (rate, cpu) in rates.items():
        print(
            f"{name:28} {rate:8.0f} requests/s  ({rate / one:4.2f}x one actor)  "
            f"driver CPU {cpu * 1e6:6.0f} us/request"
        )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of each worker node")
    ap.add_argument("--verify-records", type=int, default=120)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument(
        "--parts", default="verify,dedup,clients", help="parts 1-3 to run, comma-separated"
    )
    ap.add_argument("--corpus-limit", type=int, default=0, help="first N of the 25k; 0 = all")
    ap.add_argument(
        "--dedup-scale", type=int, default=0, help="records for the scale dedup; 0 = skip"
    )
    args = ap.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from pipeline.config import load_config
    from pipeline.engine import LocalEngine, RayEngine
    from pipeline.records import read_records

    print(f"machine: {os.cpu_count()} logical CPUs; worker nodes of {args.cpus} CPUs each")
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=args.cpus)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    local = LocalEngine()

    def ray_engine(nodes: int, **kw):
        return RayEngine(load_config(None, None, {"engine": {"kind": "ray", **kw}}).engine)

    base = load_config(None, None, {})
    vcfg = type(base.verify)(**{**base.verify.__dict__, "workers": args.cpus, "batch": 8})
    vcfg1 = type(base.verify)(**{**base.verify.__dict__, "workers": 1, "batch": 8})
    records = verify_records(args.verify_records)
    corpus = list(read_records(CORPUS)) if CORPUS.exists() else []
    corpus = corpus[: args.corpus_limit or None]
    dcfg = base.dedup

    parts = set(args.parts.split(","))
    rows: dict = {}
    dedup_rows: dict = {}
    if "verify" in parts:
        time_verify(local, verify_records(vcfg.batch), vcfg)  # the same warm-up as the actors get
        wall, runs, kept_local = time_verify(local, records, vcfg)
        rows["verify local"] = (wall, runs)
    if "dedup" in parts and corpus:
        dl_wall, dl = time_dedup(local, corpus, dcfg)
        dedup_rows["local"] = (dl_wall, True)
    for nodes in (1, 2):
        if nodes == 2:
            cluster.add_node(num_cpus=args.cpus)
            cluster.wait_for_nodes()
        if "verify" in parts:
            eng = ray_engine(nodes, verify_actors=nodes * args.cpus)
            time_verify(eng, verify_records(vcfg1.batch * nodes * args.cpus), vcfg1)  # warm
            wall, runs, kept = time_verify(eng, records, vcfg1)
            rows[f"verify ray {nodes} node(s)"] = (wall, runs)
            assert kept == kept_local
            eng.close()
        if "dedup" in parts and corpus:
            eng = ray_engine(nodes, dedup_tasks=nodes * args.cpus)
            wall, dr = time_dedup(eng, corpus, dcfg)
            dedup_rows[f"ray {nodes} node(s)"] = (wall, dr == dl)

    if rows:
        print(f"\n1. verify: {len(records)} problems x 2 candidates")
        print(f"{'engine':28} {'runs':>6} {'wall s':>8} {'runs/s':>8}")
        for name, (wall, runs) in rows.items():
            print(f"{name:28} {runs:6d} {wall:8.2f} {runs / wall:8.1f}")
    if dedup_rows:
        print(f"\n2. exact dedup, {len(corpus)} records of the 25k corpus")
        print(f"{'engine':28} {'wall s':>8} {'identical to local':>20}")
        for name, (wall, same) in dedup_rows.items():
            print(f"dedup {name:22} {wall:8.2f} {str(same):>20}")

    if "clients" in parts:
        client_part(local, ray_engine, args.requests)

    if args.dedup_scale:
        out = Path(f"/tmp/scale_{args.dedup_scale}.jsonl")
        if not out.exists():
            subprocess.run(
                [
                    sys.executable,
                    str(BENCH / "make_scale_corpus.py"),
                    str(args.dedup_scale),
                    str(out),
                ],
                check=True,
            )
        eng = ray_engine(2, dedup_tasks=2 * args.cpus)
        rss0 = peak_rss_mb()
        wall, (kept, rejected) = time_dedup(eng, read_records(out), dcfg)
        print(f"\n4. exact dedup of {args.dedup_scale} records on Ray (2 worker nodes)")
        print(
            f"wall {wall:.1f} s, kept {len(kept)}, rejected {len(rejected)}; driver peak RSS "
            f"{peak_rss_mb():.0f} MiB (before: {rss0:.0f} MiB)"
        )
    ray.shutdown()
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
