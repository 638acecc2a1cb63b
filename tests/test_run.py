"""The whole run against the fake endpoint: every stage file, stats, resume from the cache,
truncated and garbage replies as rejects, and a bad key that ends the run without leaking."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.run import Run
from tests.fake_openai import FakeOpenAI, Reply, completion_body

SEEDS = [
    {
        "id": "s0",
        "name": "tips",
        "instruction": "Give three tips for keeping houseplants alive.",
        "instances": [
            {"input": "", "output": "Water when the soil is dry, give enough light, use drainage."}
        ],
        "is_classification": False,
    },
    {
        "id": "s1",
        "name": "sentiment",
        "instruction": "Classify the sentiment of the review as positive or negative.",
        "instances": [{"input": "The battery died after two days.", "output": "negative"}],
        "is_classification": True,
    },
    {
        "id": "s2",
        "name": "sky",
        "instruction": "Explain why the sky looks blue during the day.",
        "instances": [
            {"input": "", "output": "Air scatters short blue wavelengths more than red ones."}
        ],
        "is_classification": False,
    },
]

WORDS = (
    "volcano tax chess bread train penguin solar castle jazz tide typewriter marathon glacier violin "
    "harbor comet lantern orchard bicycle canyon falcon meadow quartz tundra ferry pepper saddle "
    "compass walnut beacon cellar dragon ember fossil garnet hammock island jungle kettle lagoon "
    "magnet nectar oasis parrot quiver ribbon summit tablet umbrella vessel willow yarn zephyr"
).split()


def varied_reply(body: dict, n: int) -> Reply:
    """Three distinct tasks per request (distinct enough to survive dedup), chat format."""
    prompt = body["messages"][0]["content"]
    first = int(re.search(r"numbered Task (\d+)", prompt).group(1))
    tasks = []
    for j in range(3):
        rng = random.Random(f"{n}-{j}")
        words = rng.sample(WORDS, 7)
        verb = rng.choice(["Describe", "Compare", "Explain", "List facts about", "Write a poem on"])
        tasks.append(
            f"Task {first + j}\nInstruction: {verb} {' '.join(words[:5])}.\nInput: <none>\nOutput: The {words[5]} and the {words[6]} share a long history with many surprising turns."
        )
    return Reply(
        body=completion_body(
            "\n\n".join(tasks), chat=True, prompt_tokens=100, completion_tokens=150
        )
    )


@pytest.fixture
def seeds_file(tmp_path: Path) -> Path:
    p = tmp_path / "seeds.jsonl"
    p.write_text("".join(json.dumps(s) + "\n" for s in SEEDS), encoding="utf-8")
    return p


def config(tmp_path: Path, url: str, seeds: Path, **gen):
    return load_config(
        None,
        None,
        {
            "run": "t",
            "output_dir": str(tmp_path / "out"),
            "llm": {
                "base_url": url,
                "api": "chat",
                "concurrency": 4,
                "max_retries": 2,
                "backoff_max": 0.05,
            },
            "generation": {
                "seeds_path": str(seeds),
                "num": 6,
                "num_prompt_tasks": 2,
                "tasks_per_request": 3,
                **gen,
            },
        },
    )


def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]


@pytest.mark.slow
def test_general_run_on_the_embedded_server_writes_every_stage_file(embedded_server, tmp_path):
    import datasets

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(
        str(root / "configs" / "general.yaml"),
        None,
        {
            "run": "t",
            "output_dir": str(tmp_path / "out"),
            # As the pipeline runs its own embedded model: few-shot completion, answers in chat.
            "llm": {
                "base_url": embedded_server.base_url,
                "model": embedded_server.model_name,
                "api": "completion",
            },
            "generation": {
                "num": 5,
                "answer_mode": "chat",
                "seeds_path": str(root / "seed_tasks.jsonl"),
            },
            "export": {"validation_fraction": 0.2, "save_to_disk": True},
        },
    )
    run = Run(cfg, progress=False)
    stats = run.execute()
    d = run.dir
    for name in [
        "config.yaml",
        "00_seeds.jsonl",
        "01_generated.jsonl",
        "02_dedup.jsonl",
        "02b_answer.jsonl",
        "03_filter.jsonl",
        "data.json",
        "data.validation.json",
        "messages.jsonl",
        "messages.validation.jsonl",
        "stats.json",
        "cache/responses.jsonl",
    ]:
        assert (d / name).exists(), name
    train = json.loads((d / "data.json").read_text())
    val = json.loads((d / "data.validation.json").read_text())
    assert (len(train), len(val)) == (4, 1)
    assert all(set(r) == {"instruction", "input", "output"} for r in train + val)
    assert all(r["instruction"].strip() and r["output"].strip() for r in train + val)
    ids = [r["id"] for r in read_jsonl(d / "03_filter.jsonl")]
    assert len(ids) == len(set(ids)) >= 5
    msgs = read_jsonl(d / "messages.jsonl")
    assert [m["role"] for m in msgs[0]["messages"]] == ["user", "assistant"]
    assert stats["per_kept_record"]["completion_tokens"] > 0
    assert stats["model"] == embedded_server.model_name
    ds = datasets.load_from_disk(str(d / "hf_dataset"))
    assert ds["train"].num_rows == 4 and ds["validation"].num_rows == 1
    assert ds["validation"][0] == val[0]
    saved = (d / "config.yaml").read_text()
    assert "base_url" in saved and "sk-" not in saved


def test_rerun_replays_the_cache_and_pays_nothing(tmp_path, seeds_file):
    with FakeOpenAI(varied_reply) as srv:
        Run(config(tmp_path, srv.base_url, seeds_file), progress=False).execute()
        paid = len(srv.requests)
        first = (tmp_path / "out/t/data.json").read_text()
        stats = Run(config(tmp_path, srv.base_url, seeds_file), progress=False).execute()
    # A finished run, rerun, sends nothing: every answer it needs is in the cache.
    assert len(srv.requests) == paid >= 2
    assert stats["llm"]["cached"] == stats["llm"]["requests"] == paid
    assert (tmp_path / "out/t/data.json").read_text() == first


def test_duplicates_truncation_and_garbage_become_reasons(tmp_path, seeds_file):
    def script(body: dict, n: int) -> Reply:
        if n == 0:
            return Reply(body=b"{not json")
        if n % 3 == 1:  # the same task again and again: dedup must catch it
            return Reply(
                body=completion_body(
                    "Task 3\nInstruction: Give three tips for keeping houseplants alive.\nInput: <none>\nOutput: Water them.",
                    chat=True,
                )
            )
        if n % 3 == 2:
            return Reply(
                body=completion_body(
                    "Task 3\nInstruction: Describe a storm.\nInput: <none>\nOutput: The sky went dark and the",
                    chat=True,
                    finish_reason="length",
                )
            )
        return varied_reply(body, n)

    with FakeOpenAI(script) as srv:
        cfg = config(tmp_path, srv.base_url, seeds_file, num=3)
        cfg.llm.concurrency = 1  # so that the n-th request the server sees is the n-th sent
        run = Run(cfg, progress=False)
        stats = run.execute()
    st = stats["stages"]
    assert st["generate"]["dropped"].get("truncated_generation", 0) >= 1
    assert st["dedup"]["dropped"].get("rouge_duplicate", 0) >= 1
    rej = read_jsonl(run.dir / "02_dedup.rejected.jsonl")
    assert rej[0]["reject"]["nearest_id"] == "s0" and rej[0]["reject"]["score"] > 0.7
    assert len(json.loads((run.dir / "data.json").read_text())) == 3


def test_bad_key_ends_the_run_with_a_clear_message_and_no_leak(
    tmp_path, seeds_file, monkeypatch, capsys
):
    secret = "sk-live-abcdefghijklmnopqrstuvwxyz012345"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    with FakeOpenAI(
        lambda b, n: Reply(
            status=401, body={"error": {"message": f"Incorrect API key provided: {secret}"}}
        )
    ) as srv:
        code = main(
            [
                "generate",
                "--num",
                "2",
                "--run",
                "bad",
                "--no-progress",
                "--no-report",
                "--set",
                f"output_dir={tmp_path}",
                "--set",
                f"llm.base_url={srv.base_url}",
                "--set",
                "llm.api=chat",
                "--set",
                f"generation.seeds_path={seeds_file}",
            ]
        )
        auth = srv.requests[0][1].get("authorization", "")
    err = capsys.readouterr().err
    assert code == 1
    assert "refused the API key" in err and secret not in err
    assert auth == f"Bearer {secret}", "the key is sent to the endpoint, and only there"
    for f in (tmp_path / "bad").rglob("*"):
        if f.is_file():
            assert secret not in f.read_text(errors="replace"), f
    assert json.loads((tmp_path / "bad" / "data.json").read_text()) == []


def test_budget_stops_cleanly_with_everything_written(tmp_path, seeds_file):
    with FakeOpenAI(varied_reply) as srv:
        cfg = config(tmp_path, srv.base_url, seeds_file, num=50)
        cfg.llm.concurrency = 1
        cfg.llm.max_tokens_total = 600  # 250 tokens a request: the third request crosses it
        run = Run(cfg, progress=False)
        stats = run.execute()
    assert stats["stopped_reason"] == "budget"
    assert 1 <= len(srv.requests) <= 4
    data = json.loads((run.dir / "data.json").read_text())
    assert len(data) == len(read_jsonl(run.dir / "03_filter.jsonl")) > 0


def test_malformed_seed_file_names_line_and_field(tmp_path, capsys):
    bad = tmp_path / "seeds.jsonl"
    bad.write_text(
        json.dumps(SEEDS[0])
        + "\n"
        + json.dumps({"id": "x", "instruction": "Do it.", "instances": [{"input": ""}]})
        + "\n",
        encoding="utf-8",
    )
    code = main(
        [
            "generate",
            "--num",
            "1",
            "--no-progress",
            "--set",
            f"output_dir={tmp_path}",
            "--set",
            "llm.base_url=http://127.0.0.1:9/v1",
            "--set",
            f"generation.seeds_path={bad}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert f"{bad}:2: field 'instances[0].output': missing" in err


def test_unknown_config_key_is_an_error(capsys):
    assert main(["generate", "--set", "generation.bogus=1"]) == 1
    assert "unknown config key(s): generation.bogus" in capsys.readouterr().err


def test_code_mode_with_scripted_answers_keeps_the_first_passing_candidate(tmp_path, seeds_file):
    code_seed = {
        "id": "c0",
        "name": "add",
        "instruction": "Write a Python function `add(a, b)` that returns a + b.",
        "instances": [{"input": "", "output": "def add(a, b):\n    return a + b\n"}],
        "is_classification": False,
        "language": "python",
        "tests": "assert add(1, 2) == 3\n",
    }
    with open(seeds_file, "a", encoding="utf-8") as f:
        f.write(json.dumps(code_seed) + "\n")

    def script(body: dict, n: int) -> Reply:
        prompt = body["messages"][0]["content"]
        if "programming problems" in prompt:
            return Reply(
                body=completion_body(
                    "Problem 2\nInstruction: Write a Python function `triple(x)` that returns three times x.",
                    chat=True,
                )
            )
        if "Write unit tests" in prompt:
            return Reply(
                body=completion_body(
                    "```python\nassert triple(2) == 6\nassert triple(-1) == -3\n```", chat=True
                )
            )
        # Candidate solutions: the first sample is wrong, the others right.
        wrong = "def triple(x):\n    return x * 2\n"
        right = "def triple(x):\n    return 3 * x\n"
        return Reply(
            body=completion_body(
                f"```python\n{wrong if body.get('seed', 0) % 2 == 0 else right}```", chat=True
            )
        )

    with FakeOpenAI(script) as srv:
        cfg = config(
            tmp_path,
            srv.base_url,
            seeds_file,
            mode="code",
            num=1,
            num_candidates=4,
            code_rounds=1,
            tasks_per_request=1,
            num_prompt_tasks=1,
        )
        run = Run(cfg, progress=False)
        stats = run.execute()
    [kept] = read_jsonl(run.dir / "04_verify.jsonl")
    i = kept["verification"]["passed_index"]
    assert kept["output"] == kept["candidates"][i] and "3 * x" in kept["output"]
    assert all(s["status"] == "failed" for s in kept["verification"]["statuses"][:i])
    assert stats["stages"]["verify"]["extra"]["candidates_passed"] == 1
    assert json.loads((run.dir / "data.json").read_text())[0]["output"] == kept["output"]
    assert "candidates run" in run.summary()
    assert set(stats["llm"]["by_stage"]) == {"generate", "tests", "solutions"}
