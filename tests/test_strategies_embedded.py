"""Each generation strategy on the real embedded server (SmolLM2-135M, llama.cpp): records come
out with the strategy's provenance in ``meta``, every stage's books balance (classify and judge
included), a mixed run's rerun pays nothing, and export writes the dataset card."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.run import Run
from tests.test_books import assert_books, lines

ROOT = Path(__file__).resolve().parent.parent


def cfg_for(srv, tmp_path: Path, run: str, generation: dict, **sections):
    data = {
        "run": run,
        "output_dir": str(tmp_path),
        "llm": {"base_url": srv.base_url, "model": srv.model_name, "api": "completion"},
        "generation": {
            "answer_mode": "chat",
            "seeds_path": str(ROOT / "seed_tasks.jsonl"),
            "max_tokens": 96,
            **generation,
        },
        **sections,
    }
    mode = generation.get("mode", "general")
    return load_config(str(ROOT / "configs" / f"{mode}.yaml"), None, data)


def generated(run_dir: Path) -> list[dict]:
    return lines(run_dir / "01_generated.jsonl") + lines(run_dir / "01_generated.rejected.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["evol", "magpie", "classification"])
def test_a_general_strategy_carries_its_provenance(embedded_server, tmp_path, strategy):
    cfg = cfg_for(
        embedded_server,
        tmp_path,
        strategy,
        {
            "strategy": strategy,
            "num": 1,
            "max_requests": 3,
            "round_size": 3,
            "tasks_per_request": 2,
        },
    )
    Run(cfg, progress=False).execute()
    stats = assert_books(tmp_path / strategy)
    recs = generated(tmp_path / strategy)
    assert recs, "generation made no record at all"
    assert {r["meta"]["strategy"] for r in recs} == {strategy}
    # At most three requests, so at most three rounds, numbered from 0 in request order.
    rounds = sorted((r["meta"]["request"], r["meta"]["round"]) for r in recs)
    assert rounds[0][1] == 0 and all(0 <= n < 3 for _, n in rounds)
    assert [n for _, n in rounds] == sorted(n for _, n in rounds)
    if strategy == "evol":
        seed_ids = {r["id"] for r in lines(tmp_path / strategy / "00_seeds.jsonl")}
        assert all(r["meta"]["parent"] in seed_ids for r in recs)
        assert all(r["meta"]["depth"] == 1 for r in recs)
    if strategy == "classification":
        assert "classify" in stats["stages"]
        decided = lines(tmp_path / strategy / "02a_classify.jsonl") + lines(
            tmp_path / strategy / "02a_classify.rejected.jsonl"
        )
        # Generated instructions are asked about (the raw Yes/No reply is kept).
        assert all("decision" in r["meta"] for r in decided)
    assert (tmp_path / strategy / "README.md").read_text().startswith("---\nlicense: apache-2.0")


@pytest.mark.slow
def test_a_mix_with_the_judge_balances_and_a_rerun_pays_nothing(embedded_server, tmp_path):
    cfg = cfg_for(
        embedded_server,
        tmp_path,
        "mix",
        {
            "strategy": {"alpaca": 0.5, "evol": 0.3, "magpie": 0.2},
            "num": 2,
            "max_requests": 6,
            "round_size": 3,
            "tasks_per_request": 2,
        },
        judge={"enabled": True},
    )
    first = Run(cfg, progress=False).execute()
    stats = assert_books(tmp_path / "mix")
    assert "judge" in stats["stages"]
    by = Counter(r["meta"]["strategy"] for r in generated(tmp_path / "mix"))
    assert set(by) <= {"alpaca", "evol", "magpie"} and len(by) >= 2, by
    judged = lines(tmp_path / "mix" / "04b_judge.jsonl")
    assert all(1 <= r["meta"]["judge"]["score"] <= 10 for r in judged)
    data = (tmp_path / "mix" / "data.json").read_text()
    again = Run(cfg, progress=False).execute()
    assert again["llm"]["requests"] == again["llm"]["cached"], "a finished run, rerun, pays nothing"
    assert first["llm"]["requests"] == again["llm"]["requests"]
    assert (tmp_path / "mix" / "data.json").read_text() == data
    card = (tmp_path / "mix" / "README.md").read_text()
    assert "## Funnel" in card and "| judge |" in card and "### Funnel per strategy" in card
    assert set(stats["by_strategy"]) == set(by)
    assert (
        sum(
            c["generate"]["kept"] + c["generate"]["rejected"] for c in stats["by_strategy"].values()
        )
        == (stats["stages"]["generate"]["total"])
    )
    from pipeline.report import write_report

    page = write_report([tmp_path / "mix"]).read_text()
    assert "Strategies and judge scores" in page and "<td>evol</td>" in page


@pytest.mark.slow
def test_oss_and_evol_code_problems_are_solved_and_verified(embedded_server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "tide.py").write_text(
        "def tide_height(hour, amplitude=1.5, period=12.4):\n"
        '    """Height of the tide in metres at ``hour`` after high water."""\n'
        "    import math\n"
        "    return amplitude * math.cos(2 * math.pi * hour / period)\n",
        encoding="utf-8",
    )
    (src / ".env").write_text("API_KEY=sk-live-abcdefghijklmnopqrstuvwx\n", encoding="utf-8")
    cfg = cfg_for(
        embedded_server,
        tmp_path,
        "oss",
        {
            "mode": "code",
            # Requests 0-3 of seed 42 under this mix: oss, oss, evol, evol.
            "strategy": {"oss": 1, "evol": 1},
            "num": 1,
            "code_rounds": 1,
            "code_overgenerate": 4,
            "num_candidates": 1,
            "oss": {"source": str(src)},
        },
    )
    Run(cfg, progress=False).execute()
    assert_books(tmp_path / "oss")
    recs = generated(tmp_path / "oss")
    assert {r["meta"]["strategy"] for r in recs} == {"oss", "evol"}
    code_seeds = {r["id"] for r in lines(tmp_path / "oss" / "00_seeds.jsonl") if r.get("tests")}
    for r in recs:
        if r["meta"]["strategy"] == "evol":
            assert r["meta"]["parent"] in code_seeds, "code mode evolves code problems"
            continue
        snip = r["meta"]["snippet"]
        assert snip["path"] == "tide.py", "the secret file is never a snippet source"
        assert 1 <= snip["end"] - snip["start"] + 1 <= 4
        assert snip["text"] in (src / "tide.py").read_text()
    solved = lines(tmp_path / "oss" / "03b_solve.jsonl") + lines(
        tmp_path / "oss" / "03b_solve.rejected.jsonl"
    )
    # Both kinds of problem reach tests and candidates, and verify runs what came back.
    assert solved and all(r["meta"]["strategy"] in ("oss", "evol") for r in solved)
    stats = json.loads((tmp_path / "oss" / "stats.json").read_text())
    assert stats["stages"]["verify"]["total"] == stats["stages"]["solve"]["kept"]
    assert set(stats["by_strategy"]) <= {"oss", "evol"}
