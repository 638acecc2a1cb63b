"""HumanEval infilling: the harness scores canonical middles 1.0 and empty ones 0.0 through the
real sandbox (a seeded subset of each split here; every problem in benchmarks/bench_fim.py),
prompts are the training layout, the CLI, local generation on a tiny FIM model, an adapter's
own sentinels, and an OpenAI-compatible endpoint."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from finetune import eval as ev
from finetune import infilling
from pipeline.records import RecordError
from tests.finetune_fixtures import require_torch

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "bench" / "humaneval_infilling"


def test_split_files_are_there():
    # The tests read OpenAI's files from the shared benchmark folder (never copied in here).
    assert all((DATA / name).exists() for name in infilling.SPLITS.values()), DATA


@pytest.mark.parametrize("split", list(infilling.SPLITS))
def test_canonical_middles_pass_and_empty_middles_fail(split, tmp_path):
    # Seed 1's single-line subset holds none of the 27 lines (of 1,033) whose removal
    # HumanEval's tests cannot notice; see the next test and BENCHMARKS.md for the whole split.
    problems = infilling.load_problems(DATA, split, subset=12, seed=1)
    assert len(problems) == 12 and all(p["task_id"].split("/")[1] == "HumanEval" for p in problems)
    arms = {
        "canonical": {"samples": infilling.canonical_samples(problems)},
        "empty": {"samples": infilling.empty_samples(problems)},
    }
    doc = ev.evaluate(arms, problems, [1], tmp_path, settings={}, timeout=5)
    canon, empty = doc["results"]["canonical"], doc["results"]["empty"]
    assert canon["pass@1"] == 1.0, canon["statuses"]
    assert empty["pass@1"] == 0.0 and "passed" not in empty["statuses"], empty["statuses"]


def test_an_empty_middle_passes_only_where_the_line_does_not_matter(tmp_path):
    """On the whole single-line split 27 of 1,033 empty middles pass (BENCHMARKS.md): lines such
    as this comment, whose removal HumanEval's tests cannot notice. The program really is
    prompt + middle + suffix: the same problem with a wrong line fails."""
    (p,) = [
        q
        for q in infilling.load_problems(DATA, "single-line")
        if q["task_id"] == "SingleLineInfilling/HumanEval/99/L3"
    ]
    assert p["canonical_solution"].strip().startswith("#")
    wrong = infilling.samples([p], [["        value = value[::-1]\n"]], [[""]])
    scored = ev.he.score_samples([p], infilling.empty_samples([p]) + wrong, timeout=10)
    assert [s["status"] for s in scored][0] == "passed" and scored[1]["status"] != "passed"


def test_subset_is_seeded_and_limit_takes_the_first():
    a = infilling.load_problems(DATA, "multi-line", subset=5, seed=1)
    b = infilling.load_problems(DATA, "multi-line", subset=5, seed=1)
    c = infilling.load_problems(DATA, "multi-line", subset=5, seed=2)
    assert a == b and a != c
    first = infilling.load_problems(DATA, "single-line", limit=2)
    assert [p["task_id"] for p in first] == [
        "SingleLineInfilling/HumanEval/0/L0",
        "SingleLineInfilling/HumanEval/0/L1",
    ]


def test_bad_files_name_file_line_and_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="HumanEval-SingleLineInfilling"):
        infilling.load_problems(tmp_path, "single-line")
    good = infilling.load_problems(DATA, "single-line", limit=1)[0]
    bad = {k: v for k, v in good.items() if k != "suffix"}
    with gzip.open(tmp_path / infilling.SPLITS["single-line"], "wt", encoding="utf-8") as f:
        f.write(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"SingleLineInfilling.jsonl.gz:2: field 'suffix'"):
        infilling.load_problems(tmp_path, "single-line")


def test_middle_from_reply():
    assert infilling.middle_from_reply("    x = 1\n    y = 2\n", "single-line") == "    x = 1\n"
    assert infilling.middle_from_reply("    x = 1\n    y = 2\n", "multi-line") == (
        "    x = 1\n    y = 2\n"
    )
    assert infilling.middle_from_reply("a<END>b", "random-span-light", "<END>") == "a"


def test_cli_canonical_infilling_and_flag_errors(tmp_path, capsys):
    out = tmp_path / "c"
    argv = ["--benchmark", "humaneval-infilling", "--split", "random-span-light"]
    argv += ["--data-dir", str(DATA), "--canonical", "--subset", "6", "--output", str(out)]
    assert ev.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"]["canonical"]["pass@1"] == 1.0
    assert summary["settings"]["split"] == "random-span-light"
    assert summary["settings"]["problems"] == 6
    rows = [json.loads(x) for x in (out / "canonical.jsonl").read_text().splitlines()]
    assert all(r["task_id"].startswith("RandomSpanInfillingLight/") for r in rows)
    with pytest.raises(SystemExit):
        ev.main(["--benchmark", "humaneval-infilling"])
    assert "needs --data-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ev.main(["--subset", "3"])
    assert "--benchmark humaneval-infilling" in capsys.readouterr().err


def test_completions_file_holds_middles(tmp_path):
    problems = infilling.load_problems(DATA, "single-line", limit=2)
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps(
            {"task_id": problems[0]["task_id"], "completion": problems[0]["canonical_solution"]}
        )
        + "\n"
        + json.dumps({"task_id": problems[1]["task_id"], "completion": "    pass\n"})
        + "\n"
    )
    argv = ["--benchmark", "humaneval-infilling", "--data-dir", str(DATA), "--limit", "2"]
    assert ev.main([*argv, "--completions", str(path), "--output", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "summary.json").read_text())["results"]["mine"]
    assert res["pass@1"] == 0.5


# --------------------------------------------------------------------------------------------
# Local generation on a tiny model with StarCoder-style sentinels


@pytest.fixture(scope="module")
def fim_model(tmp_path_factory):
    require_torch()
    from tests.finetune_fixtures import make_fim_tiny_model

    return make_fim_tiny_model(tmp_path_factory.mktemp("fim-tiny"), "starcoder")


def test_infilling_prompts_are_the_training_layout(fim_model):
    from finetune.fim import FimEncoder, resolve_fim_tokens
    from finetune.model import load_tokenizer

    tok = load_tokenizer(fim_model)
    enc = FimEncoder(tok, resolve_fim_tokens(tok))
    p = infilling.load_problems(DATA, "single-line", limit=1)[0]
    for mode in ("psm", "spm"):
        prompt = enc.prompt_ids(p["prompt"], p["suffix"], mode)
        row = enc.row(p["prompt"], p["canonical_solution"], p["suffix"], mode, max_length=4096)
        n_context = row["labels"].index(next(x for x in row["labels"] if x != -100))
        # What evaluation feeds the model is exactly the unlearned context of a training row.
        assert row["input_ids"][:n_context] == prompt
    assert tok.decode(enc.prompt_ids("a", "b", "psm")) == "<fim_prefix>a<fim_suffix>b<fim_middle>"


def test_local_infilling_run_names_its_prompt(fim_model, tmp_path):
    out = tmp_path / "gen"
    argv = ["--benchmark", "humaneval-infilling", "--data-dir", str(DATA), "--subset", "3"]
    argv += ["--model", str(fim_model), "--max-new-tokens", "6", "--device", "cpu"]
    assert ev.main([*argv, "--fim-mode", "spm", "--output", str(out)]) == 0
    doc = json.loads((out / "summary.json").read_text())
    ((label, res),) = doc["results"].items()
    assert res["prompt"] == "fim-spm (starcoder sentinels)" and res["problems"] == 3
    assert doc["settings"]["prompt"] == ["fim-spm (starcoder sentinels)"]
    assert res["generation"]["tokens"] > 0
    for row in map(json.loads, (out / f"{label}.jsonl").read_text().splitlines()):
        sample = row["samples"][0]
        assert sample["kind"] == "infill" and sample["code"].count("\n") <= 1  # single-line


def test_adapter_sentinels_are_used_for_a_model_without_its_own(tmp_path):
    """A model with no FIM tokens is trained with three named ones; evaluating the adapter
    prompts with those, and without an adapter the missing sentinels are a clear error."""
    require_torch()
    from finetune.config import load_train_config
    from finetune.train import run_training
    from tests.finetune_fixtures import make_tiny_model

    tiny = make_tiny_model(tmp_path / "tiny")
    data = tmp_path / "code.jsonl"
    data.write_text(
        json.dumps({"instruction": "x", "output": "def f():\n    return 1\n", "language": "python"})
        + "\n"
    )
    cfg = load_train_config(
        REPO / "configs" / "train-tiny-test.yaml",
        [
            f"model.name_or_path={tiny}",
            "data.fim.rate=1",
            "data.fim.prefix_token=<|user|>",
            "data.fim.suffix_token=<|system|>",
            "data.fim.middle_token=<|assistant|>",
            "data.validation_fraction=0",
            "training.max_steps=1",
        ],
    )
    run_training(cfg, data, output_dir=tmp_path / "adapter")
    argv = ["--benchmark", "humaneval-infilling", "--data-dir", str(DATA), "--subset", "2"]
    argv += ["--max-new-tokens", "4", "--device", "cpu"]
    assert (
        ev.main([*argv, "--adapter", str(tmp_path / "adapter"), "--output", str(tmp_path / "a")])
        == 0
    )
    doc = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert list(doc["results"]) == ["base", "adapter"]
    assert doc["results"]["adapter"]["prompt_format"]["prefix"] == "<|user|>"
    assert doc["results"]["adapter"]["prompt"] == "fim-psm (custom sentinels)"
    with pytest.raises(ValueError, match=r"--fim-tokens: the tokenizer has no fill-in-the-middle"):
        ev.main([*argv, "--model", str(tiny), "--output", str(tmp_path / "b")])


# --------------------------------------------------------------------------------------------
# An OpenAI-compatible endpoint (real HTTP on loopback, through pipeline.llm.LLMClient)


class _InfillServer:
    """Answers /v1/completions for a PSM prompt with the canonical middle, then the END text and
    more code (as a server that does not stop at END would)."""

    def __init__(self, problems: list[dict]):
        self.by_prompt = {
            f"<PRE>{p['prompt']}<SUF>{p['suffix']}<MID>": p["canonical_solution"] for p in problems
        }
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(req)
                text = outer.by_prompt[req["prompt"]] + "<END>    junk()\n"
                body = json.dumps(
                    {
                        "id": "x",
                        "object": "text_completion",
                        "created": 0,
                        "model": req["model"],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6},
                        "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_endpoint_infilling_through_the_llm_client(tmp_path):
    problems = infilling.load_problems(DATA, "multi-line", subset=4, seed=0)
    argv = ["--benchmark", "humaneval-infilling", "--split", "multi-line", "--data-dir", str(DATA)]
    argv += ["--subset", "4", "--fim-tokens", "<PRE>,<SUF>,<MID>,<END>", "--model", "coder"]
    with _InfillServer(problems) as srv:
        assert ev.main([*argv, "--endpoint", srv.url, "--output", str(tmp_path / "e")]) == 0
    res = json.loads((tmp_path / "e" / "summary.json").read_text())["results"]["coder"]
    assert res["pass@1"] == 1.0 and res["generation"]["tokens"] == 20
    assert all(r["stop"] == ["<END>"] and r["temperature"] == 0.0 for r in srv.requests)
    with pytest.raises(SystemExit, match="--fim-tokens"):
        ev.main([*argv[:-4], "--endpoint", srv.url, "--output", str(tmp_path / "f")])
