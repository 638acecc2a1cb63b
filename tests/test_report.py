"""Tests for the pipeline/report package: verb/object extraction, nearest-neighbour ROUGE-L,
reading run directories (with and without stats.json, torn and malformed lines, each kind of
run by its own stage-file table: answer, solve and export stages, ingest), the rendered page
(escaping, self-containment, links to rejected examples, the books line, code-mode figures, two
runs side by side) and the page as headless Chromium draws it (required when CI=true)."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipeline.config import ExportConfig
from pipeline.records import RecordError
from pipeline.report import load_run, main, write_report
from pipeline.report.analysis import nearest_rouge_l, verb_object
from pipeline.rundir import STAGE_FILES, StageFiles, books_errors, resolve_run_dir, write_export
from stages.base import StageStats

# --------------------------------------------------------------------------------------------
# A realistic run directory, written the way the pipeline writes one.

TOPICS = ["autumn leaves", "remote work", "a rainy city", "saving money", "learning to swim",
          "the night sky", "a first job", "composting at home", "a busy kitchen", "old trains",
          "bees and flowers", "mountain hiking", "public libraries", "morning routines",
          "electric cars", "a lost cat", "winter markets", "ocean tides", "board games",
          "space telescopes"]  # fmt: skip
TEMPLATES = [
    ("Write a short poem about {t}.", "", "Soft words on {t},\nturning slowly in the light."),
    (
        "Please explain why {t} matters to many people.",
        "",
        "Many people care about {t} because it shapes daily life.",
    ),
    ("Give three tips for {t}.", "", "1. Start small.\n2. Keep notes on {t}.\n3. Ask for help."),
    (
        "Summarize the following paragraph.",
        "A long paragraph about {t} and its history.",
        "It is about {t}.",
    ),
    ("Classify the sentiment of this review as positive or negative.", "I loved {t}!", "positive"),
    ("Can you suggest a title for a blog post about {t}?", "", "Notes on {t}"),
    ("Translate the sentence into French.", "I like {t}.", "J'aime {t}."),
    (
        "Given a list of facts about {t}, find the most surprising one.",
        "fact one; fact two",
        "fact two",
    ),
    ("What is the main benefit of {t}?", "", "The main benefit of {t} is calm."),
    ("Create a shopping list for {t}.", "", "- bread\n- tea"),
]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )


def _stage(total: int, kept: int, dropped: dict, seconds: float, extra: dict | None = None) -> dict:
    d = {
        "total": total,
        "kept": kept,
        "rejected": sum(dropped.values()),
        "dropped": dropped,
        "seconds": seconds,
    }
    return d | ({"extra": extra} if extra else {})


def make_general_run(root: Path, name: str = "general-run", n: int = 60, seed: int = 1) -> Path:
    """A general-mode run: n generated records, some rejected at generate, dedup and filter."""
    rng = random.Random(seed)
    run = root / name
    run.mkdir(parents=True)
    usage = {"prompt_tokens": 310, "completion_tokens": 420}
    seeds = [
        {"id": f"seed_{i}", "instruction": tpl.format(t=TOPICS[i]), "input": inp, "output": out}
        for i, (tpl, inp, out) in enumerate(TEMPLATES)
    ]
    generated = []
    for i in range(n):
        tpl, inp, out = TEMPLATES[i % len(TEMPLATES)]
        t = rng.choice(TOPICS)
        generated.append(
            {
                "id": f"gen_{i:04d}",
                "instruction": tpl.format(t=t),
                "input": inp.format(t=t),
                "output": out.format(t=t),
                "meta": {"usage": usage, "seed_ids": ["seed_1"]},
            }
        )
    # Hostile text in a kept record: the page must show it, never run it.
    generated[50]["output"] = "<script>alert('pwned')</script> and </pre><b>bold?</b>"
    unparseable = [
        {
            "id": f"raw_{i}",
            "instruction": "",
            "input": "",
            "output": "",
            "reject": {
                "stage": "generate",
                "reason": "unparseable_reply",
                "raw": "1. Instruction: <incomplete",
            },
        }
        for i in range(4)
    ]
    dedup_rej = [
        g
        | {
            "reject": {
                "stage": "dedup",
                "reason": "rouge_duplicate",
                "nearest_id": "gen_0000",
                "score": 0.83,
            }
        }
        for g in generated[50:58]
    ]
    after_dedup = generated[:50] + generated[58:]
    filt_rej = []
    for g in after_dedup[40:45]:
        filt_rej.append(
            g | {"instruction": "Draw it.", "reject": {"stage": "filter", "reason": "too_short"}}
        )
    for g in after_dedup[45:47]:
        filt_rej.append(
            g | {"reject": {"stage": "filter", "reason": "blocklisted_word", "word": "image"}}
        )
    kept = after_dedup[:40] + after_dedup[47:]
    _write_jsonl(run / "00_seeds.jsonl", seeds)
    _write_jsonl(run / "01_generated.jsonl", generated)
    _write_jsonl(run / "01_generated.rejected.jsonl", unparseable)
    _write_jsonl(run / "02_dedup.jsonl", after_dedup)
    _write_jsonl(run / "02_dedup.rejected.jsonl", dedup_rej)
    _write_jsonl(run / "03_filter.jsonl", kept)
    _write_jsonl(run / "03_filter.rejected.jsonl", filt_rej)
    data = [{k: r[k] for k in ("instruction", "input", "output")} for r in kept]
    (run / "data.json").write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    _write_jsonl(
        run / "messages.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": d["instruction"]},
                    {"role": "assistant", "content": d["output"]},
                ]
            }
            for d in data
        ],
    )
    (run / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "run": name,
                "llm": {"model": "smollm2-135m-instruct"},
                "generation": {"mode": "general", "num": 60, "temperature": 0.9},
                "dedup": {"threshold": 0.7, "field": "instruction"},
            }
        ),
        encoding="utf-8",
    )
    requests = 14
    stats = {
        "run": name,
        "mode": "general",
        "started": "2025-01-02T03:04:05",
        "wall_seconds": 95.4,
        "stopped_reason": None,
        "stages": {
            "seeds": _stage(len(seeds), len(seeds), {}, 0.01),
            "generate": _stage(
                n + len(unparseable), n, {"unparseable_reply": len(unparseable)}, 88.2
            ),
            "dedup": _stage(n, len(after_dedup), {"rouge_duplicate": len(dedup_rej)}, 1.3),
            "filter": _stage(
                len(after_dedup), len(kept), {"too_short": 5, "blocklisted_word": 2}, 0.2
            ),
            "export": _stage(len(kept), len(kept), {}, 0.05),
        },
        "llm": {
            "requests": requests,
            "cached": 2,
            "failed": 0,
            "prompt_tokens": requests * 310,
            "completion_tokens": requests * 420,
            "cost": 0.0042,
            "by_stage": {
                "generate": {
                    "requests": requests,
                    "prompt_tokens": requests * 310,
                    "completion_tokens": requests * 420,
                    "cost": 0.0042,
                }
            },
        },
        "per_kept_record": {
            "prompt_tokens": requests * 310 / len(kept),
            "completion_tokens": requests * 420 / len(kept),
            "cost": 0.0042 / len(kept),
        },
    }
    (run / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
    return run


FUNCS = [
    ("add", "two numbers", "a + b"),
    ("reverse_words", "a sentence", "' '.join(s.split()[::-1])"),
    ("is_palindrome", "a string", "s == s[::-1]"),
    ("count_vowels", "a string", "sum(c in 'aeiou' for c in s)"),
    ("flatten", "a nested list", "[x for y in xs for x in y]"),
    ("median", "a list of numbers", "sorted(xs)[len(xs)//2]"),
]
CODE_STATUSES = [  # per problem: candidate statuses, the verify outcome
    ["passed", "failed", "passed", "passed"],
    ["failed", "passed", "error", "passed"],
    ["failed", "failed", "failed", "failed"],
    ["passed", "passed", "passed", "passed"],
    ["timeout", "passed", "failed", "memory"],
    ["rejected", "rejected", "rejected", "rejected"],
    ["error", "error", "failed", "passed"],
    ["failed", "timeout", "failed", "failed"],
    ["passed", "failed", "failed", "failed"],
    ["passed", "passed"],
]


def make_code_run(root: Path, name: str = "code-run") -> Path:
    """A code-mode run: problems with tests, candidates and per-candidate statuses."""
    run = root / name
    run.mkdir(parents=True)
    problems = []
    for i, statuses in enumerate(CODE_STATUSES):
        fn, what, body = FUNCS[i % len(FUNCS)]
        cands = [f"def {fn}(x):\n    return {body}  # variant {j}" for j in range(len(statuses))]
        passed = next((j for j, s in enumerate(statuses) if s == "passed"), -1)
        problems.append(
            {
                "id": f"code_{i:03d}",
                "language": "python",
                "instruction": f"Write a Python function `{fn}` that takes {what} and returns it.",
                "input": "",
                "output": cands[passed] if passed >= 0 else "",
                "tests": f"assert {fn}(1) is not None",
                "candidates": cands,
                "verification": {
                    "passed_index": passed,
                    "statuses": [
                        {"status": s, "detail": "AssertionError" if s == "failed" else ""}
                        for s in statuses
                    ],
                },
                "meta": {"usage": {"prompt_tokens": 200, "completion_tokens": 300}},
            }
        )
    kept = [p for p in problems if p["verification"]["passed_index"] >= 0]
    rejected = []
    for p in problems:
        if p["verification"]["passed_index"] < 0:
            st = {s["status"] for s in p["verification"]["statuses"]}
            reason = "vacuous_tests" if st == {"rejected"} else "tests_failed"
            rejected.append(p | {"reject": {"stage": "verify", "reason": reason}})
    _write_jsonl(
        run / "00_seeds.jsonl",
        [{"id": "s0", "instruction": "Write a function.", "input": "", "output": ""}],
    )
    _write_jsonl(run / "01_generated.jsonl", problems)
    _write_jsonl(run / "02_dedup.jsonl", problems)
    _write_jsonl(run / "03_filter.jsonl", problems)
    _write_jsonl(run / "04_verify.jsonl", kept)
    _write_jsonl(run / "04_verify.rejected.jsonl", rejected)
    data = [{k: r[k] for k in ("instruction", "input", "output")} for r in kept]
    (run / "data.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    n_run = sum(len(s) for s in CODE_STATUSES)
    n_pass = sum(s.count("passed") for s in CODE_STATUSES)
    reasons = Counter(r["reject"]["reason"] for r in rejected)
    stats = {
        "run": name,
        "mode": "code",
        "wall_seconds": 40.0,
        "stopped_reason": "budget",
        "stages": {
            "generate": _stage(len(problems), len(problems), {}, 30.0),
            "verify": _stage(
                len(problems),
                len(kept),
                dict(reasons),
                9.5,
                {"candidates_run": n_run, "candidates_passed": n_pass},
            ),
        },
        "llm": {
            "requests": 30,
            "prompt_tokens": 6000,
            "completion_tokens": 9000,
            "cost": 0.0,
            "by_stage": {
                "generate": {
                    "requests": 10,
                    "prompt_tokens": 2000,
                    "completion_tokens": 3000,
                    "cost": 0.0,
                },
                "tests": {
                    "requests": 10,
                    "prompt_tokens": 2000,
                    "completion_tokens": 3000,
                    "cost": 0.0,
                },
                "solutions": {
                    "requests": 10,
                    "prompt_tokens": 2000,
                    "completion_tokens": 3000,
                    "cost": 0.0,
                },
            },
        },
    }
    (run / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
    return run


# --------------------------------------------------------------------------------------------
# verb_object and nearest_rouge_l


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("Write a short poem about autumn.", ("write", "poem")),
        ("Please write a Python function that reverses a string.", ("write", "function")),
        ("Can you please give me three tips for saving money?", ("give", "tips")),
        (
            "I want you to classify the following sentence as positive or negative.",
            ("classify", "sentence"),
        ),
        ("Given a list of numbers, find the largest one.", ("find", "one")),
        ("Given a list of integers, return the sum of the even ones.", ("return", "sum")),
        ("What is the capital of France?", ("what", "capital")),
        ("Explain why the sky is blue.", ("explain", None)),
        ("Your task is to summarize the article below.", ("summarize", "article")),
        ("Given the two lists, A and B, create a new list C from them.", ("create", "list")),
        ("You are given a question. The task is to evaluate each answer.", ("evaluate", "answer")),
        ("Come up with a name for a bakery.", ("come up with", "name")),
        ("Tell me a joke about cats.", ("tell", "joke")),
        ("What's the output of this code?", ("what", "output")),
        ("What would be the output of the following Python code?", ("what", "output")),
        ("You need to convert the JSON below into a Python list.", ("convert", "json")),
        ("The following text has errors.", (None, None)),
        ("", (None, None)),
        ("1. Write a haiku", (None, None)),
    ],
)
def test_verb_object(instruction, expected):
    assert verb_object(instruction) == expected


def test_nearest_rouge_l_matches_rouge_score():
    from rouge_score import rouge_scorer

    texts = [
        "Write a poem about the sea.",
        "Write a short poem about the sea at night.",
        "Explain how a refrigerator keeps food cold.",
        "List three uses of baking soda.",
        "Write a story about the sea.",
        "List five uses for vinegar at home.",
    ]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    expected = [
        max(scorer.score(o, t)["rougeL"].fmeasure for o in texts if o is not t) for t in texts
    ]
    assert nearest_rouge_l(texts) == pytest.approx(expected, abs=1e-6)


def test_nearest_rouge_l_caps_and_handles_tiny_inputs():
    texts = [f"Describe item number {i} in the catalogue carefully." for i in range(50)]
    assert len(nearest_rouge_l(texts, cap=20)) == 20
    assert nearest_rouge_l(["only one"]) == []
    assert nearest_rouge_l(["", "!!!"]) == []


# --------------------------------------------------------------------------------------------
# Reading runs


def test_load_run_uses_stats_and_collects_examples(tmp_path):
    run = load_run(make_general_run(tmp_path))
    assert run.mode == "general" and run.name == "general-run"
    assert list(run.stages) == ["seeds", "generate", "dedup", "filter", "export"]
    assert run.stages["dedup"]["rejected"] == 8
    assert run.stages["filter"]["dropped"] == Counter({"too_short": 5, "blocklisted_word": 2})
    assert len(run.examples["dedup"]["rouge_duplicate"]) == 3  # capped examples
    assert run.examples["generate"]["unparseable_reply"][0]["reject"]["raw"].startswith(
        "1. Instruction"
    )
    assert len(run.kept) == 45 and run.kept_source == "data.json"


def test_load_run_without_stats_counts_files(tmp_path):
    d = make_general_run(tmp_path)
    (d / "stats.json").unlink()
    (d / "config.yaml").unlink()
    run = load_run(d)
    assert run.stages["dedup"] == {
        "total": 60,
        "kept": 52,
        "rejected": 8,
        "dropped": Counter({"rouge_duplicate": 8}),
        "seconds": 0.0,
        "extra": {},
    }
    assert run.stages["filter"]["dropped"] == Counter({"too_short": 5, "blocklisted_word": 2})
    out = write_report([d])
    assert "rouge_duplicate" in out.read_text(encoding="utf-8")


def test_torn_last_line_is_skipped_and_noted(tmp_path):
    d = make_general_run(tmp_path)
    with open(d / "03_filter.rejected.jsonl", "a", encoding="utf-8") as f:
        f.write('{"id": "torn", "instruction": "Wri')
    run = load_run(d)
    assert sum(len(x) for x in run.examples["filter"].values()) == 5  # 3 too_short + 2 blocklisted
    assert any("03_filter.rejected.jsonl" in n and "torn" in n for n in run.notes)
    assert "torn last line" in write_report([d]).read_text(encoding="utf-8")


def test_malformed_line_names_file_line_and_field(tmp_path):
    d = make_general_run(tmp_path)
    lines = (d / "02_dedup.rejected.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = "{not json\n"
    (d / "02_dedup.rejected.jsonl").write_text("".join(lines), encoding="utf-8")
    with pytest.raises(RecordError, match=r"02_dedup\.rejected\.jsonl:3: not valid JSON"):
        load_run(d)
    d2 = make_general_run(tmp_path, "other")
    recs = [
        json.loads(x) for x in (d2 / "03_filter.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    recs[4]["output"] = ["not", "a", "string"]
    _write_jsonl(d2 / "03_filter.jsonl", recs)
    with pytest.raises(
        RecordError, match=r"03_filter\.jsonl:5: field 'output': expected str, got list"
    ):
        load_run(d2)


def test_missing_run_dir_and_bad_stats(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        write_report([tmp_path / "nope"])
    d = make_general_run(tmp_path)
    (d / "stats.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(ValueError, match=r"stats\.json:1: not valid JSON"):
        load_run(d)


# --------------------------------------------------------------------------------------------
# The page


def _charts(page: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(
            r'<img class="chart"[^>]*src="data:image/svg\+xml;base64,([^"]+)"', page
        )
    ]


def test_general_report_content(tmp_path):
    d = make_general_run(tmp_path)
    out = write_report([d])
    assert out == d / "report.html"
    page = out.read_text(encoding="utf-8")
    # Self-contained: no fetch of anything, no script at all.
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "<script" not in page and "<link" not in page
    # Hostile text (in a dedup-rejected record, whose examples are always shown) is escaped.
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    assert "</pre><b>bold?</b>" not in page
    # Every reason link points at an element that exists, and each reason's examples are there.
    ids = set(re.findall(r'id="([^"]+)"', page))
    links = re.findall(r'href="#([^"]+)"', page)
    assert links and all(link in ids for link in links)
    for reason in ("unparseable_reply", "rouge_duplicate", "too_short", "blocklisted_word"):
        assert f"<code>{reason}</code>" in page
    assert "r-0-rej-dedup-rouge_duplicate" in ids
    block = page.split('id="r-0-rej-filter-too_short"', 1)[1].split("</details>", 1)[0]
    assert block.count('class="rec"') == 3 and "Draw it." in block
    # Charts (funnel, reasons, verbs, ROUGE-L, lengths, tokens, time): SVGs with drawing in them.
    charts = _charts(page)
    assert len(charts) == 7
    for svg in charts:
        assert svg.startswith(b"<?xml") and b"<svg" in svg and svg.count(b"<path") >= 3
    # Figures computed from the run.
    assert "Records with an input: <b>" in page
    with_input = sum(1 for r in load_run(d).kept if r["input"])
    assert f"<b>{with_input:,}</b> of 45" in page
    assert "$0.0042" in page and "Code verification" not in page
    assert "write poem" in page  # the verb-object table


def test_labels_from_data_are_not_mathtext(tmp_path):
    """Reasons become chart labels; a "$" in one must not break matplotlib's text parser."""
    d = make_general_run(tmp_path)
    stats = json.loads((d / "stats.json").read_text(encoding="utf-8"))
    stats["stages"]["filter"]["dropped"] = {"price_$5_$x^{2": 5, "blocklisted_word": 2}
    (d / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
    page = write_report([d]).read_text(encoding="utf-8")
    assert "<code>price_$5_$x^{2</code>" in page
    assert any(b"price_$5_$x^{2" in svg for svg in _charts(page))


def test_code_report_figures(tmp_path):
    d = make_code_run(tmp_path)
    page = write_report([d]).read_text(encoding="utf-8")
    n_run = sum(len(s) for s in CODE_STATUSES)
    n_pass = sum(s.count("passed") for s in CODE_STATUSES)
    solved = sum("passed" in s for s in CODE_STATUSES)
    assert f"<td>candidates passed</td><td>{n_pass:,} ({100 * n_pass / n_run:.1f}%)</td>" in page
    assert (
        f"<td>problems kept (a candidate passed)</td>"
        f"<td>{solved:,} ({100 * solved / len(CODE_STATUSES):.1f}%)</td>" in page
    )
    assert "<td>rejected for vacuous tests</td><td>1</td>" in page
    assert "Stopped early: budget" in page
    assert "Code verification" in page and "vacuous_tests" in page
    # status counts, candidates per problem, first passing candidate: three more charts
    assert len(_charts(page)) >= 8
    run = load_run(d)
    assert len(run.verified) == len(CODE_STATUSES)
    # The sample shows code records with their tests (from 04_verify.jsonl, not data.json).
    sample = page.split('id="sample"', 1)[1]
    assert sample.count("<b>tests</b>") == solved


def test_two_runs_side_by_side(tmp_path):
    a = make_general_run(tmp_path, "run-a", n=60, seed=1)
    b = make_code_run(tmp_path, "run-b")
    out = write_report([a, b])
    assert out == a / "report-vs-run-b.html"
    page = out.read_text(encoding="utf-8")
    assert 'id="compare"' in page and page.count('<div class="col">') >= 8
    table = page.split('id="compare"', 1)[1].split("</table>", 1)[0]
    assert "<th>run-a</th><th>run-b</th>" in table
    solved = sum("passed" in s for s in CODE_STATUSES)
    assert f"<td>kept records</td><td>{len(load_run(a).kept)}</td><td>{solved}</td>" in table
    # Anchors stay unique across the two columns.
    ids = re.findall(r'id="([^"]+)"', page)
    assert len(ids) == len(set(ids))


def test_main_and_resolve_run_dir(tmp_path, capsys):
    d = make_general_run(tmp_path / "outputs", "named")
    assert resolve_run_dir("named", tmp_path / "outputs") == tmp_path / "outputs" / "named"
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        resolve_run_dir("missing", tmp_path / "outputs")
    assert (
        main(
            ["named", "--output-dir", str(tmp_path / "outputs"), "--out", str(tmp_path / "r.html")]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(tmp_path / "r.html")
    assert (tmp_path / "r.html").stat().st_size > 10_000 and not (d / "report.html").exists()


# --------------------------------------------------------------------------------------------
# Runs written by the pipeline's own writers (rundir.StageFiles, write_export, books_errors):
# the answer, solve and export stages of the generate layout, and an ingest run's own layout.


def _pipe(
    run_dir: Path,
    mode: str,
    records: list[dict],
    stages: list[tuple[str, Callable[[dict], str | None]]],
    *,
    limit: int | None = None,
    validation_fraction: float = 0.0,
    before: dict[str, StageStats] | None = None,
) -> dict:
    """Push ``records`` through ``stages`` (name, reject reason or None per record) and export,
    writing every file and stats.json as a run does; returns the stats dict written."""
    run_dir.mkdir(parents=True)
    stats: dict[str, StageStats] = dict(before or {})
    with StageFiles(run_dir, mode) as files:
        recs = records
        for name, decide in stages:
            st = stats[name] = files.stats(name)
            # Generation's records are born in it; every later stage admits what it is given.
            source = recs if name == "generate" else st.admit(recs)
            kept = []
            for rec in source:
                reason = decide(rec)
                if reason:
                    st.drop(rec, reason)
                else:
                    kept.append(st.keep(rec))
            recs = kept
        e_stats = stats["export"] = files.stats("export", kept_file=False)
        write_export(
            run_dir,
            recs,
            ExportConfig(validation_fraction=validation_fraction),
            e_stats,
            seed=0,
            limit=limit,
        )
    errors = books_errors(run_dir, mode, stats)
    assert errors == []  # the fixture itself must balance
    d = {
        "run": run_dir.name,
        "mode": mode,
        "books": "balanced",
        "stages": {name: s.to_dict() for name, s in stats.items()},
    }
    (run_dir / "stats.json").write_text(json.dumps(d), encoding="utf-8")
    return d


def _records(n: int, prefix: str = "g") -> list[dict]:
    return [
        {
            "id": f"{prefix}{i:03d}",
            "instruction": TEMPLATES[i % len(TEMPLATES)][0].format(t=TOPICS[i % len(TOPICS)]),
            "input": "",
            "output": f"An answer about {TOPICS[i % len(TOPICS)]}.",
            "meta": {},
        }
        for i in range(n)
    ]


def _by_index(reasons: dict[int, str]) -> Callable[[dict], str | None]:
    return lambda rec: reasons.get(int(rec["id"][-3:]))


def make_chat_run(root: Path, name: str = "chat-run") -> Path:
    """General mode with answer_mode=chat: generate, dedup, answer, filter, export; export
    rejects records without an output and those past the target, and splits off validation."""
    recs = _records(30)
    for i in (20, 21):
        recs[i]["output"] = "  "
    _pipe(
        root / name,
        "general",
        recs,
        [
            ("generate", _by_index({0: "unparseable_reply", 1: "unparseable_reply"})),
            (
                "dedup",
                _by_index({2: "rouge_duplicate", 3: "rouge_duplicate", 4: "rouge_duplicate"}),
            ),
            ("answer", _by_index({5: "request_failed", 6: "request_failed"})),
            ("filter", _by_index({7: "too_short", 8: "too_short", 9: "too_short"})),
        ],
        limit=6,
        validation_fraction=0.34,
    )
    return root / name


def make_solve_run(root: Path, name: str = "solve-run") -> Path:
    """Code mode: generate, dedup, filter, solve (tests and candidates attached), verify,
    export (one verified problem past the target)."""
    recs = _records(12, "c")
    for i, r in enumerate(recs):
        r["language"] = "python"
        r["output"] = ""
        if i >= 3:  # solve attaches tests and candidates to what it does not reject
            r["tests"] = f"assert f({i}) == {i}"
            r["candidates"] = [f"def f(x):\n    return x  # {j}" for j in range(3)]
            passed = -1 if i in (4, 5) else i % 3
            r["verification"] = {
                "passed_index": passed,
                "statuses": [
                    {"status": "passed" if j == passed else "failed", "detail": ""}
                    for j in range(3)
                ],
            }
            if passed >= 0:
                r["output"] = r["candidates"][passed]
    _pipe(
        root / name,
        "code",
        recs,
        [
            ("generate", lambda r: None),
            ("dedup", _by_index({0: "rouge_duplicate"})),
            ("filter", lambda r: None),
            ("solve", _by_index({1: "no_tests", 2: "no_candidates"})),
            ("verify", _by_index({4: "tests_failed", 5: "tests_failed"})),
        ],
        limit=6,
    )
    return root / name


def make_ingest_run(root: Path, name: str = "ingest-run") -> Path:
    """An ingest run: walk (files, no stage file), generate, ground, dedup, filter, export: its
    ``03_dedup`` and ``04_filter`` are not the generate layout's."""
    walk = StageStats(stage="walk")
    for i in range(5):
        walk.keep({"id": f"file{i}.md"})
    walk.drop({"id": "secret.env"}, "credential")
    recs = _records(14, "q")
    for r in recs:
        r["meta"] = {"source": "docs/guide.md", "lines": [1, 9]}
    _pipe(
        root / name,
        "ingest",
        recs,
        [
            ("generate", _by_index({0: "unparseable_reply"})),
            ("ground", _by_index({1: "ungrounded", 2: "ungrounded"})),
            ("dedup", _by_index({3: "rouge_duplicate"})),
            ("filter", _by_index({4: "too_short", 5: "too_short", 6: "blocklisted_word"})),
        ],
        before={"walk": walk},
    )
    (root / name / "ingest_report.json").write_text("{}", encoding="utf-8")
    return root / name


def _funnel_rows(page: str) -> list[list[str]]:
    section = page.split('<section id="funnel">', 1)[1].split("</section>", 1)[0]
    body = section.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<td>(.*?)</td>", row) for row in body.split("</tr>") if row]


def test_answer_and_export_stages_in_table_order(tmp_path):
    d = make_chat_run(tmp_path)
    stats = json.loads((d / "stats.json").read_text(encoding="utf-8"))
    run = load_run(d)
    assert list(run.stages) == ["generate", "dedup", "answer", "filter", "export"]
    assert run.stages["answer"]["dropped"] == Counter({"request_failed": 2})
    assert run.stages["export"]["dropped"] == Counter({"over_target": 12, "empty_output": 2})
    assert run.stages["export"]["entered"] == 20 and run.stages["export"]["kept"] == 6
    # Export's kept records are both halves of the split.
    assert run.kept_source == "data.json + data.validation.json" and len(run.kept) == 6
    assert [r["id"] for r in run.examples["export"]["over_target"]] == ["g016", "g017", "g018"]

    page = write_report([d]).read_text(encoding="utf-8")
    rows = _funnel_rows(page)
    assert [r[0] for r in rows] == ["generate", "dedup", "answer", "filter", "export"]
    for row in rows:
        s = stats["stages"][row[0]]
        assert row[1:4] == [str(s.get("entered", s["total"])), str(s["kept"]), str(s["rejected"])]
    ids = set(re.findall(r'id="([^"]+)"', page))
    for stage, reason in [
        ("answer", "request_failed"),
        ("export", "over_target"),
        ("export", "empty_output"),
    ]:
        assert f'href="#r-0-rej-{stage}-{reason}"' in page and f"r-0-rej-{stage}-{reason}" in ids
    rejections = page.split('<section id="rejections">', 1)[1]
    assert rejections.index("<h3>answer</h3>") < rejections.index("<h3>filter</h3>")
    assert rejections.index("<h3>filter</h3>") < rejections.index("<h3>export</h3>")
    # The table orders the stages, not the order stats.json happens to list them in.
    stats["stages"] = dict(reversed(stats["stages"].items()))
    (d / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
    assert list(load_run(d).stages) == ["generate", "dedup", "answer", "filter", "export"]


def test_stage_files_alone_give_the_same_funnel(tmp_path):
    """Without stats.json the counts come from the files the table names, in its order."""
    d = make_chat_run(tmp_path)
    stats = json.loads((d / "stats.json").read_text(encoding="utf-8"))
    (d / "stats.json").unlink()
    run = load_run(d)
    assert list(run.stages) == ["generate", "dedup", "answer", "filter", "export"]
    for stage, s in run.stages.items():
        want = stats["stages"][stage]
        assert (s["total"], s["kept"], s["rejected"]) == (
            want["total"],
            want["kept"],
            want["rejected"],
        ), stage
        assert s["dropped"] == Counter(want["dropped"])


def test_solve_stage_and_exported_code_records(tmp_path):
    d = make_solve_run(tmp_path)
    run = load_run(d)
    assert run.mode == "code"
    assert list(run.stages) == ["generate", "dedup", "filter", "solve", "verify", "export"]
    assert run.stages["solve"]["dropped"] == Counter({"no_tests": 1, "no_candidates": 1})
    assert run.stages["export"]["dropped"] == Counter({"over_target": 1})
    # verify kept 7, export 6: the sample is the exported six as 04_verify holds them.
    assert len(run.last_stage) == 7 and len(run.kept) == 6
    assert [r["id"] for r in run.kept_full] == [f"c{i:03d}" for i in (3, 6, 7, 8, 9, 10)]
    page = write_report([d]).read_text(encoding="utf-8")
    assert [r[0] for r in _funnel_rows(page)] == [
        "generate",
        "dedup",
        "filter",
        "solve",
        "verify",
        "export",
    ]
    assert "<code>no_tests</code>" in page and "<code>over_target</code>" in page
    assert "<td>problems verified</td><td>9</td>" in page
    sample = page.split('id="sample"', 1)[1]
    assert sample.count("<b>tests</b>") == 6


def test_ingest_run_is_read_by_its_own_table(tmp_path):
    d = make_ingest_run(tmp_path)
    run = load_run(d)
    assert run.mode == "ingest" and run.layout == STAGE_FILES["ingest"]
    # walk is no stage file; it keeps its place before generate, as stats.json has it.
    assert list(run.stages) == ["walk", "generate", "ground", "dedup", "filter", "export"]
    assert run.verified == []  # 04_filter is ingest's filter stage, not verify records
    assert run.examples["filter"]["blocklisted_word"][0]["id"] == "q006"
    assert run.stages["ground"]["dropped"] == Counter({"ungrounded": 2})
    page = write_report([d]).read_text(encoding="utf-8")
    assert "Code verification" not in page
    assert [r[0] for r in _funnel_rows(page)] == list(run.stages)


@pytest.mark.parametrize("marker", ["ingest_report.json", "config.yaml", None])
def test_ingest_run_without_stats_is_known_by_its_files(tmp_path, marker):
    d = make_ingest_run(tmp_path)
    (d / "stats.json").unlink()
    (d / "ingest_report.json").unlink()
    if marker == "ingest_report.json":
        (d / marker).write_text("{}", encoding="utf-8")
    elif marker == "config.yaml":
        (d / marker).write_text(
            yaml.safe_dump({"generation": {"mode": "general"}, "ingest": {"kind": "qa"}}),
            encoding="utf-8",
        )
    run = load_run(d)
    assert run.mode == "ingest"
    assert list(run.stages) == ["generate", "ground", "dedup", "filter", "export"]
    # Kept counts come from ingest's own files (03_dedup.jsonl, 04_filter.jsonl).
    assert [run.stages[s]["kept"] for s in ("generate", "ground", "dedup", "filter")] == [
        13,
        11,
        10,
        7,
    ]
    assert run.verified == []


def test_judge_select_stages_and_strategy_section(tmp_path):
    """A run with a strategy mix and the judge: judge and select sit in the funnel in table
    order, and the judge's scores are read from the exported records' own meta."""
    from pipeline.card import strategy_funnel

    recs = _records(16)
    for i, r in enumerate(recs):
        r["meta"] = {"strategy": "evol" if i % 2 else "alpaca", "judge": {"score": 3 + i % 7}}
    d = tmp_path / "judged"
    stats = _pipe(
        d,
        "general",
        recs,
        [
            ("generate", lambda r: None),
            ("dedup", _by_index({0: "rouge_duplicate"})),
            ("filter", _by_index({1: "too_short"})),
            ("judge", _by_index({2: "below_min_score", 3: "below_min_score"})),
            ("select", _by_index({4: "too_similar", 5: "below_top_k"})),
        ],
        limit=8,
    )
    stats["by_strategy"] = strategy_funnel(d, "general", list(stats["stages"]))
    (d / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
    page = write_report([d]).read_text(encoding="utf-8")
    assert [r[0] for r in _funnel_rows(page)] == [
        "generate",
        "dedup",
        "filter",
        "judge",
        "select",
        "export",
    ]
    exported = recs[6:14]  # what select kept, up to the target
    scores = [r["meta"]["judge"]["score"] for r in exported]
    section = page.split('<section id="strategies">', 1)[1].split("</section>", 1)[0]
    assert f"judge: mean {sum(scores) / len(scores):.2f} over 8 records" in section
    for score in range(1, 11):
        assert f"<td>{score}</td><td>{scores.count(score)}</td>" in section
    assert "<td>evol</td><td>judge</td><td>6</td><td>1</td>" in section


def test_books_line_balanced_and_absent(tmp_path):
    page = write_report([make_chat_run(tmp_path)]).read_text(encoding="utf-8")
    summary = page.split('<section id="summary">', 1)[1].split("</section>", 1)[0]
    assert '<p class="books">Books: <b>balanced</b>' in summary
    assert "do not balance" not in page
    # A run whose stats.json predates the check says nothing about it.
    old = write_report([make_general_run(tmp_path)]).read_text(encoding="utf-8")
    assert "Books:" not in old and "do not balance" not in old


def test_books_warning_when_not_balanced(tmp_path):
    d = make_chat_run(tmp_path)
    # A record lost from a stage file after the stage counted it: what books_errors reports.
    lines = (d / "03_filter.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (d / "03_filter.jsonl").write_text("".join(lines[1:]), encoding="utf-8")
    stats = json.loads((d / "stats.json").read_text(encoding="utf-8"))
    counted = {n: StageStats.from_dict(n, s) for n, s in stats["stages"].items()}
    errors = books_errors(d, "general", counted)
    assert len(errors) == 1 and "stage filter" in errors[0]
    errors.append("stage <dedup>: 3 records entered & 2 left")
    stats["books"] = errors
    stats["stages"]["dedup"]["entered"] += 1
    (d / "stats.json").write_text(json.dumps(stats), encoding="utf-8")

    run = load_run(d)
    assert run.books == errors
    page = write_report([d]).read_text(encoding="utf-8")
    warn = page.split('<div class="warn books">', 1)[1].split("</div>", 1)[0]
    assert "The books do not balance</b> (2 problems)" in warn
    assert f"<li>{errors[0]}</li>" in warn
    assert "<li>stage &lt;dedup&gt;: 3 records entered &amp; 2 left</li>" in warn
    assert "Books: <b>balanced</b>" not in page
    dedup = next(r for r in _funnel_rows(page) if r[0] == "dedup")
    s = stats["stages"]["dedup"]
    assert dedup[1] == f'{s["entered"]} <span class="off">≠ {s["kept"] + s["rejected"]} out</span>'
    # Side by side, the compare table says which run's books are off.
    both = write_report([d, make_chat_run(tmp_path, "other")]).read_text(encoding="utf-8")
    table = both.split('id="compare"', 1)[1].split("</table>", 1)[0]
    assert '<td>books</td><td><b class="off">2 problems</b></td><td>balanced</td>' in table


# --------------------------------------------------------------------------------------------
# The page in a real browser

# Injected into a copy of the page: records, once everything has loaded, how many images
# decoded to a real size, so that --dump-dom shows what the browser actually drew.
_PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.body.setAttribute('data-probe',
    imgs.filter(i => i.complete && i.naturalWidth > 50 && i.naturalHeight > 50).length
    + '/' + imgs.length);
});
</script>"""


def _chromium() -> str:
    """The browser's path, else a skip; under CI (``CI=true``) a missing browser fails the test
    instead, so a CI machine without chromium cannot pass by skipping what it never ran."""
    exe = (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )
    if exe is None:
        missing = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(f"{missing}; with CI=true the browser tests must run")
        pytest.skip(missing)
    return exe


@pytest.mark.parametrize(
    ("ci", "found", "outcome"),
    [
        ("true", None, pytest.fail.Exception),
        ("TRUE", None, pytest.fail.Exception),
        ("1", None, pytest.fail.Exception),
        (None, None, pytest.skip.Exception),
        ("", None, pytest.skip.Exception),
        ("false", None, pytest.skip.Exception),
        ("true", "/usr/bin/chromium", None),
        (None, "/usr/bin/chromium", None),
    ],
)
def test_missing_chromium_fails_under_ci_and_skips_locally(monkeypatch, ci, found, outcome):
    monkeypatch.setattr(shutil, "which", lambda name: found if name == "chromium" else None)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    if outcome is None:
        assert _chromium() == found
    else:
        with pytest.raises(outcome, match="chromium is not installed"):
            _chromium()


def _browser(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={tmp / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _console_errors(stderr: str) -> list[str]:
    return [
        ln
        for ln in stderr.splitlines()
        if "Uncaught" in ln or ("CONSOLE" in ln and ":ERROR:" in ln)
    ]


RUN_KINDS = {
    "general": make_general_run,
    "code": make_code_run,
    "chat": make_chat_run,
    "solve": make_solve_run,
    "ingest": make_ingest_run,
}


@pytest.mark.parametrize("kind", list(RUN_KINDS))
def test_report_renders_in_chromium(tmp_path, kind):
    exe = _chromium()
    from PIL import Image, ImageStat

    d = RUN_KINDS[kind](tmp_path)
    page = write_report([d])
    n_charts = len(_charts(page.read_text(encoding="utf-8")))
    probe = page.with_name("probe.html")
    probe.write_text(
        page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8"
    )

    dom = _browser(exe, tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not _console_errors(dom.stderr), _console_errors(dom.stderr)
    assert (
        f'data-probe="{n_charts}/{n_charts}"' in dom.stdout
    )  # every chart decoded to a real image
    assert dom.stdout.count('src="data:image/svg+xml;base64,') == n_charts

    shot = tmp_path / "shot.png"
    res = _browser(exe, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    assert not _console_errors(res.stderr), _console_errors(res.stderr)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2400)
    stat = ImageStat.Stat(img)
    assert max(stat.stddev) > 20  # not a blank page
    colors = img.resize((320, 600)).getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 50  # text and charts, not a flat fill


def test_console_error_check_catches_errors(tmp_path):
    """The console check above is not vacuous: a page that throws is caught by it."""
    exe = _chromium()
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<html><body><script>undefinedFunction()</script></body></html>", encoding="utf-8"
    )
    res = _browser(exe, tmp_path, "--dump-dom", bad.as_uri())
    assert _console_errors(res.stderr)


@pytest.mark.slow
def test_report_of_a_real_run(tmp_path):
    """`python -m pipeline generate` on the embedded model writes report.html; it shows that
    run's own figures and draws in a browser."""
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "pipeline", "generate", "--no-progress", "--num", "3",
           "--run", "real", "--set", f"output_dir={tmp_path}",
           # The fast model: the default (Qwen 0.5B) has its own smoke test.
           "--set", "llm.embedded_model=smollm2-135m"]  # fmt: skip
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    d = tmp_path / "real"
    page = (d / "report.html").read_text(encoding="utf-8")
    stats = json.loads((d / "stats.json").read_text(encoding="utf-8"))
    kept = json.loads((d / "data.json").read_text(encoding="utf-8"))
    assert f'<div class="v">{len(kept)}</div><div class="k">kept records</div>' in page
    for stage, s in stats["stages"].items():
        if stage in ("seeds", "export"):
            continue
        assert f"<td>{stage}</td><td>{s['total']:,}</td><td>{s['kept']:,}</td>" in page
        for reason in s["dropped"]:
            assert f"<code>{reason}</code>" in page
    assert f"<td>{stats['llm']['prompt_tokens']:,}</td>" in page
    assert len(_charts(page)) >= 5
    exe = _chromium()
    shot = tmp_path / "shot.png"
    res = _browser(exe, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400",
                   (d / "report.html").as_uri())  # fmt: skip
    assert res.returncode == 0 and not _console_errors(res.stderr)
    from PIL import Image, ImageStat

    assert max(ImageStat.Stat(Image.open(shot).convert("RGB")).stddev) > 20
