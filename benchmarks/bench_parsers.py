"""Yield per request of the generation prompts and reply parsers on each embedded model.

For every installed embedded model (pipeline/models.py) this starts the real llama.cpp server
once and sends, through the project's own client, N general-mode and N code-problem batch
requests (prompts from stages/prompting.py over sampled seed tasks, the sampling settings of
configs/general.yaml and configs/code.yaml) in the chat API and in the completion API. Each
reply is parsed twice, by the parser before the chat-reply work (stages/parsing.py at commit
7f760bf, read with ``git show``) and by the current one, and for each it prints:

- ``items/req``: tasks the parser returned per request;
- ``valid/req``: of those, how many look like a task: an instruction of at least four words that
  is no preamble ("Sure! Here are ..."), holds no code fence and starts with no markdown, plus
  an output (general mode) or a named function (code mode); judged here, independently of the
  parser's own rules;
- ``kept/req``: valid items the filter stage keeps (stages/filters.py, the run's defaults);
- ``new/req``: kept items that are no near-duplicate (ROUGE-L > 0.7, stages/dedup.py) of a seed
  task or of an earlier kept item from the same model, API and mode: what a run would gain.

Then, for unit tests and solutions (``--solve K``): K code seed tasks (each with a reference
solution and reference tests in seed_tasks.jsonl) are asked for, per API, one unit-test reply
and two solution replies each, the example shown being another seed. Each reply is extracted as
before (``extract_code``) and now (``extract_tests`` / ``extract_solution``), and judged
against the seed's own references in the sandbox: a test suite is usable when it has an assert,
calls the code under test (not a copy of its own: verify's ``tests_call_nothing``) and the
reference solution passes it; a solution is correct when it passes the reference tests.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_parsers.py [--models qwen2.5-coder-0.5b]
        [--requests 6] [--solve 3] [--apis chat,completion] [--dump replies.jsonl]

It prints figures and asserts nothing; the figures depend on sampling, so compare the columns
of one run with each other.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
import types
from pathlib import Path

from pipeline import models
from pipeline.config import LLMConfig
from pipeline.llm import LLMClient
from pipeline.prompts import render
from pipeline.records import enumerate_jsonl
from pipeline.server import EmbeddedServer
from stages import dedup, execution, filters, parsing, prompting, seeds, verify
from stages.base import Request

ROOT = Path(__file__).resolve().parent.parent
OLD_PARSER_COMMIT = "7f760bf"
EXAMPLES, TASKS = 3, 3  # configs/general.yaml and configs/code.yaml
PARAMS = {
    "general": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 400},
    "code": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 384},
}
_PREAMBLE = re.compile(r"^\W*(sure|certainly|of course|here|below|okay|great|absolutely)\b", re.I)


def old_parser() -> types.ModuleType | None:
    try:
        src = subprocess.run(
            ["git", "show", f"{OLD_PARSER_COMMIT}:stages/parsing.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    mod = types.ModuleType("old_parsing")
    sys.modules[mod.__name__] = mod  # dataclasses looks its module up there
    exec(compile(src, "old_parsing.py", "exec"), mod.__dict__)
    return mod


def looks_valid(item, mode: str) -> bool:
    ins = (item.instruction or "").strip()
    if len(ins.split()) < 4 or "```" in ins or ins[:1] in "#*>" or ins.endswith(":"):
        return False
    if _PREAMBLE.match(ins):
        return False
    if mode == "general":
        return bool((item.output or "").strip())
    return prompting.function_name(ins) != "solution"


def batch_requests(mode: str, api: str, n: int, pool: list[dict]) -> list[Request]:
    reqs = []
    for i in range(n):
        rng = random.Random(f"bench-parsers:{mode}:{i}")
        examples = seeds.sample_seeds(pool, EXAMPLES, rng)
        if mode == "general":
            _, text = prompting.general_prompt(render, examples, TASKS, api)
            header = "Task"
        else:
            _, text = prompting.code_problem_prompt(render, examples, TASKS, api)
            header = "Problem"
        params = {**PARAMS[mode], "seed": 1000 + i}
        if api == "completion":
            # As the run does: one stop marker past the asked-for batch, and the reply parsed
            # with the header the prompt ended inside.
            params["stop"] = [f"{header} {EXAMPLES + TASKS + 1}"]
            req = Request(kind=mode, prompt=text, params=params, sample=i, api=api)
        else:
            req = Request(
                kind=mode, messages=[{"role": "user", "content": text}], params=params, sample=i
            )
            req.api = api
        req.tag = {
            "prefix": f"{header} {EXAMPLES + 1}\nInstruction:" if api == "completion" else ""
        }
        reqs.append(req)
    return reqs


def code_requests(problems: list[dict], examples: list[dict], api: str) -> list[Request]:
    """One tests and two solution requests per problem (``tag``: the problem's index)."""
    reqs = []
    for j, p in enumerate(problems):
        ex = examples[j]
        for kind, sample in (("tests", 0), ("solutions", 0), ("solutions", 1)):
            build = (
                prompting.code_tests_prompt if kind == "tests" else prompting.code_solution_prompt
            )
            _, text = build(render, p, ex, api)
            params = {**PARAMS["code"], "seed": 2000 + 10 * j + sample}
            if api == "completion":
                params["stop"] = ["```", "### Problem"]  # as the run sends them
                req = Request(kind=kind, prompt=text.rstrip("\n") + "\n", params=params)
            else:
                req = Request(
                    kind=kind, messages=[{"role": "user", "content": text}], params=params
                )
            req.api, req.sample, req.tag = api, sample, j
            reqs.append(req)
    return reqs


def solve_seeds(pool: list[dict], k: int) -> tuple[list[dict], list[dict]]:
    """K code seeds to solve and, for each, another seed shown as the example."""
    code = sorted((s for s in pool if s.get("tests")), key=lambda s: s["id"])
    rng = random.Random("bench-parsers:solve")
    picks = rng.sample(code, min(2 * k, len(code)))
    return picks[:k], picks[k : 2 * k]


def collect(model: str, args, pools: dict) -> list[dict]:
    """Raw replies of one model: batch replies per API and mode, then tests and solutions for
    ``--solve`` seed problems per API."""
    cfg = LLMConfig(concurrency=1, cache=False, timeout=900)
    problems, examples = solve_seeds(pools["code"], args.solve)
    out: list[dict] = []
    with EmbeddedServer(model) as srv:
        client = LLMClient(
            cfg, base_urls=[srv.base_url], model=srv.model_name, api_key=None, api=srv.api
        )
        for api in args.apis.split(","):
            reqs = [
                r
                for mode in ("general", "code")
                for r in batch_requests(mode, api, args.requests, pools[mode])
            ]
            reqs += code_requests(problems, examples, api)
            for req, resp in client.stream(reqs):
                row = {
                    "model": model,
                    "api": api,
                    "mode": req.kind,
                    "sample": req.sample,
                    "text": getattr(resp, "text", "") or "",
                    "finish": getattr(resp, "finish_reason", None),
                    "tokens": getattr(resp, "completion_tokens", 0) or 0,
                }
                if req.kind in ("general", "code"):
                    row["prefix"] = req.tag["prefix"]
                else:
                    row["prefix"] = "```python\n" if api == "completion" else ""
                    row["seed"] = problems[req.tag]["id"]
                out.append(row)
    return out


def score_items(mod, row: dict) -> list[tuple[object, str, str | None]]:
    """(item, instruction as generation keeps it, filter reason or None) for each valid item
    of a batch reply; an invalid item has reason None replaced by skipping it."""
    mode = row["mode"]
    fcfg = filters.FilterConfig(mode=mode)
    got = []
    for it in mod.parse_tasks(row["prefix"] + row["text"], need_output=mode == "general"):
        if not looks_valid(it, mode):
            got.append((it, "", None))
            continue
        ins = it.instruction
        if mode == "code":
            ins = ins.split("\n\n")[0].strip()  # as generation keeps a problem
            rec = {"instruction": ins, "input": it.input}  # no output yet: filtered as a problem
        else:
            rec = {"instruction": ins, "input": it.input, "output": it.output or ""}
        got.append((it, ins, filters.check(rec, fcfg) or "kept"))
    return got


def score(rows: list[dict], old) -> list[dict]:
    figs: dict[tuple, dict] = {}
    sandbox_why = execution.check_sandbox()
    seed_records = seeds.load_seed_records(
        enumerate_jsonl(ROOT / "seed_tasks.jsonl"), "seed_tasks.jsonl"
    )
    pools: dict[tuple, dedup.Deduper] = {}
    for row in rows:
        if row["mode"] not in ("general", "code"):
            continue
        key = (row["model"], row["api"], row["mode"])
        fig = figs.setdefault(
            key, {"model": key[0], "api": key[1], "mode": key[2], "requests": 0, "tokens": 0}
        )
        fig["requests"] += 1
        fig["tokens"] += row.get("tokens", 0)
        for label, mod in (("old", old), ("new", parsing)):
            if mod is None:
                continue
            got = score_items(mod, row)
            fig[f"{label}_items"] = fig.get(f"{label}_items", 0) + len(got)
            fig[f"{label}_valid"] = fig.get(f"{label}_valid", 0) + sum(
                r is not None for *_, r in got
            )
            fig[f"{label}_kept"] = fig.get(f"{label}_kept", 0) + sum(r == "kept" for *_, r in got)
            # As the run does: near-duplicates (ROUGE-L > 0.7) of a seed or of an earlier kept
            # item of the same model, API and mode are dropped.
            pool = pools.get((key, label))
            if pool is None:
                pool = pools[(key, label)] = dedup.Deduper(
                    dedup.DedupConfig(), against=seed_records
                )
            new = sum(
                pool.check({"instruction": ins})[0] is None for _, ins, r in got if r == "kept"
            )
            fig[f"{label}_new"] = fig.get(f"{label}_new", 0) + new
    # tests and solutions, judged against the seed's reference solution and reference tests.
    ref = {r["id"]: r for r in seed_records}
    for row in rows:
        if row["mode"] not in ("tests", "solutions") or "seed" not in row:
            continue
        key = (row["model"], row["api"], row["mode"])
        fig = figs.setdefault(
            key,
            {"model": key[0], "api": key[1], "mode": key[2], "replies": 0, "tokens": 0,
             "old_ok": 0, "new_ok": 0},
        )  # fmt: skip
        fig["replies"] += 1
        fig["tokens"] += row.get("tokens", 0)
        seed = ref[row["seed"]]
        text = row["prefix"] + row["text"]
        names = prompting.names_under_test(seed["instruction"])
        if sandbox_why:
            fig["note"] = "no sandbox here: nothing run"
            continue
        if row["mode"] == "tests":
            pairs = (
                ("old", parsing.extract_code(text)),
                ("new", parsing.extract_tests(text, names)),
            )
            for label, tests in pairs:
                # Usable as verify sees it: the tests call the code under test rather than a
                # copy of their own, and the reference solution passes them.
                rec = {"tests": tests, "candidates": [seed["output"]]}
                if "assert" not in tests or verify.check_tests(rec) is not None:
                    continue
                if execution.run_tests(seed["output"], tests).passed:
                    fig[f"{label}_ok"] += 1
        else:
            pairs = (("old", parsing.extract_code(text)), ("new", parsing.extract_solution(text)))
            for label, code in pairs:
                if execution.run_tests(code, seed["tests"]).passed:
                    fig[f"{label}_ok"] += 1
    return list(figs.values())


def table(figs: list[dict]) -> None:
    print(
        "\n| model | api | mode | requests | tokens/req | items/req old → new "
        "| valid/req old → new | kept/req old → new | new/req old → new |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in figs:
        if r["mode"] not in ("general", "code"):
            continue
        n = r["requests"]
        cells = [
            f"{r.get('old_' + k, 0) / n:.2f} → {r['new_' + k] / n:.2f}"
            for k in ("items", "valid", "kept", "new")
        ]
        print(
            f"| {r['model']} | {r['api']} | {r['mode']} | {n} | {r['tokens'] / n:.0f} | "
            + " | ".join(cells)
            + " |"
        )
    solved = [r for r in figs if r["mode"] in ("tests", "solutions")]
    if solved:
        print(
            "\n| model | api | reply | replies | tokens/reply | usable (tests) / correct "
            "(solutions), old → new extraction |"
        )
        print("|---|---|---|---|---|---|")
        for r in solved:
            print(
                f"| {r['model']} | {r['api']} | {r['mode']} | {r['replies']} | "
                f"{r['tokens'] / r['replies']:.0f} | {r['old_ok']} → {r['new_ok']} "
                f"{r.get('note', '')}|"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(models.names()))
    ap.add_argument("--requests", type=int, default=6, help="batch requests per mode and API")
    ap.add_argument(
        "--solve", type=int, default=3, help="seed problems given tests + 2 solutions, per API"
    )
    ap.add_argument("--apis", default="chat,completion")
    ap.add_argument("--dump", help="append every raw reply to this JSONL file")
    ap.add_argument("--replay", help="score the replies in this --dump file (no server)")
    args = ap.parse_args()

    old = old_parser()
    if old is None:
        print(f"(git {OLD_PARSER_COMMIT}:stages/parsing.py is not available: new parser only)")
    if args.replay:
        rows = [json.loads(x) for x in Path(args.replay).read_text().splitlines() if x]
    else:
        pool = seeds.load_seed_records(
            enumerate_jsonl(ROOT / "seed_tasks.jsonl"), "seed_tasks.jsonl"
        )
        pools = {m: seeds.pool_for_mode(pool, m) for m in ("general", "code")}
        rows = []
        for name in args.models.split(","):
            m = models.get(name)
            if not models.available(m):
                print(f"{m.name}: not installed, skipped ({m.install_hint})")
                continue
            t0 = time.perf_counter()
            got = collect(m.name, args, pools)
            print(f"{m.name}: {len(got)} replies in {time.perf_counter() - t0:.0f}s", flush=True)
            rows += got
            if args.dump:
                with open(args.dump, "a", encoding="utf-8") as f:
                    f.writelines(json.dumps(r) + "\n" for r in got)
    table(score(rows, old))
    return 0


if __name__ == "__main__":
    sys.exit(main())
