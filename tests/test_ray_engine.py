"""The Ray engine on a real multi-node Ray cluster in this machine (``ray.cluster_utils.Cluster``:
a head and two worker nodes, started once for the module), against the local engine side by
side: the same config and the same answers give the same stage files and ``data.json``, byte for
byte; a worker node lost during verify changes nothing; a driver killed with -9 and rerun pays
no answer twice; ``pipeline dedup`` decides as rouge_score and as the local engine.

Answers come from deterministic fake endpoints (the answer and its id are functions of the
request alone, so two runs get the same answers) and, for one small run, from the real
embedded server through the response cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the Ray engine's tests need `pip install -e '.[ray]'`")

from pipeline.cli import main  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.run import Run  # noqa: E402
from tests.fake_openai import FakeOpenAI, Reply, completion_body  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT.parent / "shared" / "bench"
WORDS = (
    "volcano tax chess bread train penguin solar castle jazz tide typewriter marathon glacier "
    "violin harbor comet lantern orchard bicycle canyon falcon meadow quartz tundra ferry pepper "
    "saddle compass walnut beacon cellar dragon ember fossil garnet hammock island jungle kettle "
    "lagoon magnet nectar oasis parrot quiver ribbon summit tablet umbrella vessel willow yarn"
).split()


@pytest.fixture(scope="module")
def cluster():
    """A head (1 CPU) and two worker nodes (2 CPUs each) on this machine."""
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    c.add_node(num_cpus=2)
    c.add_node(num_cpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


# -- deterministic endpoints -------------------------------------------------------------------
def _digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _reply(text: str, body: dict, delay: float = 0.0) -> Reply:
    out = completion_body(text, chat=True)
    out["id"] = f"fake-{_digest(body)[:16]}"  # the same request, the same id, on every run
    return Reply(body=out, delay=delay)


def general_script(delay: float = 0.0):
    def script(body: dict, n: int) -> Reply:
        prompt = body["messages"][0]["content"]
        rng = random.Random(_digest(body))
        if "numbered Task" not in prompt:  # an answer request (answer_mode=chat)
            return _reply(f"The {' and the '.join(rng.sample(WORDS, 3))}.", body, delay)
        first = int(re.search(r"numbered Task (\d+)", prompt).group(1))
        tasks = []
        for j in range(3):
            w = rng.sample(WORDS, 8)
            verb = rng.choice(["Describe", "Compare", "Explain", "List facts about"])
            # One task in three repeats an earlier one: the dedup stage has work to do.
            if j == 2 and rng.random() < 0.5:
                w = WORDS[:8]
            tasks.append(
                f"Task {first + j}\nInstruction: {verb} {' '.join(w[:6])}.\nInput: <none>\n"
                f"Output: The {w[6]} and the {w[7]} share a long and surprising history."
            )
        return _reply("\n\n".join(tasks), body, delay)

    return script


def code_script(body: dict, n: int) -> Reply:
    prompt = body["messages"][0]["content"]
    rng = random.Random(_digest(body))
    if "programming problems" in prompt:
        first = int(re.search(r"numbered Problem (\d+)", prompt).group(1))
        items = []
        for j in range(2):
            k = rng.randint(1, 999)
            topic = " ".join(rng.sample(WORDS, 9))
            items.append(
                f"Problem {first + j}\nInstruction: Write a Python function `add_{k}(x)` that "
                f"returns x plus {k}, used by the {topic} report."
            )
        return _reply("\n\n".join(items), body)
    k = int(re.findall(r"add_(\d+)", prompt)[-1])
    if "Write unit tests" in prompt:
        tests = f"assert add_{k}(1) == {1 + k}\nassert add_{k}(-3) == {k - 3}\n"
        return _reply(f"```python\n{tests}```", body)
    right = rng.random() < 0.6
    # Each candidate takes a moment, so that a node can be lost while verify is busy.
    code = f"import time\n\ndef add_{k}(x):\n    time.sleep(0.15)\n    return x + {k if right else k + 1}\n"
    return _reply(f"```python\n{code}```", body)


# -- helpers -------------------------------------------------------------------------------------
def seeds_file(tmp_path: Path) -> Path:
    p = tmp_path / "seeds.jsonl"
    rows = [
        {
            "id": f"s{i}",
            "instruction": f"Explain how a {w} works to a child.",
            "instances": [{"input": "", "output": f"A {w} is a clever thing."}],
        }
        for i, w in enumerate(WORDS[:6])
    ]
    rows.append(
        {
            "id": "c0",
            "name": "add",
            "instruction": "Write a Python function `add(a, b)` that returns a + b.",
            "instances": [{"input": "", "output": "def add(a, b):\n    return a + b\n"}],
            "language": "python",
            "tests": "assert add(1, 2) == 3\n",
        }
    )
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def config(out: Path, urls: list[str], seeds: Path, engine: dict, **gen):
    return load_config(
        None,
        None,
        {
            "run": "r",
            "output_dir": str(out),
            "llm": {"base_urls": urls, "api": "chat", "concurrency": 4, "max_retries": 2},
            "generation": {"seeds_path": str(seeds), "num_prompt_tasks": 2, **gen},
            "engine": engine,
        },
    )


def ray_engine(cluster, **kw) -> dict:
    return {"kind": "ray", "address": cluster.address, **kw}


def run_files(run_dir: Path) -> dict[str, bytes]:
    """Every stage file and the exports (not stats.json, config.yaml or the cache)."""
    names = sorted(p.name for p in run_dir.glob("*.jsonl")) + ["data.json"]
    return {n: (run_dir / n).read_bytes() for n in names}


def assert_same_files(a: Path, b: Path) -> dict[str, bytes]:
    fa, fb = run_files(a), run_files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], f"{name} differs between the engines"
    return fa


# -- the tests ------------------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_general_run_same_files_on_both_engines_over_two_endpoints(cluster, tmp_path):
    seeds = seeds_file(tmp_path)
    gen = {"num": 24, "tasks_per_request": 3, "round_size": 4, "answer_mode": "chat"}
    with FakeOpenAI(general_script()) as e1, FakeOpenAI(general_script()) as e2:
        urls = [e1.base_url, e2.base_url]
        local = Run(config(tmp_path / "local", urls, seeds, {}, **gen), progress=False).execute()
        cfg = config(tmp_path / "ray", urls, seeds, ray_engine(cluster, client_actors=2), **gen)
        st = Run(cfg, progress=False).execute()
        assert e1.requests and e2.requests, "both endpoints answered"
    files = assert_same_files(tmp_path / "local" / "r", tmp_path / "ray" / "r")
    assert st["books"] == local["books"] == "balanced"
    assert st["llm"]["requests"] == local["llm"]["requests"] and st["llm"]["cached"] == 0
    assert st["stages"]["dedup"]["dropped"].get("rouge_duplicate", 0) >= 1
    assert st["stages"]["answer"]["kept"] >= 1
    assert len(json.loads(files["data.json"])) == 24
    cached = list((tmp_path / "ray" / "r" / "cache" / "responses").glob("*/*.json"))
    assert len(cached) == st["llm"]["requests"], "every answer is in the shared cache"


@pytest.mark.timeout(240)
def test_code_run_same_files_and_a_worker_node_lost_during_verify(cluster, tmp_path, caplog):
    from stages import execution

    if execution.check_sandbox() is not None:
        pytest.skip(f"no sandbox here: {execution.check_sandbox()}")
    seeds = seeds_file(tmp_path)
    gen = {"mode": "code", "num": 10, "num_candidates": 3, "code_rounds": 1, "tasks_per_request": 2}
    verify = {"batch": 2, "workers": 1, "selection": "first_pass"}
    with FakeOpenAI(code_script) as srv:
        lcfg = config(tmp_path / "local", [srv.base_url], seeds, {}, **gen)
        lcfg.verify = type(lcfg.verify)(**{**lcfg.verify.__dict__, **verify})
        local = Run(lcfg, progress=False).execute()
        rcfg = config(tmp_path / "ray", [srv.base_url], seeds, ray_engine(cluster), **gen)
        rcfg.verify = lcfg.verify
        run = Run(rcfg, progress=False)
        result: dict = {}
        caplog.set_level("WARNING", logger="pipeline.engine")
        t = threading.Thread(target=lambda: result.update(run.execute()), daemon=True)
        t.start()
        verified = tmp_path / "ray" / "r" / "04_verify.rejected.jsonl"
        deadline = time.monotonic() + 120
        nodes: list[str] = []
        while time.monotonic() < deadline and t.is_alive():
            engine = getattr(run, "engine", None)
            nodes = engine.verify_nodes() if engine is not None else []
            kept = tmp_path / "ray" / "r" / "04_verify.jsonl"
            if (
                nodes
                and (verified.exists() or kept.exists())
                and (kept.stat().st_size if kept.exists() else 0)
                + (verified.stat().st_size if verified.exists() else 0)
            ):
                break
            time.sleep(0.05)
        victims = [w for w in cluster.worker_nodes if w.node_id in nodes]
        assert victims, f"no sandbox actor on a worker node (actors on {nodes})"
        cluster.remove_node(victims[0])
        t.join(timeout=180)
        assert not t.is_alive(), "the run did not finish after the node was lost"
        cluster.add_node(num_cpus=2)  # the module's later tests get their two workers back
    assert any("resubmitting" in r.getMessage() for r in caplog.records), (
        "no batch was lost with the node: the test proved nothing"
    )
    assert result["books"] == local["books"] == "balanced"
    files = assert_same_files(tmp_path / "local" / "r", tmp_path / "ray" / "r")
    assert result["stages"]["verify"]["extra"] == local["stages"]["verify"]["extra"]
    assert result["stages"]["verify"]["total"] >= 4
    assert files["04_verify.jsonl"], "some problem was verified"


@pytest.mark.timeout(120)
def test_a_refused_key_on_a_client_actor_ends_the_run_with_the_local_message(
    cluster, tmp_path, monkeypatch
):
    from pipeline.errors import LLMFatalError

    secret = "sk-live-abcdefghijklmnopqrstuvwxyz012345"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    refuse = lambda b, n: Reply(status=401, body={"error": {"message": f"bad key {secret}"}})  # noqa: E731
    with FakeOpenAI(refuse) as srv:
        cfg = config(tmp_path, [srv.base_url], seeds_file(tmp_path), ray_engine(cluster), num=2)
        with pytest.raises(LLMFatalError, match="refused the API key") as err:
            Run(cfg, progress=False).execute()
        assert srv.requests[0][1].get("authorization") == f"Bearer {secret}"
    assert secret not in str(err.value)
    assert json.loads((tmp_path / "r" / "data.json").read_text()) == []


@pytest.mark.timeout(240)
def test_driver_killed_with_minus_9_and_rerun_pays_no_answer_twice(cluster, tmp_path):
    seeds = seeds_file(tmp_path)
    args = [
        "--set", f"generation.seeds_path={seeds}", "--set", "generation.num=30",
        "--set", "generation.tasks_per_request=3", "--set", "generation.num_prompt_tasks=2",
        "--set", "llm.api=chat", "--set", "llm.concurrency=2", "--set", "generation.round_size=4",
        "--set", "generation.answer_mode=inline", "--set", "engine.kind=ray",
        "--set", f"engine.address={cluster.address}", "--set", "engine.request_chunk=2",
    ]  # fmt: skip

    def cmd(out: Path, url: str) -> list[str]:
        base = [sys.executable, "-m", "pipeline", "generate", "--no-progress", "--no-report"]
        return (
            base
            + ["--run", "k", "--set", f"output_dir={out}", "--set", f"llm.base_url={url}"]
            + args
        )

    env = {**os.environ, "OPENAI_API_KEY": "test-key"}
    with FakeOpenAI(general_script(delay=0.1)) as ref:
        r = subprocess.run(
            cmd(tmp_path / "a", ref.base_url), cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=180,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
    uninterrupted = len(ref.requests)
    assert uninterrupted >= 8

    cache = tmp_path / "b" / "k" / "cache" / "responses"
    with FakeOpenAI(general_script(delay=0.1)) as srv:
        proc = subprocess.Popen(
            cmd(tmp_path / "b", srv.base_url), cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        try:
            while len(list(cache.glob("*/*.json"))) < 4:
                assert proc.poll() is None, (
                    f"the run ended before the kill: {proc.stderr.read()[-2000:]}"
                )
                assert time.monotonic() < deadline, "no answer was cached in time"
                time.sleep(0.02)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        time.sleep(1.0)  # let the killed job's actors go
        paid_before = {p.stem for p in cache.glob("*/*.json")}
        sent_before = len(srv.requests)
        assert sent_before < uninterrupted, "the kill came before the run was done"
        r = subprocess.run(
            cmd(tmp_path / "b", srv.base_url), cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=180,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        sent_after = len(srv.requests) - sent_before
    # Every answer cached before the kill is replayed; every other one is asked for once.
    assert sent_after == uninterrupted - len(paid_before)
    stats = json.loads((tmp_path / "b" / "k" / "stats.json").read_text())
    assert stats["books"] == "balanced"
    assert stats["llm"]["cached"] == len(paid_before)
    ids = [r["id"] for r in map(json.loads, (tmp_path / "b" / "k" / "01_generated.jsonl").open())]
    assert len(ids) == len(set(ids)), "no duplicate ids after the resume"
    assert (tmp_path / "a" / "k" / "data.json").read_bytes() == (
        tmp_path / "b" / "k" / "data.json"
    ).read_bytes()


@pytest.mark.timeout(240)
def test_dedup_command_on_ray_decides_as_rouge_score_and_the_local_engine(cluster, tmp_path):
    ref_path, corpus = BENCH / "dedup_ref_public_3000.json", BENCH / "instructions_25k.jsonl"
    if not ref_path.exists() or not corpus.exists():
        pytest.skip(f"{BENCH}: shared benchmark data not present")
    ref = json.loads(ref_path.read_text())
    head = tmp_path / "head.jsonl"
    with open(corpus, encoding="utf-8") as f, open(head, "w", encoding="utf-8") as out:
        for _ in range(ref["n"]):
            out.write(f.readline())
    ray_set = ["--set", "engine.kind=ray", "--set", f"engine.address={cluster.address}"]
    small = ["--set", "engine.dedup_block=700", "--set", "engine.dedup_partition=1000"]
    assert main(["dedup", str(head), "-o", str(tmp_path / "ray3k.jsonl"), *ray_set, *small]) == 0
    kept = {json.loads(x)["id"] for x in (tmp_path / "ray3k.jsonl").open()}
    assert [d["id"] for d in ref["decisions"] if (d["id"] in kept) != d["keep"]] == []
    assert len(kept) == ref["kept"]

    # The local engine on the same input: the same kept file and the same rejects (nearest id
    # and score included). The whole 25k corpus is compared in benchmarks/bench_scale.py.
    assert main(["dedup", str(head), "-o", str(tmp_path / "local3k.jsonl")]) == 0
    for name in ("{}3k.jsonl", "{}3k.rejected.jsonl"):
        a = (tmp_path / name.format("local")).read_bytes()
        b = (tmp_path / name.format("ray")).read_bytes()
        assert a == b, name
    assert b.count(b"\n") == ref["n"] - ref["kept"]


def dedup_rows() -> list[dict]:
    """Near-duplicates of a few templates, with the cases the write-back must name: a record
    without an id (its id is its index) and one with a list id, each the nearest of a later
    duplicate, a missing and a non-string field, and texts the ``against`` file drops."""
    rng = random.Random(5)
    rows: list[dict] = []
    for k in range(60):
        words = rng.sample(WORDS, 9) if k % 3 == 0 else rows[k - 1]["instruction"].split()
        if k % 3:
            words[rng.randrange(len(words))] = rng.choice(WORDS)  # one word edited
        rows.append({"id": f"r{k}", "instruction": " ".join(words)})
    del rows[30]["id"]
    rows[33]["id"] = ["list", 33]
    rows[10] = {"id": "no-field", "output": "x"}
    rows[20]["instruction"] = 7
    return rows


@pytest.mark.timeout(180)
def test_dedup_command_on_ray_reads_the_input_twice_instead_of_holding_it(
    cluster, tmp_path, monkeypatch
):
    import pipeline.records as records_mod

    rows = dedup_rows()
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    against = tmp_path / "against.jsonl"
    against.write_text(json.dumps({"id": "a0", "instruction": rows[40]["instruction"]}) + "\n")
    opened: list[str] = []
    read_records = records_mod.read_records

    def counting(path):
        opened.append(Path(path).name)
        return read_records(path)

    monkeypatch.setattr(records_mod, "read_records", counting)
    cmd = ["dedup", str(inp), "--against", str(against), "-o"]
    ray_set = ["--set", "engine.kind=ray", "--set", f"engine.address={cluster.address}"]
    small = ["--set", "engine.dedup_block=7", "--set", "engine.dedup_partition=10"]
    assert main([*cmd, str(tmp_path / "ray.jsonl"), *ray_set, *small]) == 0
    # The input twice (the texts out to the cluster, then the write-back), `against` once.
    assert opened == ["against.jsonl", "in.jsonl", "in.jsonl"]
    opened.clear()
    assert main([*cmd, str(tmp_path / "local.jsonl")]) == 0
    assert opened == ["against.jsonl", "in.jsonl"]
    for name in ("{}.jsonl", "{}.rejected.jsonl"):
        a = (tmp_path / name.format("local")).read_bytes()
        assert a == (tmp_path / name.format("ray")).read_bytes(), name
    rejects = {json.dumps(r.get("id")): r["reject"] for r in map(json.loads, a.splitlines())}
    assert rejects['"no-field"']["reason"] == rejects['"r20"']["reason"] == "missing_field"
    assert rejects['"r31"']["nearest_id"] == 30  # the index of the record without an id
    assert rejects['"r34"']["nearest_id"] == ["list", 33]
    assert rejects['"r40"'] == {
        "stage": "dedup",
        "reason": "rouge_duplicate",
        "nearest_id": "a0",
        "score": 1.0,
        "nearest_against": True,
    }


@pytest.mark.timeout(180)
def test_dedup_on_ray_same_output_from_a_list_a_generator_and_a_file(cluster, tmp_path):
    """A re-iterable is read twice and not held; a one-shot generator is read into a list
    first; the records and rejects written are the same either way."""
    from pipeline.engine import RayEngine
    from pipeline.records import RecordFile
    from stages.base import StageStats

    rows = dedup_rows()
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = load_config(
        None, None, {"engine": ray_engine(cluster, dedup_block=7, dedup_partition=10)}
    )
    engine = RayEngine(cfg.engine)
    against = [{"id": "a0", "instruction": rows[40]["instruction"]}]

    def dedup(records) -> list:
        out: list = []
        st = StageStats("dedup", sink=out.append, kept_sink=out.append)
        for _ in engine.dedup(records, cfg.dedup, st, against=against):
            pass
        assert st.balance_error() is None
        return out

    from_list = dedup(rows)
    assert sum("reject" in r for r in from_list) > 20
    assert dedup(r for r in rows) == from_list
    from_file = RecordFile(inp)
    assert dedup(from_file) == from_list
    assert from_file.passes == 2

    class Growing:
        """A re-iterable whose second pass has one record more (a file appended to)."""

        def __init__(self):
            self.passes = 0

        def __iter__(self):
            self.passes += 1
            return iter(rows + [{"id": "new", "instruction": "x"}] * (self.passes - 1))

    with pytest.raises(RuntimeError, match="second pass"):
        dedup(Growing())

    # Joined fields (ingest's instruction+output) are the local engine's texts too.
    from pipeline.engine import LocalEngine

    joined = dataclasses.replace(cfg.dedup, field="instruction+output")
    qa = [{**r, "output": f"answer {k % 4}"} for k, r in enumerate(rows)]
    got = {}
    for name, eng in (("local", LocalEngine()), ("ray", engine)):
        out: list = []
        st = StageStats("dedup", sink=out.append, kept_sink=out.append)
        for _ in eng.dedup(qa, joined, st):
            pass
        got[name] = out
    assert got["ray"] == got["local"]
    assert sum(r.get("reject", {}).get("reason") == "rouge_duplicate" for r in got["ray"]) > 10


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_embedded_server_run_replays_on_ray_from_the_local_journal(
    cluster, embedded_server, tmp_path
):
    """A small real run on the local engine (answers journaled in cache/responses.jsonl), then
    the same command on the Ray engine: it pays nothing and writes the same files."""
    seeds = seeds_file(tmp_path)
    data = {
        "run": "e",
        "output_dir": str(tmp_path / "local"),
        "llm": {
            "base_url": embedded_server.base_url,
            "model": embedded_server.model_name,
            "api": "completion",
        },
        "generation": {
            "num": 2,
            "seeds_path": str(seeds),
            "answer_mode": "inline",
            "max_tokens": 256,
            "round_size": 2,
        },
    }
    cfg = load_config(str(ROOT / "configs" / "general.yaml"), None, data)
    first = Run(cfg, progress=False).execute()
    assert first["llm"]["requests"] > first["llm"]["cached"]
    again = Run(cfg, progress=False).execute()  # everything from the cache: the reference
    assert again["llm"]["requests"] == again["llm"]["cached"]
    shutil.copytree(tmp_path / "local", tmp_path / "ray")
    data["output_dir"] = str(tmp_path / "ray")
    data["engine"] = ray_engine(cluster)
    st = Run(
        load_config(str(ROOT / "configs" / "general.yaml"), None, data), progress=False
    ).execute()
    assert st["llm"]["requests"] == st["llm"]["cached"] == again["llm"]["requests"]
    assert st["books"] == "balanced"
    assert_same_files(tmp_path / "local" / "e", tmp_path / "ray" / "e")


def qa_script(body: dict, n: int) -> Reply:
    """Grounded QA pairs about whichever document the request shows (chat endpoint)."""
    prompt = body["messages"][0]["content"]
    word = "crabs" if "crabs" in prompt else "tides"
    return _reply(
        f"Question 1: What does the project count?\nAnswer: It counts the {word}.\n\n"
        f"Question 2: Where are the {word} counted?\nAnswer: The {word} are counted in a rock pool.",
        body,
    )


@pytest.mark.timeout(180)
def test_ingest_same_files_on_both_engines(cluster, tmp_path):
    from pipeline.cli import main

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("# Pool\n\nThe project counts the crabs in a rock pool.\n")
    (repo / "NOTES.md").write_text("# Notes\n\nThe tides are counted in a rock pool each day.\n")
    with FakeOpenAI(qa_script) as srv:
        for name, extra in (
            ("local", []),
            ("ray", ["--set", "engine.kind=ray", "--set", f"engine.address={cluster.address}"]),
        ):
            rc = main(
                ["ingest", str(repo), "--run", "i", "--set", f"output_dir={tmp_path / name}",
                 "--set", f"llm.base_url={srv.base_url}", "--set", "llm.api=chat", *extra]
            )  # fmt: skip
            assert rc == 0
    assert_same_files(tmp_path / "local" / "i", tmp_path / "ray" / "i")
    st = json.loads((tmp_path / "ray" / "i" / "stats.json").read_text())
    assert st["books"] == "balanced" and st["stages"]["filter"]["kept"] >= 2
