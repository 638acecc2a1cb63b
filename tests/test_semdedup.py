"""Semantic dedup's decisions: cosine above the threshold is a ``semantic_duplicate`` naming
the nearest id and its score, a failed embedding is a reject, and the books balance."""

from __future__ import annotations

import pytest

from stages.base import StageStats
from stages.semdedup import SemanticDeduper, SemDedupConfig, check, normalise

VECS = {
    "Name three rivers in Africa.": [0.9, 0.1, 0.0],
    "List three African rivers.": [0.88, 0.12, 0.01],
    "Write a haiku about rain.": [0.0, 0.2, 0.95],
}


def embed(texts):
    return [VECS.get(t) for t in texts]


def rec(i, text):
    return {"id": i, "instruction": text}


def test_a_near_paraphrase_is_a_semantic_duplicate_naming_the_nearest():
    st = StageStats(stage="semdedup", sink=(rej := []).append)
    d = SemanticDeduper(SemDedupConfig(threshold=0.95), embed)
    recs = [
        rec("a", "Name three rivers in Africa."),
        rec("b", "List three African rivers."),
        rec("c", "Write a haiku about rain."),
        rec("d", "unknown text"),
    ]
    kept = list(d.run(recs, st))
    assert [r["id"] for r in kept] == ["a", "c"]
    assert rej[0]["id"] == "b" and rej[0]["reject"]["reason"] == "semantic_duplicate"
    assert rej[0]["reject"]["nearest_id"] == "a" and rej[0]["reject"]["score"] > 0.99
    assert rej[1]["reject"]["reason"] == "embedding_failed"
    assert st.balance_error() is None


def test_against_records_count_as_kept():
    d = SemanticDeduper(
        SemDedupConfig(), embed, against=[rec("seed_1", "List three African rivers.")]
    )
    st = StageStats(stage="semdedup", sink=(rej := []).append)
    assert list(d.run([rec("a", "Name three rivers in Africa.")], st)) == []
    assert rej[0]["reject"]["nearest_id"] == "seed_1"


def test_check_at_the_threshold_keeps():
    v = normalise([1.0, 0.0])
    assert check(v, [("x", v)], SemDedupConfig(threshold=1.0)) == (None, {})
    assert check(v, [], SemDedupConfig()) == (None, {})


def test_config_checks():
    with pytest.raises(ValueError, match="semdedup.threshold=0"):
        SemDedupConfig(threshold=0)
