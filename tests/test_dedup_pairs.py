"""stages.dedup_pairs: the candidate join misses no pair, and the batch decisions (kept, nearest,
score) are those of the streaming Deduper and of Alpaca's greedy rouge_score loop."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

import stages.dedup_pairs as dp
from stages.base import StageStats
from stages.dedup import DedupConfig, run
from stages.rouge import rouge_l

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
BENCH = Path(__file__).resolve().parents[1] / ".." / "shared" / "bench"


def greedy_reference(texts, threshold, against=()):
    """Alpaca's loop with rouge_score: (kept, nearest slot, score) per text; slots as in
    dedup_pairs (against first, then inputs)."""
    pool = list(enumerate(against))
    out = []
    for k, text in enumerate(texts):
        scores = [(SCORER.score(p, text)["rougeL"].fmeasure, slot) for slot, p in pool]
        best = max((s for s, _ in scores), default=0.0)
        if best > threshold:
            out.append((False, next(slot for s, slot in scores if s == best), best))
        else:
            pool.append((len(against) + k, text))
            out.append((True, -1, 0.0))
    return out


def decisions(texts, threshold, against=(), **kw):
    d = dp.dedup_texts(texts, against, threshold, **kw)
    return list(zip(d.kept, d.nearest, d.score, strict=True))


def streamed(records, cfg, against=()):
    """(kept ids, rejected records) of the stage run with cfg."""
    stats = StageStats("dedup")
    rejected = []
    stats.sink = rejected.append
    kept = [r.get("id") for r in run(records, cfg, stats, against=against)]
    assert stats.total == len(records) == stats.kept + stats.rejected
    assert stats.balance_error() is None
    return kept, rejected


# Words that make repeated tokens, empty texts, punctuation-only and non-ASCII (deleted by the
# default tokenizer), and long/short texts side by side.
VOCAB = ["the", "a", "a", "cat", "sat", "mat", "on", "dog", "42", "x-y", "café", "中文", "!", ""]
short_lists = st.lists(st.sampled_from(VOCAB), min_size=0, max_size=8).map(" ".join)
long_lists = st.lists(st.sampled_from(VOCAB[:6]), min_size=10, max_size=40).map(" ".join)
corpora = st.lists(st.one_of(short_lists, short_lists, long_lists), max_size=24)


@settings(max_examples=80, deadline=None)
@given(
    corpora,
    st.sampled_from([0.0, 0.3, 0.5, 2 / 3, 0.7, 0.75, 0.9, 1.0]),
    st.sampled_from([1, 3, 2048]),
    st.sampled_from([1, 3]),
)
def test_decisions_identical_to_greedy_rouge_score(texts, threshold, block, level_count):
    got = decisions(texts, threshold, block=block, level_count=level_count)
    assert got == greedy_reference(texts, threshold)


@settings(max_examples=60, deadline=None)
@given(corpora.filter(lambda ts: len(ts) >= 2), st.data())
def test_thresholds_at_the_pair_scores_themselves(texts, data):
    # The hardest thresholds are the scores that occur: F equal to t must keep, one ulp below
    # must drop, whatever the float rounding of each bound.
    scores = sorted({rouge_l(a, b) for a in texts for b in texts if a is not b} - {0.0})
    if not scores:
        return
    f = data.draw(st.sampled_from(scores))
    for threshold in (f, float(np.nextafter(f, 0.0)), float(np.nextafter(f, 1.0))):
        assert decisions(texts, threshold, block=4) == greedy_reference(texts, threshold)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=14), st.lists(st.text(max_size=30), max_size=4))
def test_arbitrary_unicode_with_against(texts, against):
    assert decisions(texts, 0.5, against) == greedy_reference(texts, 0.5, against)


@settings(max_examples=40, deadline=None)
@given(corpora, st.sampled_from([0.4, 0.7]))
def test_unicode_tokenizer_matches_the_streaming_path(texts, threshold):
    recs = [{"id": k, "instruction": t} for k, t in enumerate(texts)]
    base = {"threshold": threshold, "tokenizer": "unicode"}
    assert streamed(recs, DedupConfig(**base, algorithm="pairs")) == streamed(
        recs, DedupConfig(**base)
    )


def brute_force_edges(texts, threshold):
    return {
        (i, j): f
        for j in range(len(texts))
        for i in range(j)
        if (f := rouge_l(texts[i], texts[j])) > threshold
    }


def encoded(texts, threshold, partition=5):
    parts = [
        dp.tokenize_partition(texts[a : a + partition]) for a in range(0, len(texts), partition)
    ]
    counts = Counter()
    for p in parts:
        counts.update(dp.element_counts(p))
    order = dp.TokenOrder.from_counts(counts)
    return dp.concat([dp.encode_partition(p, order, threshold) for p in parts])


@settings(max_examples=80, deadline=None)
@given(corpora, st.sampled_from([0.0, 0.5, 0.6, 0.7, 0.8, 0.95]), st.sampled_from([0, 1, 2]))
def test_candidate_join_never_misses_a_pair_above_the_threshold(texts, threshold, level):
    # All pairs, every text both in the index and probing it: the join at each level must hold
    # every pair rouge_score scores above that level, and scoring must give exactly those.
    levels = dp.levels(threshold)
    lvl = levels[min(level, len(levels) - 1)]
    enc = encoded(texts, threshold)
    index = dp.PrefixIndex(threshold, int(enc.lengths.max(initial=0)), levels)
    everything = np.arange(len(texts))
    index.add(enc, everything)
    i, j = dp.candidate_pairs(enc, everything, index, level=levels.index(lvl), below=True)
    cands = set(zip(i.tolist(), j.tolist(), strict=True))
    assert len(cands) == len(i)  # each pair once
    truth = brute_force_edges(texts, lvl)
    assert set(truth) <= cands
    edges = dp.score_pairs(enc, i, j, lvl)
    got = dict(
        zip(zip(edges.i.tolist(), edges.j.tolist(), strict=True), edges.score.tolist(), strict=True)
    )
    assert got == truth


def test_join_in_tiny_chunks_and_int_list_documents(monkeypatch):
    # Chunk boundaries between probe texts and the int-list fallback for vocabularies past the
    # code-point range must not change a thing.
    texts = [
        "the cat sat on the mat",
        "the cat sat on a mat",
        "a dog",
        "the cat sat",
        "a dog !",
    ] * 3
    ref = greedy_reference(texts, 0.6)
    monkeypatch.setattr(dp, "_CHUNK_HITS", 3)
    assert decisions(texts, 0.6, block=4) == ref
    monkeypatch.setattr(dp, "_CHAR_IDS", 2)
    assert decisions(texts, 0.6, block=4) == ref


def test_saturated_buckets_are_never_pruned():
    # 300 copies of a token overflow its byte count; the overlap bound must then stand aside.
    a = " ".join(["the"] * 300 + ["cat"])
    b = " ".join(["the"] * 290 + ["dog"])
    texts = [a, b, "the cat"]
    assert decisions(texts, 0.7) == greedy_reference(texts, 0.7)
    assert decisions(texts, 0.7)[1][0] is False


def test_element_counts_add_up_across_partitions():
    texts = ["a a b", "b c", "a b a a", "", "c"]
    whole = dp.element_counts(dp.tokenize_partition(texts))
    split = dp.element_counts(dp.tokenize_partition(texts[:2])) + dp.element_counts(
        dp.tokenize_partition(texts[2:])
    )
    assert whole == split
    assert whole[("a", 0)] == 2 and whole[("a", 2)] == 1 and whole[("c", 0)] == 2
    order = dp.TokenOrder.from_counts(whole)
    assert order.rank[("a", 2)] < order.rank[("a", 0)]  # rarest first
    # The same order and the same encodings whatever the partitioning.
    one = encoded(texts, 0.7, partition=100)
    two = encoded(texts, 0.7, partition=2)
    assert one.prefix.tolist() == two.prefix.tolist() and one.docs == two.docs


def test_resolution_keeps_the_best_kept_and_the_first_on_ties():
    # 1 is dropped by 0; 2's edges are from dropped 1 (ignored) and from 0; 3 ties 0 and 2.
    edges = dp.Edges(
        np.array([0, 0, 1, 0, 2]),
        np.array([1, 2, 2, 3, 3]),
        np.array([0.9, 0.75, 0.95, 0.8, 0.8]),
    )
    kept, nearest, score = bytearray(b"\x01") * 4, [-1] * 4, [0.0] * 4
    dp.resolve(edges, kept, nearest, score)
    assert list(kept) == [1, 0, 0, 0]
    assert nearest == [-1, 0, 0, 0] and score == [0.0, 0.9, 0.75, 0.8]


def records_with_gaps():
    return [
        {"id": 1, "instruction": "Name the capital of France."},
        {"id": 2},
        {"id": 3, "instruction": None},
        {"id": 4, "instruction": "Give three tips for staying healthy!"},
        {"id": 5, "instruction": ["Name", "the", "capital"]},
        {"id": 6, "instruction": "Name the capital of France"},
        {"instruction": "Describe the water cycle in detail."},
        {"id": 8, "instruction": "describe the water cycle in detail"},
        {"id": 9, "instruction": "!!!"},
    ]


def test_against_pool_and_missing_fields_report_what_the_streaming_path_reports():
    against = [
        {"id": "prev-1", "instruction": "Give three tips for staying healthy."},
        {"id": "prev-2"},
        {"instruction": "Name the capital city of France please."},
    ]
    recs = records_with_gaps()
    ours = streamed(recs, DedupConfig(algorithm="pairs"), against)
    assert ours == streamed(recs, DedupConfig(), against)
    kept, rejected = ours
    assert kept == [None, 9]
    why = {r.get("id"): r["reject"] for r in rejected}
    assert (
        why[2]
        == why[3]
        == why[5]
        == {"stage": "dedup", "reason": "missing_field", "field": "instruction"}
    )
    assert why[4]["nearest_id"] == "prev-1" and why[4]["nearest_against"] is True
    # Records without an id are named by their position, in ``against`` or in the input.
    assert why[1]["nearest_id"] == why[6]["nearest_id"] == "against:2"
    assert why[8]["nearest_id"] == 6 and "nearest_against" not in why[8]


def test_cli_dedup_with_pairs_writes_the_same_files(tmp_path):
    from pipeline.cli import main

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in records_with_gaps()))
    outs = {}
    for algo in ("stream", "pairs"):
        out = tmp_path / f"{algo}.jsonl"
        assert (
            main(["dedup", str(inp), "--output", str(out), "--set", f"dedup.algorithm={algo}"]) == 0
        )
        outs[algo] = (out.read_text(), (tmp_path / f"{algo}.rejected.jsonl").read_text())
    assert outs["stream"] == outs["pairs"]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"algorithm": "ray"}, "dedup.algorithm='ray'"),
        ({"algorithm": "pairs", "method": "minhash"}, "dedup.algorithm='pairs' needs"),
    ],
)
def test_config_errors_name_the_field_and_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        DedupConfig(**kwargs)


def test_public_reference_3000_identical():
    path = BENCH / "dedup_ref_public_3000.json"
    corpus = BENCH / "instructions_25k.jsonl"
    if not path.exists() or not corpus.exists():
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(f"CI: {path} must be present (shared benchmark data)")
        pytest.skip(f"{path} not present (shared benchmark data)")
    ref = json.loads(path.read_text())
    records = []
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            records.append(json.loads(line))
            if len(records) == ref["n"]:
                break
    cfg = DedupConfig(threshold=ref["threshold"], algorithm="pairs")
    kept, rejected = streamed(records, cfg)
    decided = {d["id"]: d["keep"] for d in ref["decisions"]}
    assert [i for i, keep in decided.items() if (i in set(kept)) != keep] == []
    assert len(kept) == ref["kept"]
    assert (kept, rejected) == streamed(records, DedupConfig(threshold=ref["threshold"]))
