"""first_pass versus agreement on the same code-mode answers, judged by held-out reference tests.

For each code seed of ``seed_tasks.jsonl`` (the records with ``tests``: a reference solution and
reference tests), the embedded model is asked for unit tests and k candidate solutions through
the pipeline's own ``stages.generate.solve`` operator (problem = the seed's instruction; the
example shown = another code seed, chosen as the pipeline chooses it). The SAME records then go
through ``stages.verify.run`` once with ``selection=first_pass`` and once with
``selection=agreement``, and every kept record's chosen output is run against the seed's
REFERENCE tests in the sandbox. Answers are cached in a response cache file, so a rerun (or a
larger ``--seeds`` after a smaller one) costs only the new requests.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_selection.py [--seeds 80] [--k 4] \\
        [--model qwen2.5-coder-0.5b] [--cache outputs/bench-selection/cache.jsonl]

Prints the figures side by side; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import prompts  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.llm import LLMClient, ResponseCache  # noqa: E402
from pipeline.records import enumerate_jsonl  # noqa: E402
from pipeline.server import EmbeddedServer  # noqa: E402
from stages import execution, generate, seeds, verify  # noqa: E402
from stages.base import StageStats  # noqa: E402


def load_pool() -> list[dict]:
    path = ROOT / "seed_tasks.jsonl"
    records = seeds.load_seed_records(enumerate_jsonl(path), str(path))
    return [r for r in records if r.get("tests")]


def solve_all(pool: list[dict], n: int, k: int, model: str, cache_path: Path) -> list[dict]:
    """Tests + k candidates for the first ``n`` code seeds, one ``solve`` call per problem so
    that the example shown is never the problem's own seed."""
    cfg = load_config(
        str(ROOT / "configs" / "code.yaml"),
        None,
        {"generation": {"num_candidates": k}, "llm": {"embedded_model": model}},
    )
    g = cfg.generation
    cache = ResponseCache(cache_path)
    stats = StageStats(stage="solve")
    out: list[dict] = []
    with contextlib.ExitStack() as stack:
        srv = None
        client = None
        for seed in pool[:n]:
            problem = {
                "id": f"p-{seed['id']}",
                "instruction": seed["instruction"],
                "input": "",
                "language": "python",
                "meta": {"seed": seed["id"]},
            }
            others = [s for s in pool if s["id"] != seed["id"]]
            if client is None:
                srv = stack.enter_context(
                    EmbeddedServer(
                        model, threads=cfg.llm.embedded_threads, ctx=cfg.llm.embedded_ctx
                    )
                )
                client = LLMClient(
                    cfg.llm,
                    base_urls=[srv.base_url],
                    model=srv.model_name,
                    api_key=None,
                    cache=cache,
                    api=srv.api,
                )
                api = srv.api
                print(f"server {srv.model_name}, api {api}, threads {srv.threads}", flush=True)
            t0 = time.perf_counter()
            got = list(
                generate.solve([problem], client.stream, prompts.render, g, others, api, stats)
            )
            print(
                f"  {seed['id']}: {'solved' if got else 'dropped'} in "
                f"{time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            for rec in got:
                rec["reference_tests"] = seed["tests"]
                out.append(rec)
    cache.close()
    print(f"solve: kept {stats.kept}, dropped {dict(stats.dropped)}")
    if client is not None:
        u = client.usage
        print(
            f"requests: {u.total('requests'):.0f} ({u.total('cached'):.0f} from cache); "
            f"prompt tokens {u.total('prompt_tokens')}, completion {u.total('completion_tokens')}"
        )
    return out


def strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "reference_tests"}


def arm(records: list[dict], selection: str, box: execution.Sandbox) -> dict:
    vcfg = verify.VerifyConfig(selection=selection)
    stats = StageStats(stage="verify")
    by_id = {r["id"]: r for r in records}
    t0 = time.perf_counter()
    kept = list(verify.run([strip(r) for r in records], vcfg, stats))
    secs = time.perf_counter() - t0
    results = box.map(
        [(r["output"], by_id[r["id"]]["reference_tests"]) for r in kept], timeout=10.0
    )
    right = [r["id"] for r, res in zip(kept, results, strict=True) if res.passed]
    ex = stats.extra
    return {
        "kept": len(kept),
        "right": len(right),
        "wrong": len(kept) - len(right),
        "right_ids": set(right),
        "kept_ids": {r["id"] for r in kept},
        "asserts_dropped": ex.get("asserts_dropped", 0),
        "records_with_dropped": ex.get("records_with_dropped_asserts", 0),
        "cand_run": ex.get("candidates_run", 0),
        "cand_passed": ex.get("candidates_passed", 0),
        "rejects": dict(stats.dropped),
        "seconds": secs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=80, help="code seeds used (first N of 80)")
    ap.add_argument("--k", type=int, default=4, help="candidate solutions per problem")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="embedded model")
    ap.add_argument("--cache", default="outputs/bench-selection/cache.jsonl")
    args = ap.parse_args()

    pool = load_pool()
    print(f"code seeds: {len(pool)}; using {min(args.seeds, len(pool))}, k={args.k}")
    t0 = time.perf_counter()
    records = solve_all(pool, args.seeds, args.k, args.model, ROOT / args.cache)
    print(f"solve wall {time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f}")
    dump = ROOT / Path(args.cache).parent / f"solved-{args.seeds}-k{args.k}.jsonl"
    dump.write_text("".join(json.dumps(r) + "\n" for r in records))

    with execution.Sandbox(os.cpu_count() or 1) as box:
        # Ceiling: problems where at least one candidate passes the reference tests.
        jobs = [(c, r["reference_tests"]) for r in records for c in r["candidates"]]
        res = list(box.map(jobs, timeout=10.0))
        ref_pass = sum(x.passed for x in res)
        solvable, i = 0, 0
        for r in records:
            solvable += any(x.passed for x in res[i : i + len(r["candidates"])])
            i += len(r["candidates"])
        arms = {s: arm(records, s, box) for s in verify.SELECTIONS}

    n = len(records)
    print(f"\nproblems with tests + candidates: {n}; candidates {len(jobs)}")
    print(f"candidates passing the REFERENCE tests: {ref_pass}/{len(jobs)}")
    print(f"problems with at least one candidate right (ceiling): {solvable}/{n}\n")
    rows = [
        ("records kept", "kept"),
        ("kept and right (pass reference tests)", "right"),
        ("kept but wrong", "wrong"),
        ("asserts dropped", "asserts_dropped"),
        ("records with dropped asserts", "records_with_dropped"),
        ("candidates run", "cand_run"),
        ("candidates passing the model's tests", "cand_passed"),
    ]
    fp, ag = arms["first_pass"], arms["agreement"]
    print("| figure | first_pass | agreement |\n|---|---:|---:|")
    for label, key in rows:
        print(f"| {label} | {fp[key]} | {ag[key]} |")
    for a in (fp, ag):
        a["rate"] = f"{a['cand_passed'] / a['cand_run']:.1%}" if a["cand_run"] else "-"
    print(f"| candidate pass rate (model's tests) | {fp['rate']} | {ag['rate']} |")
    print(f"| verify seconds | {fp['seconds']:.1f} | {ag['seconds']:.1f} |")
    print(f"\nrejects first_pass: {fp['rejects']}\nrejects agreement: {ag['rejects']}")
    print(
        "right only under agreement: "
        f"{sorted(ag['right_ids'] - fp['right_ids'])}; "
        f"right only under first_pass: {sorted(fp['right_ids'] - ag['right_ids'])}"
    )
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
