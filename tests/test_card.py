"""The dataset card written beside data.json: `datasets`-style YAML front matter, then the
strategies and their shares, the funnel per stage and reason, the models, the judge score
histogram, decontamination counts, label balance and the licence note."""

from __future__ import annotations

import yaml

from pipeline.card import licence_note, render_card, write_card

STATS = {
    "model": "SmolLM2-135M-Instruct.Q4_1",
    "stages": {
        "generate": {"total": 6, "kept": 5, "rejected": 1, "dropped": {"evol_copied_prompt": 1}},
        "filter": {
            "total": 5,
            "kept": 4,
            "rejected": 1,
            "entered": 5,
            "dropped": {"humaneval_contaminated": 1},
        },
        "judge": {"total": 4, "kept": 4, "rejected": 0, "entered": 4, "dropped": {}},
    },
    "llm": {"prompt_tokens": 900, "completion_tokens": 300, "requests": 12},
}


def rec(strategy: str, score: int, **meta) -> dict:
    return {"meta": {"strategy": strategy, "judge": {"score": score, "model": "judge-m"}, **meta}}


RECORDS = [
    rec("alpaca", 8),
    rec("alpaca", 7),
    rec("evol", 8),
    rec("classification", 5, label="Spam"),
]


def test_the_card_has_datasets_front_matter():
    card = render_card("mix", STATS, RECORDS, "general")
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "apache-2.0"
    assert front["size_categories"] == ["n<1K"]
    assert front["configs"][0]["data_files"] == [{"split": "train", "path": "data.json"}]


def test_the_card_reports_shares_funnel_models_scores_and_decontamination():
    card = render_card("mix", STATS, RECORDS, "general")
    assert "| alpaca | 2 | 50% |" in card and "| evol | 1 | 25% |" in card
    assert "| generate | 6 | 5 | 1 | evol_copied_prompt 1 |" in card
    assert "| filter | 5 | 4 | 1 | humaneval_contaminated 1 |" in card
    assert "- generation: `SmolLM2-135M-Instruct.Q4_1`" in card and "- judge: `judge-m`" in card
    assert "| 8 | 2 |" in card and "| 10 | 0 |" in card and "mean 7.00 over 4" in card
    assert "1 records or snippets dropped for sharing a 13-gram with HumanEval" in card
    assert "| spam | 1 |" in card


def test_the_licence_note_names_the_notice_or_warns_for_an_unknown_model():
    spdx, note = licence_note("SmolLM2-135M-Instruct.Q4_1")
    assert spdx == "apache-2.0" and "LICENSES/SmolLM2-NOTICE" in note
    spdx, note = licence_note("gpt-4o-mini")
    assert spdx == "other" and "terms of its provider" in note


def test_write_card_puts_readme_beside_data(tmp_path):
    path = write_card(tmp_path, STATS, RECORDS, "general")
    assert path == tmp_path / "README.md" and path.read_text().startswith("---\nlicense:")
    assert not list(tmp_path.glob("*.tmp"))


def test_the_funnel_per_strategy_is_read_from_the_stage_files(tmp_path):
    import json

    def write(name, recs):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in recs))

    write(
        "01_generated.jsonl", [{"id": "a", "meta": {"strategy": "evol"}}, {"id": "b", "meta": {}}]
    )
    write(
        "01_generated.rejected.jsonl",
        [{"id": "c", "meta": {"strategy": "evol"}, "reject": {"reason": "evol_refusal"}}],
    )
    write("02_dedup.jsonl", [{"id": "a", "meta": {"strategy": "evol"}}])
    write(
        "02_dedup.rejected.jsonl",
        [{"id": "b", "meta": {}, "reject": {"reason": "rouge_duplicate"}}],
    )
    from pipeline.card import strategy_funnel

    f = strategy_funnel(tmp_path, "general", ["generate", "dedup", "export"])
    assert f["evol"]["generate"] == {"kept": 1, "rejected": 1, "reasons": {"evol_refusal": 1}}
    assert f["alpaca"]["dedup"] == {"kept": 0, "rejected": 1, "reasons": {"rouge_duplicate": 1}}
    card = render_card("r", {**STATS, "by_strategy": f}, RECORDS, "general")
    assert "| evol | generate | 1 | 1 | evol_refusal 1 |" in card
