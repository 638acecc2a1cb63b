"""What each generation strategy yields on the embedded model: one small run per strategy (the
real pipeline, every stage, the judge on), then per strategy

- kept records per 1,000 completion tokens (every request of the run counted: generation,
  answers, classification queries, tests and candidates, the judge's ratings);
- diversity: the mean, over kept records, of the ROUGE-L F of its instruction against its
  nearest other kept instruction (lower is more diverse);
- the judge's mean score over the records it rated (and how many it could not rate);
- code mode: the candidate pass rate of the verify stage.

The judge may be a second embedded model (``--judge-model``, e.g. qwen2.5-coder-0.5b: SmolLM2-135M
cannot rate, see BENCHMARKS.md). Prints a Markdown table; asserts nothing.

    .venv/bin/python benchmarks/bench_strategies.py [--num 4] [--max-requests 8] \
        [--judge-model qwen2.5-coder-0.5b] [--strategies alpaca,evol,...] [--code]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.run import Run  # noqa: E402
from pipeline.server import EmbeddedServer  # noqa: E402
from stages.rouge import rouge_l  # noqa: E402

GENERAL = ("alpaca", "classification", "evol", "magpie")
CODE = ("alpaca", "evol", "oss")


def lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def nn_rouge(texts: list[str]) -> float | None:
    if len(texts) < 2:
        return None
    best = [max(rouge_l(t, u) for j, u in enumerate(texts) if j != i) for i, t in enumerate(texts)]
    return sum(best) / len(best)


def one(srv, judge_url, judge_model, mode, strategy, args, out: Path) -> dict:
    gen = {
        "mode": mode,
        "strategy": strategy,
        "num": args.num,
        "max_requests": args.max_requests,
        "round_size": 4,
        "seeds_path": str(ROOT / "seed_tasks.jsonl"),
        "answer_mode": "chat",
    }
    if mode == "code":
        gen.update(code_rounds=2, code_overgenerate=2, num_candidates=2)
        gen.pop("max_requests")
        gen.pop("round_size")
        gen.pop("answer_mode")
    judge = {"enabled": True}
    if judge_url:
        judge.update(base_url=judge_url, model=judge_model)
    data = {
        "run": f"{mode}-{strategy}",
        "output_dir": str(out),
        "llm": {"base_url": srv.base_url, "model": srv.model_name, "api": "completion"},
        "generation": gen,
        "judge": judge,
    }
    cfg = load_config(str(ROOT / "configs" / f"{mode}.yaml"), None, data)
    t0 = time.perf_counter()
    stats = Run(cfg, progress=False).execute()
    wall = time.perf_counter() - t0
    run = out / data["run"]
    kept = lines(run / "messages.jsonl")
    final = lines(run / "04b_judge.jsonl")[: len(kept)] if kept else []
    judged = lines(run / "04b_judge.jsonl") + lines(run / "04b_judge.rejected.jsonl")
    scores = [
        r["meta"]["judge"]["score"] for r in judged if (r["meta"].get("judge") or {}).get("score")
    ]
    tokens = stats["llm"]["completion_tokens"]
    v = stats["stages"].get("verify", {}).get("extra", {})
    return {
        "mode": mode,
        "strategy": strategy,
        "kept": stats["kept"],
        "completion_tokens": tokens,
        "kept_per_1k": 1000 * stats["kept"] / tokens if tokens else 0.0,
        "nn_rouge": nn_rouge([r["instruction"] for r in final]),
        "judge_mean": sum(scores) / len(scores) if scores else None,
        "judged": len(scores),
        "unrated": stats["stages"].get("judge", {}).get("dropped", {}).get("unparseable_rating", 0),
        "pass_rate": v.get("candidates_passed", 0) / v["candidates_run"]
        if v.get("candidates_run")
        else None,
        "requests": stats["llm"]["requests"],
        "wall_s": wall,
    }


def fmt(x, spec=".2f"):
    return "n/a" if x is None else format(x, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=4)
    ap.add_argument("--max-requests", type=int, default=8)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--judge-model", default="", help="a second embedded model for the judge")
    ap.add_argument("--strategies", default=",".join(GENERAL))
    ap.add_argument("--code", action="store_true", help="also the code-mode strategies")
    args = ap.parse_args(argv)
    rows = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        srv = stack.enter_context(EmbeddedServer(args.model))
        judge_url = judge_name = None
        if args.judge_model:
            jsrv = stack.enter_context(EmbeddedServer(args.judge_model))
            judge_url, judge_name = jsrv.base_url, jsrv.model_name
        plan = [("general", s) for s in args.strategies.split(",") if s]
        if args.code:
            plan += [("code", s) for s in CODE]
        for mode, strategy in plan:
            rows.append(one(srv, judge_url, judge_name, mode, strategy, args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    judge = judge_name or f"{srv.model_name} (same endpoint)"
    print(f"\ngeneration model {srv.model_name}; judge {judge}; num={args.num}\n")
    print(
        "| mode | strategy | kept | kept / 1k completion tokens | mean NN ROUGE-L (kept) | "
        "mean judge score (rated / unrated) | candidate pass rate |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['strategy']} | {r['kept']} | {r['kept_per_1k']:.2f} | "
            f"{fmt(r['nn_rouge'], '.3f')} | {fmt(r['judge_mean'])} ({r['judged']} / {r['unrated']}) | "
            f"{fmt(r['pass_rate'], '.0%')} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
