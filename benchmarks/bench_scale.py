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
   the driver's peak RSS and the peak RSS of the biggest worker. The input is handed over as
   ``pipeline dedup`` hands it (a :class:`pipeline.records.RecordFile`, which the engine reads
   twice) and the output is counted and hashed, not held, so the driver's figure is the
   engine's; the hash (over kept ids and rejects, in order) shows two versions decide alike.

Several nodes on one machine share its cores: on a 2-core machine a second node adds no
compute, so the node columns show the engine's overhead and that the work spreads, not a
cluster's speed-up. Figures only; nothing is asserted.

    nice .venv/bin/python benchmarks/bench_scale.py [--cpus 2] [--dedup-scale 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import textwrap
import threading
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


def stream_dedup(engine, records, dcfg) -> tuple[float, int, int, str]:
    """Dedup into counters and a hash, as ``pipeline dedup`` streams into files: (wall s, kept,
    rejected, sha256 of the kept ids and the rejects in order)."""
    from stages.base import StageStats

    digest = hashlib.sha256()

    def seen(tag: str):
        def sink(rec: dict) -> None:
            detail = rec.get("reject")
            digest.update(json.dumps([tag, rec.get("id"), detail], sort_keys=True).encode())

        return sink

    st = StageStats("dedup", sink=seen("rejected"), kept_sink=seen("kept"))
    t0 = time.perf_counter()
    for _ in engine.dedup(records, dcfg, st):
        pass
    return time.perf_counter() - t0, st.kept, st.rejected, digest.hexdigest()


def driver_rss() -> dict[str, int]:
    """The driver's resident memory now, in bytes, by kind: ``RssAnon`` (its heap),
    ``RssShmem`` (object-store pages it has written or read) and ``RssFile``."""
    with open("/proc/self/status", encoding="ascii") as f:
        rows = (line.split() for line in f if line.startswith("Rss"))
        return {r[0].rstrip(":"): int(r[1]) * 1024 for r in rows}


class WorkerPeak:
    """Peak RSS of the biggest process of the cluster (the driver's descendants) and the
    driver's peak RSS by kind (:func:`driver_rss`), sampled."""

    def __init__(self, every: float = 0.5):
        import psutil

        self.me, self.every, self.peak, self.name = psutil.Process(), every, 0, ""
        self.driver: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            for kind, size in driver_rss().items():
                self.driver[kind] = max(size, self.driver.get(kind, 0))
            for p in self.me.children(recursive=True):
                try:
                    rss, name = p.memory_info().rss, p.name()
                except Exception:  # the process ended between the listing and the read
                    continue
                if rss > self.peak:
                    self.peak, self.name = rss, name

    def __enter__(self) -> WorkerPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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
    from pipeline.records import RecordFile, read_records

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
    parts = set(args.parts.split(","))
    # Loaded only when part 2 runs, so that part 4's driver baseline does not hold it.
    corpus = list(read_records(CORPUS)) if CORPUS.exists() and "dedup" in parts else []
    corpus = corpus[: args.corpus_limit or None]
    dcfg = base.dedup

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
        rss0, base = peak_rss_mb(), driver_rss()
        with WorkerPeak() as worker:
            wall, kept, rejected, digest = stream_dedup(eng, RecordFile(out), dcfg)
        rss = peak_rss_mb()
        n = args.dedup_scale
        print(f"\n4. exact dedup of {n} records on Ray (2 worker nodes)")
        print(
            f"wall {wall:.1f} s, kept {kept}, rejected {rejected}; driver peak RSS {rss:.0f} MiB "
            f"(before: {rss0:.0f} MiB; {(rss - rss0) * 2**20 / n:.0f} bytes per record over it); "
            f"biggest cluster process {worker.peak / 2**20:.0f} MiB ({worker.name})"
        )
        print(
            "driver peak by kind, sampled (before): "
            + ", ".join(
                f"{k} {v / 2**20:.0f} MiB ({base.get(k, 0) / 2**20:.0f})"
                for k, v in worker.driver.items()
            )
        )
        print(f"decisions sha256 {digest}")
    ray.shutdown()
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
