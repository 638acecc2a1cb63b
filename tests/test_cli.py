"""The command line as a user runs it: files in, files out, exit codes, messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent


def write_jsonl(p: Path, rows: list[dict]) -> Path:
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x]


def test_help_is_instant_and_imports_nothing_heavy():
    code = "import sys; from pipeline.cli import build_parser; build_parser(); print(sorted(m for m in ('torch', 'transformers', 'openai', 'rouge_score') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_dedup_command_with_against(tmp_path):
    inp = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "a", "instruction": "Write a poem about the sea."},
            {"id": "b", "instruction": "Write a poem about the sea!"},
            {"id": "c", "instruction": "List three prime numbers."},
            {"id": "d", "instruction": "Give me three tips for sleeping better at night."},
        ],
    )
    against = write_jsonl(
        tmp_path / "seeds.jsonl", [{"id": "s", "instruction": "List three prime numbers"}]
    )
    out = tmp_path / "out.jsonl"
    assert main(["dedup", str(inp), "--output", str(out), "--against", str(against)]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["a", "d"]
    rej = {r["id"]: r["reject"] for r in read_jsonl(tmp_path / "out.rejected.jsonl")}
    assert rej["b"]["nearest_id"] == "a" and rej["b"]["reason"] == "rouge_duplicate"
    assert rej["c"]["nearest_id"] == "s" and rej["c"]["score"] == 1.0


def test_dedup_command_names_the_bad_line_of_its_input(tmp_path, capsys):
    # The input is a re-readable RecordFile (the Ray engine reads it twice); a bad line is
    # still reported by file and line.
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "instruction": "Write a poem."}\n\n[1, 2]\n', encoding="utf-8")
    assert main(["dedup", str(inp), "-o", str(tmp_path / "out.jsonl")]) == 1
    assert f"{inp}:3: expected a JSON object, got list" in capsys.readouterr().err


def test_filter_command_counts_reasons(tmp_path, capsys):
    inp = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {
                "id": "1",
                "instruction": "Summarize the following paragraph in one sentence.",
                "input": "The council met on Monday and voted to repair the old bridge before winter.",
                "output": "The council voted on Monday to fix the bridge before winter.",
            },
            {"id": "2", "instruction": "Hi", "input": "", "output": "Hello."},
            {
                "id": "3",
                "instruction": "Describe the attached image of a cat in detail.",
                "input": "",
                "output": "A cat.",
            },
        ],
    )
    out = tmp_path / "out.jsonl"
    assert main(["filter", str(inp), "--output", str(out)]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["1"]
    reasons = {r["id"]: r["reject"]["reason"] for r in read_jsonl(tmp_path / "out.rejected.jsonl")}
    assert reasons["2"] == "too_short"
    assert reasons["3"] in {"blocklisted_word", "unseen_reference"}
    assert "too_short=1" in capsys.readouterr().err


def test_verify_seeds_passes_and_a_broken_seed_fails(tmp_path, capsys):
    assert main(["verify-seeds", "seed_tasks.jsonl"]) == 0
    err = capsys.readouterr().err
    assert "code seeds pass their own tests" in err and "FAIL" not in err
    broken = {
        "id": "b1",
        "name": "b",
        "instruction": "Write a Python function `double(x)` that doubles x.",
        "instances": [{"input": "", "output": "def double(x):\n    return x + 2\n"}],
        "is_classification": False,
        "language": "python",
        "tests": "assert double(2) == 4\nassert double(5) == 10\n",
    }
    p = write_jsonl(tmp_path / "seeds.jsonl", [broken])
    assert main(["verify-seeds", str(p)]) == 1
    assert "FAIL b1" in capsys.readouterr().err


def test_verify_command_keeps_the_first_passing_candidate(tmp_path):
    rec = {
        "id": "p1",
        "instruction": "Write `inc(x)`.",
        "language": "python",
        "tests": "assert inc(1) == 2\nassert inc(-1) == 0\n",
        "candidates": [
            "def inc(x):\n    return x - 1\n",
            "def inc(x):\n    return x + 1\n",
            "def inc(x):\n    return 1 + x\n",
        ],
    }
    inp = write_jsonl(tmp_path / "in.jsonl", [rec])
    out = tmp_path / "out.jsonl"
    assert main(["verify", str(inp), "--output", str(out), "--timeout", "5"]) == 0
    [kept] = read_jsonl(out)
    assert kept["verification"]["passed_index"] == 1 and kept["output"] == rec["candidates"][1]
    assert [s["status"] for s in kept["verification"]["statuses"]][:2] == ["failed", "passed"]


def test_export_command_rebuilds_data_json(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    write_jsonl(
        run / "03_filter.jsonl",
        [
            {"id": "1", "instruction": "q", "input": "", "output": "a"},
            {"id": "2", "instruction": "q2", "input": "i", "output": "a2"},
        ],
    )
    assert main(["export", "--run", str(run)]) == 0
    assert json.loads((run / "data.json").read_text()) == [
        {"instruction": "q", "input": "", "output": "a"},
        {"instruction": "q2", "input": "i", "output": "a2"},
    ]
    assert len(read_jsonl(run / "messages.jsonl")) == 2


def test_missing_input_file_is_a_clear_error(tmp_path, capsys):
    assert main(["dedup", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o.jsonl")]) == 1
    assert "nope.jsonl: no such file" in capsys.readouterr().err


def test_readme_config_table_is_the_config_command_s(capsys):
    # The README's configuration table is `python -m pipeline config --markdown`, verbatim: a
    # key added, renamed or given a new default without regenerating it fails here.
    assert main(["config", "--markdown"]) == 0
    table = capsys.readouterr().out.strip()
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert table.count("\n") > 100 and table in readme, (
        "README.md's config table is stale: replace it with `python -m pipeline config --markdown`"
    )
