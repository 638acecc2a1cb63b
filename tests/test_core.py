"""Config, records, stats, seeds and export: the small pieces every stage leans on."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from pipeline.config import ConfigError, PipelineConfig, describe, load_config, save_config
from pipeline.records import (
    JsonlWriter,
    RecordError,
    enumerate_jsonl,
    read_records,
    repair_tail,
    write_json_atomic,
)
from pipeline.stats import StageStats, summary_table
from stages import export, seeds


# -- config ----------------------------------------------------------------------------------
def test_yaml_then_set_overrides_and_types(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("generation:\n  num: 7\n  mode: code\nllm:\n  timeout: 30\n")
    cfg = load_config(
        y, ["generation.num=9", "dedup.threshold=0.5", "llm.base_urls=[http://a/v1, http://b/v1]"]
    )
    assert cfg.generation.num == 9 and cfg.generation.mode == "code"
    assert cfg.filter.mode == "code", "the filter follows the generation mode"
    assert cfg.llm.timeout == 30.0 and isinstance(cfg.llm.timeout, float)
    assert cfg.llm.base_urls == ["http://a/v1", "http://b/v1"]
    assert cfg.dedup.threshold == 0.5


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("generation.nmu=3", "unknown config key(s): generation.nmu"),
        ("bogus.x=1", "unknown config key(s): bogus"),
        ("generation.num=many", "generation.num: expected int, got 'many'"),
        ("generation.num=0", "generation.num=0: must be at least 1"),
        ("generation.mode=poetry", "generation.mode='poetry'"),
        ("llm.api=grpc", "llm.api='grpc'"),
        ("dedup.threshold=1.5", "dedup.threshold"),
        ("noequals", "expected section.key=value"),
    ],
)
def test_bad_config_names_the_field(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_saved_config_round_trips_and_every_key_has_help(tmp_path):
    cfg = load_config(None, ["generation.num=3"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    rows = describe(PipelineConfig)
    assert all(help_ for _, _, help_ in rows), [k for k, _, h in rows if not h]


# -- records ---------------------------------------------------------------------------------
def test_bad_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"id": 1}\n\n[1, 2]\n')
    with pytest.raises(RecordError) as e:
        list(read_records(p))
    assert str(e.value).startswith(f"{p}:3:") and "expected a JSON object" in str(e.value)
    p.write_text('{"id": 1}\n{"id": \n')
    with pytest.raises(RecordError, match=r":2: not valid JSON"):
        list(read_records(p))


def test_alpaca_json_array_is_read_too(tmp_path):
    p = tmp_path / "data.json"
    write_json_atomic(p, [{"instruction": "a", "input": "", "output": "b"}])
    assert list(read_records(p)) == [{"instruction": "a", "input": "", "output": "b"}]
    assert not list(tmp_path.glob(".*.tmp")), "no temp file left behind"


def test_writer_repairs_a_torn_line_and_appends(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"id": 1}\n{"id": 2, "instr')
    assert repair_tail(p) == len('{"id": 2, "instr')
    with JsonlWriter(p) as w:
        w.write({"id": 3})
    assert [r["id"] for _, r in enumerate_jsonl(p)] == [1, 3]


# -- stats -----------------------------------------------------------------------------------
def test_stage_stats_add_up_and_drop_reaches_the_sink():
    got: list[dict] = []
    a = StageStats(stage="filter", sink=got.append)
    for rec in a.admit([{"id": "w"}, {"id": "x"}, {"id": "y"}]):
        if rec["id"] == "w":
            a.keep(rec)
        else:
            a.drop(rec, "too_short", **({"words": 1} if rec["id"] == "y" else {}))
    b = StageStats(stage="filter")
    for rec in b.admit([{"id": "u"}, {"id": "v"}, {"id": "z"}]):
        (b.drop(rec, "empty_output") if rec["id"] == "z" else b.keep(rec))
    b.extra["candidates_run"] += 4
    c = a + b
    assert (c.entered, c.total, c.kept, c.rejected) == (6, 6, 3, 3)
    assert c.balance_error() is None
    assert c.dropped == Counter(too_short=2, empty_output=1) and c.extra["candidates_run"] == 4
    assert got[1] == {"id": "y", "reject": {"stage": "filter", "reason": "too_short", "words": 1}}
    table = summary_table({"filter": c})
    assert "too_short=2" in table and table.splitlines()[0].split()[:4] == [
        "stage",
        "in",
        "kept",
        "rejected",
    ]


# -- seeds -----------------------------------------------------------------------------------
GOOD = {
    "id": "seed_task_0",
    "name": "n",
    "instruction": "Do a thing.",
    "instances": [{"input": "<noinput>", "output": "done"}],
    "is_classification": False,
}


@pytest.mark.parametrize(
    ("mutate", "field", "problem"),
    [
        (lambda s: s.pop("instruction"), "instruction", "missing"),
        (lambda s: s.update(instruction=3), "instruction", "expected str"),
        (lambda s: s.update(instances=[]), "instances", "empty list"),
        (lambda s: s.update(instances=[{"input": ""}]), "instances[0].output", "missing"),
        (
            lambda s: s.update(is_classification="yes"),
            "is_classification",
            "expected true or false",
        ),
    ],
)
def test_seed_errors_name_line_and_field(mutate, field, problem):
    bad = json.loads(json.dumps(GOOD))
    mutate(bad)
    with pytest.raises(RecordError) as e:
        seeds.load_seed_records([(1, GOOD), (2, bad)], "seeds.jsonl")
    assert f"seeds.jsonl:2: field '{field}': {problem}" in str(e.value)


def test_alpaca_style_seed_becomes_a_record_and_duplicates_are_errors():
    [rec] = seeds.load_seed_records([(1, GOOD)], "s")
    assert rec == {
        "id": "seed_task_0",
        "instruction": "Do a thing.",
        "input": "",
        "output": "done",
        "meta": {"source": "seed", "name": "n", "is_classification": False},
    }
    with pytest.raises(RecordError, match="duplicate id 'seed_task_0' \\(first on line 1\\)"):
        seeds.load_seed_records([(1, GOOD), (5, GOOD)], "s")


def test_mode_pools_and_sampling_are_seeded():
    code = {**GOOD, "id": "c", "language": "python", "tests": "assert f() == 1"}
    recs = seeds.load_seed_records([(1, GOOD), (2, code)], "s")
    assert [r["id"] for r in seeds.pool_for_mode(recs, "code")] == ["c"]
    assert [r["id"] for r in seeds.pool_for_mode(recs, "general")] == ["seed_task_0"]
    import random

    pool = [{"id": str(i)} for i in range(50)]
    a = seeds.sample_seeds(pool, 3, random.Random(1))
    assert a == seeds.sample_seeds(pool, 3, random.Random(1)) and len({r["id"] for r in a}) == 3
    gen = [{"id": f"g{i}"} for i in range(10)]
    mixed = seeds.sample_seeds(pool, 4, random.Random(2), gen, mix=0.5)
    assert sum(r["id"].startswith("g") for r in mixed) == 2


def test_project_seed_file_loads():
    recs = seeds.load_seed_records(enumerate_jsonl("seed_tasks.jsonl"), "seed_tasks.jsonl")
    assert len(seeds.pool_for_mode(recs, "general")) >= 150
    assert len(seeds.pool_for_mode(recs, "code")) >= 60


# -- export ----------------------------------------------------------------------------------
def test_export_formats_and_seeded_split():
    recs = [
        {"id": str(i), "instruction": f"q{i}", "input": "ctx" if i % 2 else "", "output": f"a{i}"}
        for i in range(10)
    ]
    assert export.to_alpaca(recs[1]) == {"instruction": "q1", "input": "ctx", "output": "a1"}
    assert export.to_messages(recs[1], "be brief")["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q1\n\nctx"},
        {"role": "assistant", "content": "a1"},
    ]
    train, val = export.split(recs, 0.2, seed=7)
    assert (
        len(val) == 2 and len(train) == 8 and not {r["id"] for r in train} & {r["id"] for r in val}
    )
    assert export.split(recs, 0.2, seed=7) == (train, val)
    stats = StageStats()
    kept = list(export.run([*recs, {"id": "e", "instruction": "q", "output": " "}], stats))
    assert len(kept) == 10 and stats.dropped == Counter(empty_output=1)
