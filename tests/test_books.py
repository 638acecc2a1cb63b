"""The books balance: for every stage of general, code and ingest runs on the real embedded
model server, ``stats.json`` counts equal the lines of the stage's kept and rejected files, and
every record that entered the stage is in exactly one of them. A rerun of a finished run makes
no request; a run killed with -9 and resumed makes no request the uninterrupted run would not.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.run import Run
from pipeline.rundir import EXPORT_KEPT, layout_for
from tests.fake_openai import FakeOpenAI, Reply, completion_body

ROOT = Path(__file__).resolve().parent.parent


def lines(p: Path) -> list[dict]:
    if not p.exists():
        return []
    raw = p.read_text(encoding="utf-8")
    assert raw == "" or raw.endswith("\n"), f"{p} ends in a torn line"
    return [json.loads(x) for x in raw.splitlines() if x.strip()]


def upstream(mode: str, stage: str, kept: dict[str, list[dict]]) -> list[dict] | None:
    """The records that entered ``stage`` (from the kept files upstream); None for a stage where
    records are born (generation)."""
    if mode == "ingest":
        gen = kept["generate"]
        return {
            "ground": [r for r in gen if r["meta"].get("kind") == "qa"],
            "dedup": kept.get("ground"),
            "filter": (kept.get("dedup") or []) + [r for r in gen if r["meta"].get("kind") != "qa"],
            "export": kept.get("filter"),
        }.get(stage)
    order = [s for s in layout_for(mode) if s in kept or s == "export"]
    i = order.index(stage)
    return None if stage == "generate" else kept[order[i - 1]]


def assert_books(run_dir: Path) -> dict:
    stats = json.loads((run_dir / "stats.json").read_text())
    mode = stats["mode"]
    assert stats["books"] == "balanced"
    layout = layout_for(mode)
    kept: dict[str, list[dict]] = {}
    for stage, s in stats["stages"].items():
        if stage not in layout or stage == "seeds":
            continue
        stem = layout[stage]
        if stage == "export":
            k = [r for f in EXPORT_KEPT for r in lines(run_dir / f)]
        else:
            k = lines(run_dir / f"{stem}.jsonl")
        rej = lines(run_dir / f"{stem}.rejected.jsonl")
        kept[stage] = k
        assert (len(k), len(rej)) == (s["kept"], s["rejected"]), stage
        assert s["total"] == s["kept"] + s["rejected"], stage
        assert all(r["reject"]["reason"] and r["reject"]["stage"] == stage for r in rej), stage
        left = Counter(r["id"] for r in k + rej)
        assert all(n == 1 for n in left.values()), f"{stage}: an id left twice"
        entered = upstream(mode, stage, kept)
        if entered is not None:
            assert Counter(r["id"] for r in entered) == left, (
                f"{stage}: the ids that left are not the ids that entered"
            )
            assert s["entered"] == len(entered), stage
    assert stats["kept"] == stats["stages"]["export"]["kept"]
    assert len(json.loads((run_dir / "data.json").read_text())) == len(
        lines(run_dir / "messages.jsonl")
    )
    return stats


def embedded_cfg(srv, tmp_path: Path, run: str, **sections):
    """A run on the shared real embedded server, configured as the pipeline configures its own
    (completion few-shot prompts, answers asked in chat)."""
    data = {
        "run": run,
        "output_dir": str(tmp_path),
        "llm": {"base_url": srv.base_url, "model": srv.model_name, "api": "completion"},
        "generation": {"answer_mode": "chat"},
    }
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return load_config(
        str(ROOT / "configs" / f"{data['generation'].get('mode', 'general')}.yaml"), None, data
    )


@pytest.mark.slow
def test_general_run_books_balance_and_a_rerun_pays_nothing(embedded_server, tmp_path):
    cfg = embedded_cfg(
        embedded_server,
        tmp_path,
        "g",
        generation={"num": 4, "seeds_path": str(ROOT / "seed_tasks.jsonl")},
    )
    first = Run(cfg, progress=False).execute()
    assert first["llm"]["requests"] > first["llm"]["cached"] >= 0
    stats = assert_books(tmp_path / "g")
    assert set(stats["stages"]) >= {"generate", "dedup", "answer", "filter", "export"}
    data = (tmp_path / "g" / "data.json").read_text()

    again = Run(cfg, progress=False).execute()
    assert again["llm"]["requests"] == again["llm"]["cached"], "a finished run, rerun, pays nothing"
    assert_books(tmp_path / "g")
    assert (tmp_path / "g" / "data.json").read_text() == data


@pytest.mark.slow
def test_code_run_books_balance(embedded_server, tmp_path):
    cfg = embedded_cfg(
        embedded_server,
        tmp_path,
        "c",
        generation={
            "mode": "code",
            "num": 1,
            "code_rounds": 1,
            "code_overgenerate": 3,
            "num_candidates": 2,
            "seeds_path": str(ROOT / "seed_tasks.jsonl"),
        },
    )
    Run(cfg, progress=False).execute()
    stats = assert_books(tmp_path / "c")
    assert set(stats["stages"]) >= {"generate", "dedup", "filter", "solve", "verify", "export"}
    assert stats["stages"]["verify"]["extra"]["candidates_run"] >= 1


@pytest.mark.slow
def test_ingest_run_books_balance(embedded_server, tmp_path):
    from pipeline.cli import main

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text(
        "# Tidepool\n\nTidepool counts the crabs in a rock pool at low tide. Run `tidepool count`"
        " to print the number of crabs seen in the last survey.\n",
        encoding="utf-8",
    )
    (repo / "count.py").write_text(
        'def count(crabs):\n    """Number of crabs longer than 2 cm."""\n'
        "    return sum(1 for c in crabs if c > 2)\n",
        encoding="utf-8",
    )
    (repo / ".env").write_text("API_KEY=sk-live-abcdefghijklmnopqrstuvwx\n", encoding="utf-8")
    rc = main(
        [
            "ingest",
            str(repo),
            "--run",
            "i",
            "--set",
            f"output_dir={tmp_path}",
            "--set",
            f"llm.base_url={embedded_server.base_url}",
            "--set",
            "llm.api=completion",
            "--set",
            "ingest.qa_per_doc=2",
        ]
    )
    assert rc == 0
    stats = assert_books(tmp_path / "i")
    assert set(stats["stages"]) >= {"generate", "ground", "dedup", "filter", "export"}


# -- kill -9 and resume, against a deterministic endpoint --------------------------------------
WORDS = (
    "volcano tax chess bread train penguin solar castle jazz tide typewriter marathon glacier "
    "violin harbor comet lantern orchard bicycle canyon falcon meadow quartz tundra ferry pepper "
    "saddle compass walnut beacon cellar dragon ember fossil garnet hammock island jungle kettle"
).split()


def by_content(body: dict, n: int) -> Reply:
    """Answers that depend on the request alone (never on arrival order), slowly enough to kill
    a run mid-way: the same request always gets the same answer, as from a cache."""
    key = json.dumps(body.get("messages") or body.get("prompt"), sort_keys=True)
    rng = random.Random(hashlib.sha256(key.encode()).hexdigest())
    tasks = []
    for j in range(3):
        w = rng.sample(WORDS, 6)
        tasks.append(
            f"Task {j + 3}\nInstruction: Describe {' '.join(w[:4])} in one paragraph.\n"
            f"Input: <none>\nOutput: The {w[4]} and the {w[5]} have a long shared history."
        )
    return Reply(body=completion_body("\n\n".join(tasks), chat=True), delay=0.15)


def request_keys(srv: FakeOpenAI) -> Counter:
    return Counter(json.dumps(body, sort_keys=True) for _, _, body in srv.requests)


def test_killed_run_makes_no_request_the_uninterrupted_run_would_not(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"s{i}",
                    "instruction": f"Explain how a {w} works to a child.",
                    "instances": [{"input": "", "output": f"A {w} is a clever thing."}],
                }
            )
            + "\n"
            for i, w in enumerate(WORDS[:6])
        )
    )
    args = [
        "--set", f"generation.seeds_path={seeds}", "--set", "generation.num=30",
        "--set", "generation.tasks_per_request=3", "--set", "llm.api=chat",
        "--set", "llm.concurrency=3", "--set", "generation.round_size=4",
    ]  # fmt: skip

    def cmd(out: Path, url: str) -> list[str]:
        base = [sys.executable, "-m", "pipeline", "generate", "--no-progress", "--no-report"]
        return base + [
            "--run",
            "k",
            "--set",
            f"output_dir={out}",
            "--set",
            f"llm.base_url={url}",
            *args,
        ]

    env = {**os.environ, "OPENAI_API_KEY": "test-key"}
    with FakeOpenAI(by_content) as ref:
        r = subprocess.run(
            cmd(tmp_path / "a", ref.base_url),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
    uninterrupted = request_keys(ref)
    assert len(uninterrupted) >= 6

    with FakeOpenAI(by_content) as srv:
        cache = tmp_path / "b" / "k" / "cache" / "responses.jsonl"
        proc = subprocess.Popen(
            cmd(tmp_path / "b", srv.base_url), cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        try:
            while not (cache.exists() and cache.read_text().count("\n") >= 4):
                assert proc.poll() is None, (
                    f"the run ended before the kill: {proc.stderr.read()[-2000:]}"
                )
                assert time.monotonic() < deadline, "no answer was cached in time"
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        before_resume = len(srv.requests)
        r = subprocess.run(
            cmd(tmp_path / "b", srv.base_url),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        made = request_keys(srv)
    assert before_resume < len(uninterrupted), "the kill came before the run was done"
    assert set(made) <= set(uninterrupted), "the resumed run asked for something new"
    assert set(made) == set(uninterrupted)
    assert (tmp_path / "a" / "k" / "data.json").read_text() == (
        tmp_path / "b" / "k" / "data.json"
    ).read_text()
    assert_books(tmp_path / "b" / "k")
