"""HumanEval evaluation: the estimator, reply-to-program extraction, scoring through the real
sandbox (canonical solutions pass, empty ones fail), the result files, the endpoint client
against a local OpenAI-compatible HTTP server, the contamination report, and (slow) the embedded
SmolLM2 end to end on CPU."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from math import comb
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from finetune import eval as ev
from finetune import humaneval as he
from pipeline.records import RecordError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return he.load_problems()


def by_id(problems: list[dict], task_id: str) -> dict:
    return next(p for p in problems if p["task_id"] == task_id)


# --------------------------------------------------------------------------------------------
# pass@k


def test_pass_at_k_worked_cases():
    assert he.pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert he.pass_at_k(10, 3, 5) == pytest.approx(1 - comb(7, 5) / comb(10, 5))
    assert he.pass_at_k(1, 1, 1) == 1.0
    assert he.pass_at_k(1, 0, 1) == 0.0
    # Fewer failures than k: every draw of k contains a pass.
    assert he.pass_at_k(10, 8, 3) == 1.0
    # n=200 overflows a float closed form's binomials; the product form stays exact enough.
    exact = 1 - Fraction(comb(187, 100), comb(200, 100))
    assert he.pass_at_k(200, 13, 100) == pytest.approx(float(exact), rel=1e-12)


@given(
    st.integers(1, 60).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))
    )
)
def test_pass_at_k_matches_closed_form(nck):
    n, c, k = nck
    expected = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert he.pass_at_k(n, c, k) == pytest.approx(float(expected), abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, -1, 1), (5, 2, 6), (5, 2, 0)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        he.pass_at_k(n, c, k)


# --------------------------------------------------------------------------------------------
# Problems


def test_load_problems_reads_all_164_in_order(problems):
    assert len(problems) == 164
    assert [p["task_id"] for p in problems[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert he.load_problems(limit=3) == problems[:3]
    assert [p["task_id"] for p in he.load_problems(task_ids=["HumanEval/7"])] == ["HumanEval/7"]


def test_load_problems_names_file_line_and_field(tmp_path, problems):
    path = tmp_path / "broken.jsonl.gz"
    bad = {k: v for k, v in problems[1].items() if k != "entry_point"}
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(problems[0]) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError) as err:
        he.load_problems(path)
    assert err.value.line == 2 and err.value.field == "entry_point"
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------------------------
# From a reply to code


def test_completion_stops_at_the_end_of_the_function(problems):
    p = by_id(problems, "HumanEval/2")
    reply = "    return number % 1.0\n\n\ndef main():\n    print(truncate_number(3.5))\n"
    assert he.extract_code(reply, p, mode="completion") == ("    return number % 1.0\n\n", "body")
    reply = "    return number % 1.0\n# Example usage\nprint(truncate_number(2.25))"
    assert he.extract_code(reply, p, mode="completion") == ("    return number % 1.0", "body")
    reply = "    return number % 1.0\nif __name__ == '__main__':\n    import doctest\n"
    assert he.extract_code(reply, p, mode="completion")[0] == "    return number % 1.0"


def test_completion_that_restarts_the_function_is_taken_whole(problems):
    p = by_id(problems, "HumanEval/2")
    reply = "def truncate_number(number: float) -> float:\n    return number % 1.0\n\nprint(1)\n"
    code, kind = he.extract_code(reply, p, mode="completion")
    assert kind == "function"
    assert code == "def truncate_number(number: float) -> float:\n    return number % 1.0\n\n"


CHAT_REPLIES = {
    "fenced full function with prose": (
        "Sure! Here is the solution:\n\n```python\ndef truncate_number(number: float) -> float:\n"
        "    return number % 1.0\n```\n\nThis works because modulo 1 keeps the fraction.",
        "function",
    ),
    "untagged fence cut off by the token limit": (
        "```\ndef truncate_number(number):\n    return number - int(number)\n",
        "function",
    ),
    "usage block first, implementation second": (
        "Usage:\n```python\nprint(truncate_number(3.5))\n```\nImplementation:\n```python\n"
        "import math\n\ndef truncate_number(number):\n    return number - math.floor(number)\n```",
        "function",
    ),
    "unfenced def between prose lines": (
        "The answer is\ndef truncate_number(number: float) -> float:\n    x = number % 1.0\n"
        "    return x\nI hope this helps!",
        "function",
    ),
    "helper defined after the function, then a main guard": (
        "```python\ndef truncate_number(x):\n    return frac(x)\n\ndef frac(x):\n    return x % 1\n"
        "\nif __name__ == '__main__':\n    print(truncate_number(input()))\n```",
        "function",
    ),
    "bare unindented body": ("return number % 1.0", "body"),
    "indented body in a fence": ("```python\n    return number % 1.0\n```", "body"),
}

WRONG_REPLIES = {
    "wrong function": (
        "```python\ndef truncate_number(number):\n    return number\n```",
        "function",
    ),
    "prose only": ("I am not sure how to solve this problem.", "body"),
    "empty": ("", "body"),
}


@pytest.mark.parametrize("name", sorted(CHAT_REPLIES))
def test_extract_code_kind(name, problems):
    reply, kind = CHAT_REPLIES[name]
    code, got = he.extract_code(reply, by_id(problems, "HumanEval/2"))
    assert got == kind
    compile(he.build_program(by_id(problems, "HumanEval/2"), code, got), name, "exec")


def test_extracted_replies_pass_or_fail_in_the_sandbox(problems):
    """Every messy-but-correct reply passes the real tests; wrong ones fail."""
    p = by_id(problems, "HumanEval/2")
    replies = {**CHAT_REPLIES, **WRONG_REPLIES}
    samples = []
    for name, (reply, _) in replies.items():
        code, kind = he.extract_code(reply, p)
        samples.append({"task_id": p["task_id"], "name": name, "code": code, "kind": kind})
    scored = he.score_samples([p], samples, timeout=20)
    status = {s["name"]: s["status"] for s in scored}
    assert {n: status[n] for n in CHAT_REPLIES} == dict.fromkeys(CHAT_REPLIES, "passed")
    assert all(status[n] != "passed" for n in WRONG_REPLIES), status


# --------------------------------------------------------------------------------------------
# Scoring all 164 through the sandbox


def test_canonical_solutions_all_pass_and_empty_ones_all_fail(problems, tmp_path):
    arms = {
        "canonical": {"samples": ev.canonical_samples(problems)},
        "empty": {
            "samples": [
                {"task_id": p["task_id"], "sample": 0, "reply": "", "code": "", "kind": "body"}
                for p in problems
            ]
        },
    }
    doc = ev.evaluate(arms, problems, [1], tmp_path, settings={"test": True}, timeout=20)
    canon, empty = doc["results"]["canonical"], doc["results"]["empty"]
    assert canon["pass@1"] == 1.0, canon["statuses"]
    assert canon["statuses"] == {"passed": 164} and canon["solved"] == 164
    assert empty["pass@1"] == 0.0 and empty["solved"] == 0
    assert "passed" not in empty["statuses"]
    rows = [json.loads(line) for line in (tmp_path / "canonical.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == [p["task_id"] for p in problems]
    assert all(r["n"] == 1 and r["c"] == 1 and r["pass@1"] == 1.0 for r in rows)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["results"]["empty"]["problems"] == 164


def test_summary_pass_at_k_over_several_samples(problems, tmp_path):
    """Two problems, three samples each: 2/3 and 0/3 passing give pass@1 = (2/3 + 0) / 2."""
    p0, p2 = by_id(problems, "HumanEval/0"), by_id(problems, "HumanEval/2")
    good2 = "    return number % 1.0\n"
    bad = "    return None\n"
    samples = [
        {"task_id": p2["task_id"], "sample": 0, "code": good2, "kind": "body"},
        {"task_id": p2["task_id"], "sample": 1, "code": bad, "kind": "body"},
        {"task_id": p2["task_id"], "sample": 2, "code": good2, "kind": "body"},
        *({"task_id": p0["task_id"], "sample": i, "code": bad, "kind": "body"} for i in range(3)),
    ]
    doc = ev.evaluate(
        {"m": {"samples": samples}}, [p0, p2], [1, 2, 3], tmp_path, settings={}, timeout=20
    )
    s = doc["results"]["m"]
    assert s["pass@1"] == pytest.approx((2 / 3 + 0) / 2)
    assert s["pass@2"] == pytest.approx((he.pass_at_k(3, 2, 2) + 0) / 2)
    assert s["pass@3"] == pytest.approx(0.5)
    assert s["solved"] == 1 and s["samples"] == 6
    table = he.format_table(doc["results"], [1, 2, 3])
    assert "pass@1" in table.splitlines()[0] and "0.3333" in table


def test_format_table_shows_the_difference_to_the_base():
    table = he.format_table(
        {
            "base": {
                "problems": 164,
                "samples": 164,
                "solved": 10,
                "pass@1": 0.0610,
                "statuses": {"failed": 154, "passed": 10},
            },
            "adapter": {
                "problems": 164,
                "samples": 164,
                "solved": 15,
                "pass@1": 0.0915,
                "statuses": {"failed": 149, "passed": 15},
            },
        },
        [1],
    )
    lines = table.splitlines()
    assert lines[2].startswith("base") and "0.0610" in lines[2]
    assert lines[3].startswith("adapter") and "0.0915 (+0.0305)" in lines[3]


# --------------------------------------------------------------------------------------------
# The command line


def test_cli_canonical_subset_through_python_m(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune",
            "eval",
            "--canonical",
            "--limit",
            "5",
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "canonical" in proc.stdout and "1.0000" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"]["canonical"]["pass@1"] == 1.0
    assert summary["settings"]["problems"] == 5


def test_cli_scores_a_completions_file(tmp_path, capsys):
    path = tmp_path / "mine.jsonl"
    lines = [
        {"task_id": "HumanEval/2", "completion": "    return number % 1.0\n\ndef other():\n    x"},
        {
            "task_id": "HumanEval/0",
            "reply": "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```",
        },
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "o"
    assert ev.main(["--completions", str(path), "--output", str(out)]) == 0
    assert "scoring 2 of 164 problems" in capsys.readouterr().err
    rows = {r["task_id"]: r for r in map(json.loads, (out / "mine.jsonl").read_text().splitlines())}
    assert set(rows) == {"HumanEval/0", "HumanEval/2"}
    assert rows["HumanEval/2"]["c"] == 1
    assert rows["HumanEval/2"]["samples"][0]["code"] == "    return number % 1.0\n"
    assert rows["HumanEval/0"]["c"] == 0
    assert rows["HumanEval/0"]["samples"][0]["status"] == "failed"
    assert json.loads((out / "summary.json").read_text())["results"]["mine"]["pass@1"] == 0.5


def test_cli_completions_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"task_id": "HumanEval/2", "completion": "x"})
        + "\n"
        + json.dumps({"task_id": "HumanEval/3"})
        + "\n"
    )
    with pytest.raises(RecordError, match=r"bad.jsonl:2: field 'completion'"):
        ev.main(["--completions", str(path), "--output", str(tmp_path / "o")])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n", "1", "--k", "5"], "--k 5"),
        (["--n", "5", "--temperature", "0"], "identical"),
        (["--no-base"], "--no-base needs --adapter"),
        (["--limit", "0"], "--limit 0"),
    ],
)
def test_cli_rejects_inconsistent_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        ev.main(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# An OpenAI-compatible endpoint (a real HTTP server on loopback, driven by the openai package)


class _FakeServer:
    """Answers /v1/completions with the canonical body plus trailing junk (it ignores ``stop``
    and ``n``, like some servers do) and /v1/chat/completions with a chatty fenced answer."""

    def __init__(self, problems: list[dict]):
        self.by_prompt = {p["prompt"]: p for p in problems}
        self.by_entry = {p["entry_point"]: p for p in problems}
        self.requests: list[dict] = []
        self.auth: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def _send(self, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(
                    {
                        "object": "list",
                        "data": [
                            {
                                "id": "fake-coder",
                                "object": "model",
                                "created": 0,
                                "owned_by": "test",
                            }
                        ],
                    }
                )

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, **req})
                outer.auth.append(self.headers.get("Authorization", ""))
                usage = {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}
                if self.path.endswith("/completions") and "chat" not in self.path:
                    p = outer.by_prompt[req["prompt"]]
                    text = (
                        p["canonical_solution"] + "\n\ndef unrelated():\n    raise SystemExit(1)\n"
                    )
                    self._send(
                        {
                            "id": "c",
                            "object": "text_completion",
                            "created": 0,
                            "model": req["model"],
                            "usage": usage,
                            "choices": [
                                {
                                    "index": 0,
                                    "text": text,
                                    "finish_reason": "length",
                                    "logprobs": None,
                                }
                            ],
                        }
                    )
                else:
                    content = req["messages"][-1]["content"]
                    p = next(q for e, q in outer.by_entry.items() if f"def {e}(" in content)
                    code = p["prompt"] + p["canonical_solution"]
                    reply = f"Here is my solution.\n\n```python\n{code}```\nIt handles edge cases."
                    self._send(
                        {
                            "id": "c",
                            "object": "chat.completion",
                            "created": 0,
                            "model": req["model"],
                            "usage": usage,
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": reply},
                                }
                            ],
                        }
                    )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_endpoint_completion_api_truncates_and_scores(problems, tmp_path, monkeypatch):
    monkeypatch.setenv("EVAL_TEST_KEY", "sk-test-secret-1234")
    out = tmp_path / "ep"
    with _FakeServer(problems[:4]) as srv:
        rc = ev.main(
            [
                "--endpoint",
                srv.url,
                "--limit",
                "4",
                "--n",
                "2",
                "--k",
                "1",
                "2",
                "--api-key-env",
                "EVAL_TEST_KEY",
                "--output",
                str(out),
            ]
        )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    res = summary["results"]["fake-coder"]
    assert res["pass@1"] == 1.0 and res["pass@2"] == 1.0 and res["samples"] == 8
    # n=2 with a server that returns one choice: asked twice per problem.
    comp = [r for r in srv.requests if r["path"].endswith("/v1/completions")]
    assert len(comp) == 8
    assert all(r["temperature"] == 0.8 and len(r["stop"]) == 4 for r in comp)
    assert set(srv.auth) == {"Bearer sk-test-secret-1234"}
    # The junk after the function was cut client-side; the key never reaches the results.
    row = json.loads((out / "fake-coder.jsonl").read_text().splitlines()[0])
    assert (
        "unrelated" in row["samples"][0]["reply"] and "unrelated" not in row["samples"][0]["code"]
    )
    for f in out.iterdir():
        assert "sk-test-secret" not in f.read_text()


def test_endpoint_chat_api_extracts_fenced_functions(problems, tmp_path):
    out = tmp_path / "chat"
    with _FakeServer(problems[:3]) as srv:
        rc = ev.main(
            [
                "--endpoint",
                srv.url,
                "--model",
                "fake-coder",
                "--api",
                "chat",
                "--limit",
                "3",
                "--output",
                str(out),
            ]
        )
    assert rc == 0
    res = json.loads((out / "summary.json").read_text())["results"]["fake-coder"]
    assert res["pass@1"] == 1.0, res
    (msg,) = [
        r["messages"][0]["content"]
        for r in srv.requests
        if "has_close_elements" in r["messages"][0]["content"]
    ]
    assert msg.startswith(he.INSTRUCTION) and "```python\nfrom typing import List" in msg
    assert srv.requests[0]["temperature"] == 0.0


# --------------------------------------------------------------------------------------------
# Contamination


def test_contamination_report_finds_copied_problems(problems, tmp_path, capsys):
    p3, p10 = by_id(problems, "HumanEval/3"), by_id(problems, "HumanEval/10")
    data = [
        {
            "instruction": "Write a function that reverses a string.",
            "input": "",
            "output": "def rev(s):\n    return s[::-1]\n",
        },
        # A solution lifted from HumanEval, under a different instruction.
        {"instruction": "Check a bank balance.", "input": "", "output": p3["canonical_solution"]},
        # The docstring of a HumanEval prompt pasted into the instruction.
        {"instruction": p10["prompt"], "input": "", "output": "pass"},
        {
            "instruction": "Sort a list of numbers in ascending order.",
            "input": "[3, 1, 2]",
            "output": "sorted([3, 1, 2])",
        },
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    report = he.contamination_report(data, problems)
    assert report["records"] == 4 and report["contaminated"] == 2
    assert [h["record"] for h in report["hits"]] == [2, 3]
    assert (
        "HumanEval/3" in report["hits"][0]["tasks"] and "HumanEval/10" in report["hits"][1]["tasks"]
    )
    assert ev.main(["--contamination", str(path), "--output", str(tmp_path / "c.json")]) == 0
    assert "2 of 4 records (50.00%)" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())["contaminated"] == 2


def test_contamination_bad_record_names_file_line_field(tmp_path, problems):
    path = tmp_path / "data.json"
    path.write_text(
        json.dumps([{"instruction": "x", "output": "y"}, {"instruction": 3, "output": ""}])
    )
    with pytest.raises(RecordError, match=r"data.json:2: field 'instruction'"):
        ev.main(["--contamination", str(path)])


# --------------------------------------------------------------------------------------------
# Local generation on a tiny random Llama (the trainer's test fixture)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    sys.path.insert(0, str(REPO / "tests"))
    from finetune_fixtures import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny"), pad_is_eos=True)


def test_left_padded_batches_match_one_prompt_at_a_time(tiny_model):
    """Greedy replies are the same whether prompts of different lengths share a batch (left
    padded) or run alone: padding on the wrong side, or pad == EOS cutting replies, would
    change them."""
    from finetune.model import load_model

    model, tok = load_model(str(tiny_model), device="cpu")
    prompts = [p["prompt"] for p in he.load_problems(limit=3)]
    assert len({len(tok(p).input_ids) for p in prompts}) == 3
    batched, tokens = ev.generate_local(model, tok, prompts, max_new_tokens=12, batch_size=3)
    alone = [ev.generate_local(model, tok, [p], max_new_tokens=12) for p in prompts]
    assert batched == [a[0][0] for a in alone]
    assert tokens == sum(a[1] for a in alone) > 0
    assert tok.padding_side == "left"  # restored to what load_model set


def test_adapter_and_base_side_by_side(tiny_model, tmp_path):
    """With --adapter both arms run in one command; the base arm equals the model alone."""
    import torch
    from peft import LoraConfig, get_peft_model

    from finetune.model import load_model, write_prompt_format

    base, _ = load_model(str(tiny_model), device="cpu")
    torch.manual_seed(1)
    lora = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    adapter = tmp_path / "adapter"
    get_peft_model(base, lora).save_pretrained(adapter)
    write_prompt_format(adapter, {"format": "alpaca", "base_model": str(tiny_model)})

    common = ["--limit", "2", "--max-new-tokens", "10", "--device", "cpu", "--timeout", "20"]
    assert ev.main(["--adapter", str(adapter), *common, "--output", str(tmp_path / "a")]) == 0
    doc = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert list(doc["results"]) == ["base", "adapter"]
    assert doc["settings"]["prompt_mode"] == "instruction"
    assert doc["results"]["adapter"]["prompt_format"]["format"] == "alpaca"

    def replies(path: Path) -> list[str]:
        return [json.loads(x)["samples"][0]["reply"] for x in path.read_text().splitlines()]

    base_r, adapter_r = (
        replies(tmp_path / "a" / "base.jsonl"),
        replies(tmp_path / "a" / "adapter.jsonl"),
    )
    assert base_r != adapter_r

    plain = ["--model", str(tiny_model), "--prompt-format", "alpaca", *common]
    assert ev.main([*plain, "--output", str(tmp_path / "p")]) == 0
    (label,) = json.loads((tmp_path / "p" / "summary.json").read_text())["results"]
    assert replies(tmp_path / "p" / f"{label}.jsonl") == base_r


# --------------------------------------------------------------------------------------------
# The embedded SmolLM2 on CPU (transformers, GGUF through the trainer's load_model)


@pytest.mark.slow
def test_smollm2_cpu_end_to_end_limit_3(tmp_path):
    """Instruction mode through SmolLM2's chat template, as an instruct model is asked."""
    out = tmp_path / "smol"
    rc = ev.main(
        [
            "--limit",
            "3",
            "--prompt-format",
            "chat_template",
            "--max-new-tokens",
            "80",
            "--batch-size",
            "3",
            "--device",
            "cpu",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    ((label, res),) = summary["results"].items()
    assert res["problems"] == 3 and res["samples"] == 3
    assert sum(res["statuses"].values()) == 3
    assert res["generation"]["tokens"] > 0 and res["generation"]["backend"] == "transformers"
    rows = [json.loads(x) for x in (out / f"{label}.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    for r, p in zip(rows, he.load_problems(limit=3), strict=True):
        s = r["samples"][0]
        assert s["reply"].strip(), "the model wrote nothing"
        # SmolLM2-Instruct answers with a fenced function: it was found and taken whole.
        assert s["kind"] == "function" and f"def {p['entry_point']}(" in s["code"]
        assert "```" not in s["code"]
        assert s["status"] in ("passed", "failed", "error", "timeout", "memory")


@pytest.mark.slow
def test_endpoint_against_the_embedded_llama_cpp_server(embedded_server, tmp_path):
    """The completion API of a real llama.cpp server: stop sequences end each completion."""
    out = tmp_path / "srv"
    rc = ev.main(
        [
            "--endpoint",
            embedded_server.base_url,
            "--limit",
            "2",
            "--max-new-tokens",
            "64",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads((out / "summary.json").read_text())["results"]
    ((label, r),) = res.items()
    assert r["problems"] == 2 and r["generation"]["backend"] == "endpoint"
    for line in (out / f"{label}.jsonl").read_text().splitlines():
        code = json.loads(line)["samples"][0]["code"]
        assert all(stop not in code for stop in he.STOP_SEQUENCES)


def test_without_an_adapter_an_instruct_model_is_asked_in_its_chat_template(tiny_model, tmp_path):
    """No adapter, no flags: a model whose tokenizer has a chat template is prompted with it
    (SmolLM2-Instruct: 8 of 164 that way, 0 continuing the raw prompt); one without a template
    continues the HumanEval prompt. The summary and the table say which."""
    import shutil

    from finetune.data import format_prompt
    from finetune.model import load_tokenizer

    common = ["--limit", "1", "--max-new-tokens", "4", "--device", "cpu", "--timeout", "20"]
    assert ev.main(["--model", str(tiny_model), *common, "--output", str(tmp_path / "c")]) == 0
    doc = json.loads((tmp_path / "c" / "summary.json").read_text())
    ((label, res),) = doc["results"].items()
    assert doc["settings"]["prompt_mode"] == "instruction"
    assert res["prompt"] == "chat_template" and res["prompt_format"] == "chat_template"
    tok = load_tokenizer(tiny_model)
    args = ev.build_parser().parse_args(["--model", str(tiny_model)])
    mode, fmt = ev.prompt_form(args, tok)
    (prompt,) = ev.build_prompts(he.load_problems(limit=1), mode, tok, fmt)
    assert prompt == format_prompt(*he.instruction_for(he.load_problems(limit=1)[0]), tok, fmt)
    assert prompt.startswith("<|user|>\n") and prompt.endswith("<|assistant|>\n")

    plain = tmp_path / "no-template"
    shutil.copytree(tiny_model, plain)
    for f in ("chat_template.jinja", "chat_template.json"):
        (plain / f).unlink(missing_ok=True)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert ev.main(["--model", str(plain), *common, "--output", str(tmp_path / "p")]) == 0
    doc = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert doc["settings"]["prompt_mode"] == "completion"
    assert [r["prompt"] for r in doc["results"].values()] == ["completion"]
    # --prompt-mode completion still continues the raw prompt of a chat model.
    r = ["--model", str(tiny_model), "--prompt-mode", "completion", *common]
    assert ev.main([*r, "--output", str(tmp_path / "r")]) == 0
    doc = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert doc["settings"]["prompt"] == ["completion"]
