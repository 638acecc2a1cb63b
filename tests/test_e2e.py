"""End to end on the real embedded model server: general and code mode, and resume after a kill.

These start ``python -m pipeline generate`` as a user would (a subprocess that starts and stops
its own llama.cpp server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def generate_cmd(out: Path, *args: str) -> list[str]:
    """``python -m pipeline generate`` as a user runs it, writing runs under ``out``."""
    return [
        sys.executable,
        "-m",
        "pipeline",
        "generate",
        "--no-progress",
        "--set",
        f"output_dir={out}",
        # SmolLM2-135M: the fast embedded model; the shipped default has its own smoke test.
        "--set",
        "llm.embedded_model=smollm2-135m",
        *args,
    ]


def generate(out: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        generate_cmd(out, *args), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def lines(p: Path) -> list[dict]:
    raw = p.read_text(encoding="utf-8")
    assert raw == "" or raw.endswith("\n"), f"{p} ends in a torn line"
    return [json.loads(x) for x in raw.splitlines() if x]


def server_pids() -> set[int]:
    """PIDs of running llama.cpp servers started by this checkout's interpreter."""
    pids = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"llama_cpp.server" in cmd and cmd[0] == sys.executable.encode():
                pids.add(int(p.name))
    return pids


def check_run_dir(d: Path, stage_files: list[str]) -> dict:
    for name in [
        "config.yaml",
        "00_seeds.jsonl",
        *stage_files,
        "data.json",
        "messages.jsonl",
        "stats.json",
    ]:
        assert (d / name).exists(), f"missing {name}"
    for f in d.glob("*.jsonl"):
        lines(f)
    return json.loads((d / "stats.json").read_text())


def test_general_mode_on_the_embedded_model(tmp_path):
    r = generate(tmp_path, "--num", "3", "--run", "g")
    assert r.returncode == 0, r.stderr[-3000:]
    d = tmp_path / "g"
    stats = check_run_dir(
        d,
        [
            "01_generated.jsonl",
            "01_generated.rejected.jsonl",
            "02_dedup.jsonl",
            "02_dedup.rejected.jsonl",
            "03_filter.jsonl",
            "03_filter.rejected.jsonl",
        ],
    )
    data = json.loads((d / "data.json").read_text())
    assert len(data) >= 1
    assert all(
        r["instruction"].strip() and r["output"].strip() and isinstance(r["input"], str)
        for r in data
    )
    assert stats["llm"]["requests"] >= 1 and stats["llm"]["completion_tokens"] > 0
    assert stats["model"].startswith("SmolLM2")
    assert "stage" in r.stderr and "kept" in r.stderr, "the summary table is printed"
    # Every generated record is accounted for: kept downstream or rejected with a reason.
    gen = lines(d / "01_generated.jsonl")
    dd, dr = lines(d / "02_dedup.jsonl"), lines(d / "02_dedup.rejected.jsonl")
    assert len(dd) + len(dr) <= len(gen)
    assert all(x["reject"]["reason"] for x in dr + lines(d / "03_filter.rejected.jsonl"))


def test_code_mode_on_the_embedded_model(tmp_path):
    r = generate(
        tmp_path,
        "--mode",
        "code",
        "--num",
        "1",
        "--run",
        "c",
        "--set",
        "generation.code_rounds=1",
        "--set",
        "generation.code_overgenerate=4",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    d = tmp_path / "c"
    stats = check_run_dir(
        d,
        [
            "01_generated.jsonl",
            "02_dedup.jsonl",
            "03_filter.jsonl",
            "04_verify.jsonl",
            "04_verify.rejected.jsonl",
        ],
    )
    v = stats["stages"]["verify"]
    assert v["extra"]["candidates_run"] >= 1, "candidates ran in the sandbox"
    assert v["total"] == v["kept"] + v["rejected"]
    for rec in lines(d / "04_verify.jsonl"):
        i = rec["verification"]["passed_index"]
        assert rec["output"] == rec["candidates"][i]
        assert rec["verification"]["statuses"][i]["status"] == "passed"
    for rec in lines(d / "04_verify.rejected.jsonl"):
        assert rec["reject"]["reason"]


def test_killed_run_resumes_without_paying_twice(tmp_path):
    cmd = generate_cmd(
        tmp_path, "--no-report", "--num", "4", "--run", "k", "--set", "llm.concurrency=2"
    )
    cache = tmp_path / "k" / "cache" / "responses.jsonl"
    before = server_pids()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if cache.exists() and cache.read_text().count("\n") >= 2:
                break
            if proc.poll() is not None:
                pytest.fail(
                    f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
                )
            time.sleep(0.2)
        else:
            pytest.fail("no answer was cached in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its llama.cpp server, mid-flight
        proc.wait()
    # The run's llama.cpp server (its own session, so killpg did not reach it) dies with it.
    deadline = time.monotonic() + 10
    while (left := server_pids() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"the killed run left its model server running: {left}"
    answered = cache.read_text().count("\n")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = check_run_dir(
        tmp_path / "k", ["01_generated.jsonl", "02_dedup.jsonl", "03_filter.jsonl"]
    )
    assert stats["llm"]["cached"] >= answered, (
        "answers from before the kill are replayed, not paid again"
    )
    ids = [x["id"] for x in lines(tmp_path / "k" / "03_filter.jsonl")]
    assert len(ids) == len(set(ids))
    assert len(json.loads((tmp_path / "k" / "data.json").read_text())) == 4
