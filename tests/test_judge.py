"""The judge and select stages: ratings parsed from real replies, each reject reason, the
rubric's exact text, the diversity guard of top-k selection, and the config's checks."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.prompts import render
from stages import judge
from stages.base import Failure, Response, StageStats

HAIKU = "Write a haiku about waiting for a bus on a cold winter morning."


def rec(i: str, instruction: str, score: float | None = None, **kw) -> dict:
    meta = {"judge": {"score": score, "reason": "", "model": "m"}} if score is not None else {}
    return {"id": i, "instruction": instruction, "input": "", "output": "out", "meta": meta, **kw}


def test_the_rubric_renders_exactly_and_adds_the_code_clause_for_code():
    r = rec("a", HAIKU)
    text = judge.rating_request(r, render, judge.JudgeConfig(), code=False).messages[0]["content"]
    assert text == (
        "Rate the following instruction-response pair for training an AI assistant, from 1 "
        "(useless) to 10 (excellent). Judge: is the response helpful for the instruction, is it "
        f"correct, and is it clear?\n\nInstruction: {HAIKU}\n\nResponse:\nout\n\nReply on two "
        "lines, exactly:\nScore: <a whole number from 1 to 10>\nReason: <one sentence>"
    )
    code = judge.rating_request(r, render, judge.JudgeConfig(), code=True).messages[0]["content"]
    assert "is it clear? The response is a Python solution that passed its unit tests" in code
    assert (
        judge.rating_request(r, render, judge.JudgeConfig(), code=False).params["temperature"]
        == 0.0
    )


@pytest.mark.parametrize(
    "reply",
    [
        # SmolLM2-135M on the haiku seed: a critique with no score at all.
        "The response is helpful for the instruction, but it's not correct. The sentence \"the "
        "timetable promises\" contains a grammatical error and doesn't convey the intended "
        "meaning accurately.",
        # SmolLM2-135M on the product description seed: it rewrote the response instead.
        "The 750 ml insulated steel bottle is a lifesaver. It keeps drinks cold for two days, "
        "and the double wall makes it easy to keep your morning coffee hot.",
    ],
)
def test_unparseable_rating_on_real_replies(reply):
    score, _ = judge.parse_rating(reply)
    assert judge.check(score, judge.JudgeConfig()) == "unparseable_rating"


@pytest.mark.parametrize(
    "reply",
    [
        # Qwen2.5-Coder-0.5B on the haiku seed: opens with "1", then speaks of a 5.
        "1\nThe response is helpful for the instruction, it provides a clear and concise haiku "
        "about waiting for a bus on a cold winter morning. It also includes a brief score of 5 "
        "out of 10, which is appropriate for",
        # SmolLM2-135M asked to continue "Score:": it echoed the placeholder.
        " <one sentence>\nReason: <two sentences from 1 to 5>\nReason: <three sentences from 6 and above>",
    ],
)
def test_unparseable_rating_on_ambiguous_real_replies(reply):
    score, _ = judge.parse_rating(reply)
    assert judge.check(score, judge.JudgeConfig()) == "unparseable_rating"


@pytest.mark.parametrize(
    "reply, score, reason",
    [
        ("Score: 7\nReason: Clear and correct, if plain.", 7.0, "Clear and correct, if plain."),
        ("**Score:** 9/10\n**Reason:** Accurate.", 9.0, "Accurate."),
        ("8/10 - the haiku keeps 5-7-5.", 8.0, "the haiku keeps 5-7-5."),
        ("Score: 11\nReason: perfect", None, "perfect"),
        # Qwen2.5-Coder-0.5B, real replies.
        (
            "Score: 9\nReason: The response is clear, concise, and informative.",
            9.0,
            "The response is clear, concise, and informative.",
        ),
        (
            "5\nReason: The response is clear and helpful.",
            5.0,
            "The response is clear and helpful.",
        ),
    ],
)
def test_a_score_and_reason_are_read(reply, score, reason):
    assert judge.parse_rating(reply) == (score, reason)


def test_below_min_score_and_keep():
    cfg = judge.JudgeConfig(min_score=6)
    assert judge.check(5.0, cfg) == "below_min_score"
    assert judge.check(6.0, cfg) is None


def test_the_judge_stage_stores_score_and_reason_and_balances():
    recs = [rec("a", HAIKU), rec("b", "Name a river."), rec("c", "Name a lake.")]
    replies = {
        "a": Response("Score: 8\nReason: Vivid.", "stop", 1, 1, "judge-m", "r"),
        "b": Response("The response is fine.", "stop", 1, 1, "judge-m", "r"),
        "c": Failure("HTTP 503 after 7 tries"),
    }

    def llm(requests):
        for r in requests:
            yield r, replies[r.tag["id"]]

    st = StageStats(stage="judge", sink=(rej := []).append)
    out = list(judge.run(recs, llm, render, judge.JudgeConfig(), st))
    assert [r["id"] for r in out] == ["a"]
    assert out[0]["meta"]["judge"] == {"score": 8.0, "reason": "Vivid.", "model": "judge-m"}
    assert {r["id"]: r["reject"]["reason"] for r in rej} == {
        "b": "unparseable_rating",
        "c": "request_failed",
    }
    assert rej[0]["raw"] == "The response is fine."
    assert st.balance_error() is None


def test_select_keeps_the_top_k_without_near_duplicates():
    recs = [
        rec("a", "Write a haiku about waiting for a bus in winter.", 9),
        rec("b", "Write a haiku about waiting for a bus in the winter.", 8),
        rec("c", "Explain how tides work.", 7),
        rec("d", "List three uses of a kettle.", 6),
    ]
    st = StageStats(stage="select", sink=(rej := []).append)
    out = judge.select(recs, judge.JudgeConfig(top_k=2, diversity_threshold=0.7), st)
    assert [r["id"] for r in out] == ["a", "c"]
    by = {r["id"]: r["reject"] for r in rej}
    assert by["b"]["reason"] == "too_similar" and by["b"]["nearest_id"] == "a"
    assert by["d"]["reason"] == "below_top_k"
    assert st.balance_error() is None


def test_score_histogram():
    recs = [rec("a", "x", 8), rec("b", "y", 8.5), rec("c", "z", 3), rec("d", "w")]
    h = judge.score_histogram(recs)
    assert h[8] == 2 and h[3] == 1 and sum(h.values()) == 3 and list(h) == list(range(1, 11))


def test_judge_config_checks():
    assert load_config(None, []).judge.enabled is False
    with pytest.raises(ConfigError, match=r"judge.min_score=11"):
        load_config(None, ["judge.min_score=11"])
    with pytest.raises(ConfigError, match="judge.top_k=-1"):
        load_config(None, ["judge.top_k=-1"])
    with pytest.raises(ConfigError, match="judge.rubric"):
        load_config(None, ["judge.rubric=x"])
    cfg = load_config(
        None, ["judge.enabled=true", "judge.base_url=http://h:8000/v1", "judge.model=big"]
    )
    assert (cfg.judge.base_url, cfg.judge.model) == ("http://h:8000/v1", "big")
