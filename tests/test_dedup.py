"""The dedup stage decides exactly as Alpaca's greedy rouge_score loop does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from pipeline.stats import StageStats
from stages.dedup import DedupConfig, Deduper, run

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
BENCH = Path(__file__).resolve().parents[1] / ".." / "shared" / "bench"


def greedy_reference(texts, threshold, against=()):
    """Alpaca's loop: score each candidate against every kept one with rouge_score."""
    pool = [(f"a{i}", t) for i, t in enumerate(against)]
    out = []
    for i, text in enumerate(texts):
        scores = [(SCORER.score(p, text)["rougeL"].fmeasure, pid) for pid, p in pool]
        best = max((s for s, _ in scores), default=0.0)
        if best > threshold:
            nearest = next(pid for s, pid in scores if s == best)
            out.append((False, nearest, best))
        else:
            pool.append((i, text))
            out.append((True, None, None))
    return out


def dedup_all(texts, cfg, against=()):
    stats = StageStats("dedup")
    rejected = []
    stats.sink = rejected.append
    recs = [{"id": i, cfg.field: t} for i, t in enumerate(texts)]
    ag = [{"id": f"a{i}", cfg.field: t} for i, t in enumerate(against)]
    kept = {r["id"] for r in run(recs, cfg, stats, against=ag)}
    by_id = {r["id"]: r["reject"] for r in rejected}
    out = []
    for i in range(len(texts)):
        if i in kept:
            out.append((True, None, None))
        else:
            rej = by_id[i]
            assert rej["reason"] == "rouge_duplicate" and rej["stage"] == "dedup"
            out.append((False, rej["nearest_id"], rej["score"]))
    assert stats.total == len(texts) and stats.kept == len(kept)
    assert stats.kept + stats.rejected == stats.total
    return out


VOCAB = ["the", "a", "cat", "Cat", "sat", "mat", "on", "dog", "42", "x-y", "café", "中文", "!", ""]
near_dup_lists = st.lists(
    st.lists(st.sampled_from(VOCAB), min_size=0, max_size=10).map(" ".join), max_size=30
)


@settings(max_examples=120, deadline=None)
@given(
    near_dup_lists,
    st.sampled_from([0.0, 0.5, 0.6, 2 / 3, 0.7, 0.75, 0.8, 1.0]),
    st.integers(min_value=0, max_value=8),
)
def test_decisions_identical_to_greedy_rouge_score(texts, threshold, prime_size):
    cfg = DedupConfig(threshold=threshold, prime_size=prime_size)
    assert dedup_all(texts, cfg) == greedy_reference(texts, threshold)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=20), st.lists(st.text(max_size=40), max_size=5))
def test_decisions_identical_on_arbitrary_unicode(texts, against):
    cfg = DedupConfig(threshold=0.5)
    assert dedup_all(texts, cfg, against) == greedy_reference(texts, 0.5, against)


def test_ties_at_the_threshold_are_kept():
    # 7 of 10 tokens shared each way: F is exactly 0.7 in rouge_score's floats? Whatever its
    # last bit is, our decision must follow it; then pin both sides of a tie explicitly.
    a = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
    b = "w0 w1 w2 w3 w4 w5 w6 z7 z8 z9"
    f = SCORER.score(a, b)["rougeL"].fmeasure
    for threshold in (f, f - 1e-12):
        assert dedup_all([a, b], DedupConfig(threshold=threshold)) == greedy_reference(
            [a, b], threshold
        )
    assert dedup_all([a, b], DedupConfig(threshold=f))[1][0] is True  # equal is not greater
    assert dedup_all([a, b], DedupConfig(threshold=f - 1e-12))[1][0] is False


def test_nearest_is_the_best_kept_record_and_first_on_ties():
    texts = [
        "write a poem about the sea",
        "write a poem about the sea at night",  # 0.857 vs 0: rejected, nearest 0
        "write a short story about a dragon",
        "write a poem about the sea and sky",
    ]
    out = dedup_all(texts, DedupConfig())
    assert out == greedy_reference(texts, 0.7)
    assert out[1][:2] == (False, 0) and out[3][:2] == (False, 0)


def test_against_records_reject_but_are_never_output():
    stats = StageStats("dedup")
    rejected = []
    stats.sink = rejected.append
    against = [{"id": "prev-1", "instruction": "Give three tips for staying healthy."}]
    recs = [
        {"id": 1, "instruction": "Give three tips for staying healthy!"},
        {"id": 2, "instruction": "Describe the water cycle."},
    ]
    kept = list(run(recs, DedupConfig(), stats, against=against))
    assert [r["id"] for r in kept] == [2]
    assert rejected[0]["reject"]["nearest_id"] == "prev-1"
    assert rejected[0]["reject"]["nearest_against"] is True
    assert rejected[0]["reject"]["score"] == 1.0
    assert stats.total == 2 and stats.kept == 1 and stats.dropped["rouge_duplicate"] == 1


def test_missing_or_non_string_field_is_rejected_with_its_own_reason():
    stats = StageStats("dedup")
    rejected = []
    stats.sink = rejected.append
    recs = [
        {"id": 1, "instruction": "Name the capital of France."},
        {"id": 2},
        {"id": 3, "instruction": None},
        {"id": 4, "instruction": ["Name", "the", "capital"]},
        {"id": 5, "instruction": "Name the capital of France"},
    ]
    kept = list(run(recs, DedupConfig(), stats))
    assert [r["id"] for r in kept] == [1]
    reasons = {r["id"]: r["reject"]["reason"] for r in rejected}
    assert reasons == {
        2: "missing_field",
        3: "missing_field",
        4: "missing_field",
        5: "rouge_duplicate",
    }
    assert rejected[0]["reject"]["field"] == "instruction"


def test_texts_without_tokens_are_always_kept():
    # rouge_score gives F = 0 when a side has no tokens: "!!!" and "中文" (default tokenizer).
    texts = ["!!!", "!!!", "中文", "中文", ""]
    assert [k for k, _, _ in dedup_all(texts, DedupConfig())] == [True] * 5


def test_unicode_tokenizer_catches_cjk_duplicates_the_default_cannot():
    texts = ["请写一首关于大海的诗", "请写一首关于大海的短诗"]
    assert dedup_all(texts, DedupConfig())[1][0] is True
    assert dedup_all(texts, DedupConfig(tokenizer="unicode"))[1][0] is False


def test_field_option_compares_another_field():
    cfg = DedupConfig(field="output")
    texts = ["The answer is forty two.", "The answer is forty-two!"]
    assert dedup_all(texts, cfg)[1][0] is False


def test_joined_fields_tell_templated_questions_apart():
    # Repository QA asks the same question shape about different functions: the questions alone
    # score 0.74 (over 0.7), the question with its answer is a different text. A repeated pair
    # is still a duplicate, and a record without one of the fields is missing_field.
    qa = [
        {"id": "a", "instruction": "What does `timed` in benchmarks/bench_dedup.py return?",
         "output": "`(wall seconds, peak RSS MiB of that child, stderr tail)`."},
        {"id": "b", "instruction": "What does `bench_train` in benchmarks/bench_train.py return?",
         "output": "`bench_train` returns one JSON line per run."},
        {"id": "c", "instruction": "What does `timed` in benchmarks/bench_dedup.py return?",
         "output": "`(wall seconds, peak RSS MiB of that child, stderr tail)`."},
        {"id": "d", "instruction": "What does `sh` in benchmarks/bench_distill.py return?"},
    ]  # fmt: skip

    def decide(field):
        st = StageStats(stage="dedup", sink=(rej := []).append)
        kept = [r["id"] for r in run(qa, DedupConfig(field=field), st)]
        return kept, {r["id"]: r["reject"]["reason"] for r in rej}

    kept, rejected = decide("instruction")
    assert kept == ["a"] and rejected["b"] == "rouge_duplicate"
    kept, rejected = decide("instruction+output")
    assert kept == ["a", "b"]
    assert rejected == {"c": "rouge_duplicate", "d": "missing_field"}


def test_streaming_deduper_matches_batch_run():
    texts = [
        "Sort a list of numbers in Python.",
        "Sort a list of numbers in python",
        "Reverse a string in Java.",
        "Reverse a string in Java using recursion.",
        "Explain photosynthesis to a child.",
    ]
    d = Deduper(DedupConfig())
    streamed = []
    for i, t in enumerate(texts):
        reason, detail = d.check({"id": i, "instruction": t})
        streamed.append((reason is None, detail["nearest_id"], detail["score"]))
    assert streamed == dedup_all(texts, DedupConfig()) == greedy_reference(texts, 0.7)


def test_run_is_lazy_with_a_bounded_read_ahead():
    pulled = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield {"id": i, "instruction": f"task number {i} is unique word{i} x{i * 7}"}

    gen = run(source(), DedupConfig(prime_size=10), StageStats("dedup"))
    first = next(gen)
    assert first["id"] == 0 and len(pulled) == 10
    next(gen)
    assert len(pulled) == 10


def test_minhash_method_with_and_without_verification():
    texts = [
        "write a python function that returns the sum of all even numbers in a list",
        "write a python function that returns the sum of all odd numbers in a list",
        "translate the following sentence into french",
        "write a python function which returns the sum of all even numbers of a list",
    ]
    exact = dedup_all(texts, DedupConfig())
    verified = dedup_all(texts, DedupConfig(method="minhash"))
    # Verified MinHash only rejects what the exact F rejects, with the exact F as the score.
    for e, v in zip(exact, verified, strict=True):
        if not v[0]:
            assert not e[0] and v[2] == e[2]
    assert [v[0] for v in verified] == [True, False, True, False]
    loose = dedup_all(texts, DedupConfig(method="minhash", verify_minhash=False))
    assert loose[1][0] is False and 0.5 <= loose[1][2] <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"threshold": 1.5}, "dedup.threshold=1.5"),
        ({"threshold": True}, "dedup.threshold=True"),
        ({"method": "simhash"}, "dedup.method='simhash'"),
        ({"tokenizer": "nltk"}, "dedup.tokenizer='nltk'"),
        ({"workers": -1}, "dedup.workers=-1"),
        ({"field": ""}, "dedup.field=''"),
        ({"num_perm": 1}, "dedup.num_perm=1"),
        ({"lsh_threshold": 1.0}, "dedup.lsh_threshold=1.0"),
        ({"prime_size": -5}, "dedup.prime_size=-5"),
    ],
)
def test_config_errors_name_the_field_and_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        DedupConfig(**kwargs)


def test_every_config_field_has_help():
    import dataclasses

    for f in dataclasses.fields(DedupConfig):
        assert f.metadata.get("help"), f.name


def test_public_reference_3000_identical():
    path = BENCH / "dedup_ref_public_3000.json"
    corpus = BENCH / "instructions_25k.jsonl"
    if not path.exists() or not corpus.exists():
        pytest.skip(f"{path} not present (shared benchmark data)")
    ref = json.loads(path.read_text())
    records = []
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            records.append(json.loads(line))
            if len(records) == ref["n"]:
                break
    stats = StageStats("dedup")
    kept = {r["id"] for r in run(records, DedupConfig(threshold=ref["threshold"]), stats)}
    decisions = {d["id"]: d["keep"] for d in ref["decisions"]}
    mismatches = [i for i, keep in decisions.items() if (i in kept) != keep]
    assert mismatches == []
    assert stats.kept == ref["kept"]
