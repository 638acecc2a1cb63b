"""stages.rouge against rouge_score itself: tokenizer, F-measure bits, the exact index."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer, tokenize

from stages.rouge import (
    ExactIndex,
    MinHashIndex,
    _encode,
    fmeasure,
    get_tokenizer,
    lcs_length,
    rouge_l,
    tokenize_default,
    tokenize_unicode,
)

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

# Words chosen to hit the tokenizer's corners: case, digits, punctuation inside words, accents
# (deleted by rouge_score), characters whose lower() is ASCII (Kelvin sign, dotted I), CJK,
# whitespace of several kinds, and the empty string.
WORDS = [
    "the",
    "The",
    "THE",
    "cat",
    "cats",
    "dog!",
    "a",
    "an",
    "x-y",
    "don't",
    "42",
    "4.2",
    "3rd",
    "café",
    "naïve",
    "中文",
    "北京",
    "\u212a",
    "\u0130stanbul",
    "ǅ",
    "é",
    "",
    " ",
    "\n",
    "\t",
    "!!!",
    "under_score",
    "emoji🙂",
    "Ⅻ",
    "①",
]
texts = st.one_of(
    st.lists(st.sampled_from(WORDS), max_size=20).map(" ".join),
    st.text(max_size=60),
    st.text(alphabet="ab ,.A1é中", max_size=40),
)


def ref_f(a: str, b: str) -> float:
    return SCORER.score(a, b)["rougeL"].fmeasure


@settings(max_examples=400, deadline=None)
@given(texts)
def test_default_tokenizer_is_rouge_scores(text):
    assert tokenize_default(text) == tokenize.tokenize(text, None)


@settings(max_examples=400, deadline=None)
@given(texts, texts)
def test_rouge_l_bit_identical_to_rouge_score(a, b):
    ours = rouge_l(a, b)
    assert ours == ref_f(a, b)
    # The score is symmetric in floats too, so the pool order never matters.
    assert ours == ref_f(b, a)


@pytest.mark.parametrize("total", range(2, 60))
def test_fmeasure_float_ops_match_every_small_case(total):
    # Every (lcs, m, n) with m + n = total: the float value, not just the rational one, must be
    # rouge_score's, since decisions at the threshold hinge on the last bit.
    for m in range(1, total):
        n = total - m
        for lcs in range(0, min(m, n) + 1):
            a = " ".join(f"w{i}" for i in range(m))
            b = " ".join([f"w{i}" for i in range(lcs)] + [f"z{i}" for i in range(n - lcs)])
            assert fmeasure(lcs, m, n) == ref_f(a, b)


def test_lcs_over_encoded_ids_including_ids_past_unicode():
    # Ids beyond the last code point are kept as ints; they must still compare by value.
    big = 0x110000
    ids_a = [1, 0xD7FF, 0xD800, big + 5, 7, big + 5]
    ids_b = [0xD800, 7, big + 5, 1]
    assert isinstance(_encode(ids_a), list)
    assert isinstance(_encode([1, 2, 0xD800]), str)
    assert lcs_length(_encode(ids_a), _encode(ids_b)) == 3  # [0xD800, 7, big+5]
    assert lcs_length(_encode([1, 0xD800, 3]), _encode([0xD800 + 0x800, 3])) == 1


def test_unicode_tokenizer_handles_every_script():
    assert tokenize_unicode("Héllo WORLD") == ["héllo", "world"]
    assert tokenize_unicode("我爱北京") == ["我", "爱", "北", "京"]
    assert tokenize_unicode("नमस्ते दुनिया") == ["नमस्ते", "दुनिया"]  # vowel signs stay in words
    assert tokenize_unicode("カタカナabc") == ["カ", "タ", "カ", "ナ", "abc"]
    assert tokenize_unicode("ﬁne Straße") == ["fine", "strasse"]  # NFKC + casefold
    # The default tokenizer deletes all of these words, as rouge_score does.
    assert tokenize_default("我爱北京 नमस्ते") == []
    assert rouge_l("我爱北京天安门", "我爱北京", "unicode") > 0.7
    assert rouge_l("我爱北京天安门", "我爱北京") == 0.0
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("whitespace")


def brute_best(pool: list[str], text: str, threshold: float):
    best_i, best_f = None, 0.0
    for i, p in enumerate(pool):
        f = ref_f(p, text)
        if f > threshold and f > best_f:
            best_i, best_f = i, f
    return best_i, best_f


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from(WORDS[:12]), max_size=12).map(" ".join), max_size=25),
    st.lists(st.sampled_from(WORDS[:12]), max_size=12).map(" ".join),
    st.sampled_from([0.0, 0.3, 0.5, 0.7, 2 / 3, 0.8, 0.95, 1.0]),
    st.booleans(),
)
def test_exact_index_finds_the_same_best_as_brute_force(pool, text, threshold, primed):
    index = ExactIndex(threshold)
    if primed:
        index.prime(pool)
    for i, p in enumerate(pool):
        index.add(i, index.prepare(p))
    key, f = index.best(index.prepare(text))
    want_i, want_f = brute_best(pool, text, threshold)
    assert f == want_f
    assert key == want_i


def test_exact_index_long_repeats_saturate_safely():
    # 300 repeats of a token overflow the uint8 bucket counts; the bound must not skip the pair.
    a = "a " * 300 + "b"
    b = "a " * 290 + "c"
    index = ExactIndex(0.7)
    index.add("a", index.prepare(a))
    key, f = index.best(index.prepare(b))
    assert key == "a" and f == ref_f(a, b) and f > 0.9


def test_exact_index_skips_pairs_it_can_bound():
    index = ExactIndex(0.7)
    docs = [f"completely different topic number {i} about item{i}" for i in range(50)]
    for i, d in enumerate(docs):
        index.add(i, index.prepare(d))
    index.pairs_scored = 0
    key, f = index.best(index.prepare("an unrelated sentence that shares nothing with the pool"))
    assert key is None and index.pairs_scored == 0


def test_minhash_index_verified_scores_exactly():
    index = MinHashIndex(0.7, verify=True)
    base = "write a python function that returns the sum of all even numbers in a list"
    index.add("base", index.prepare(base))
    near = "write a python function that returns the sum of all odd numbers in a list"
    key, f = index.best(index.prepare(near))
    assert key == "base" and f == ref_f(base, near)
    key, f = index.best(index.prepare("translate this sentence into french please"))
    assert key is None and f == 0.0


class _UnicodeTok:
    def tokenize(self, text):
        return tokenize_unicode(text)


@settings(max_examples=200, deadline=None)
@given(texts, texts)
def test_unicode_rouge_l_matches_rouge_score_with_that_tokenizer(a, b):
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeTok())
    assert rouge_l(a, b, "unicode") == scorer.score(a, b)["rougeL"].fmeasure


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from(WORDS[:12]), max_size=10).map(" ".join), max_size=20),
    st.lists(st.sampled_from(WORDS[:12]), max_size=10).map(" ".join),
)
def test_exact_index_with_ids_past_unicode_and_threads(pool, text):
    import stages.rouge as rouge

    # Pretend only 3 ids fit in a character, so most documents take the list-of-ints path,
    # and thread every LCS batch: results must not change.
    old = rouge._CHAR_IDS
    rouge._CHAR_IDS = 3
    try:
        index = ExactIndex(0.5, workers=2)
        index._PARALLEL_MIN = 1
        for i, p in enumerate(pool):
            index.add(i, index.prepare(p))
        assert index.best(index.prepare(text)) == brute_best(pool, text, 0.5)
    finally:
        rouge._CHAR_IDS = old
