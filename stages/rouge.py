"""ROUGE-L machinery for the dedup stage: tokenizers, the exact F-measure, a fast exact
near-duplicate index and a MinHash LSH index.

Exactness. :func:`rouge_l` and :class:`ExactIndex` give the same number, bit for bit, as
``rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(a, b)["rougeL"]
.fmeasure``: the default tokenizer repeats rouge_score's steps (lower-case, every run of
characters outside ``[a-z0-9]`` becomes a separator), the LCS length is an integer (computed
by rapidfuzz's bit-parallel ``LCSseq`` on token ids mapped to characters), and the F-measure is
computed with rouge_score's float operations in rouge_score's order (:func:`fmeasure`).

Speed. Every shortcut the definition allows, none that changes a decision:

* each text is tokenized once and its tokens mapped to integer ids, one character per id, so an
  LCS over tokens is an LCS over a short string;
* since ``LCS <= min(m, n)`` and ``LCS <= |A ∩ B|`` (the multiset overlap), ``F > t`` needs
  ``2 * LCS / (m + n) > t``; the index uses prefix filtering (the standard set-similarity-join
  filter, on token multisets ordered rare-first) and a length window to skip every pool record
  that cannot exceed the threshold, with a margin of 1e-9 so float rounding cannot skip a pair
  that rouge_score would score above it;
* the LCS of the surviving pairs runs in rapidfuzz's C++ (``process.cdist``), threaded over
  ``workers`` when a record has many survivors.

MinHash. :class:`MinHashIndex` wraps datasketch's ``MinHashLSH`` over token-occurrence sets for
corpora too large for the exact pool; it can hand its candidates to the exact F-measure.
"""

from __future__ import annotations

import math
import re
import unicodedata
from array import array
from collections.abc import Callable, Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

# rouge_score.tokenize: lower-case, replace every run of non-[a-z0-9] characters by a space,
# split. After that substitution only [a-z0-9] and spaces remain, so str.split() is the same
# as its SPACES_RE.split plus its VALID_TOKEN_RE check.
_NON_ALNUM = re.compile(r"[^a-z0-9]+")

# Scripts written without spaces between words: one token per character, so that two Chinese
# sentences sharing most characters score high instead of being one giant "word" each.
_PER_CHAR_SCRIPTS = (
    r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"
    r"\p{Bopomofo}\p{Yi}"
)
_UNICODE_TOKEN = None  # compiled lazily: the ``regex`` module is only needed for this tokenizer

TOKENIZERS = ("default", "unicode")


def tokenize_default(text: str) -> list[str]:
    """rouge_score's default tokenizer (no stemmer): ASCII letters and digits only, so words in
    other scripts vanish. Kept as the default for compatibility with Alpaca's dedup."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def tokenize_unicode(text: str) -> list[str]:
    """A tokenizer for every script: NFKC + casefold, words are runs of letters, marks and digits
    (so Devanagari vowel signs stay inside their word), and scripts written without spaces
    (Han, kana, Thai, Lao, Khmer, Myanmar, ...) give one token per character."""
    global _UNICODE_TOKEN
    if _UNICODE_TOKEN is None:
        import regex

        _UNICODE_TOKEN = regex.compile(
            rf"(?V1)[{_PER_CHAR_SCRIPTS}]\p{{M}}*|[[\p{{L}}\p{{M}}\p{{N}}]--[{_PER_CHAR_SCRIPTS}]]+"
        )
    return _UNICODE_TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def get_tokenizer(name: str) -> Callable[[str], list[str]]:
    """The tokenizer called ``name`` ("default" or "unicode")."""
    if name == "default":
        return tokenize_default
    if name == "unicode":
        return tokenize_unicode
    raise ValueError(f"unknown tokenizer {name!r}: use one of {', '.join(TOKENIZERS)}")


def fmeasure(lcs: int, target_len: int, prediction_len: int) -> float:
    """ROUGE-L F from an LCS length, with rouge_score's float operations in its order
    (``_score_lcs`` then ``scoring.fmeasure``); 0.0 when either side has no tokens."""
    if not target_len or not prediction_len:
        return 0.0
    precision = lcs / prediction_len
    recall = lcs / target_len
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of two sequences of hashables (tokens)."""
    return int(LCSseq.similarity(a, b))


def rouge_l(target: str, prediction: str, tokenizer: str = "default") -> float:
    """ROUGE-L F-measure of two texts, identical to rouge_score's for the default tokenizer."""
    tok = get_tokenizer(tokenizer)
    a, b = tok(target), tok(prediction)
    return fmeasure(lcs_length(a, b), len(a), len(b))


# Token ids become characters, skipping the surrogate block; ids past the last code point stay
# ints in a list (rapidfuzz compares a character and an int by value, so both forms mix).
_SURROGATES = 0xD800
_SURROGATE_SPAN = 0x800
_CHAR_IDS = 0x110000 - _SURROGATE_SPAN


def _encode(ids: list[int]) -> str | list[int]:
    codes = [i if i < _SURROGATES else i + _SURROGATE_SPAN for i in ids]
    if ids and max(ids) >= _CHAR_IDS:
        return codes
    return "".join(map(chr, codes))


class Vocab:
    """Token -> integer id, and each id's rank in the order prefix filtering uses.

    The order must never change once a record is in the index, yet rare-first is what makes
    prefixes short. So tokens counted by :meth:`prime` (a sample of the corpus) rank by
    ascending frequency, and every token first met later ranks before all of them, newest first
    (a token first seen late in a corpus is usually rare). Both rules only ever add ranks.
    """

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.rank: list[int] = []
        self._next_new_rank = -1

    def prime(self, token_lists: Sequence[Sequence[str]]) -> None:
        """Rank the tokens of a sample by document frequency, rare first. Call before adding."""
        if self.ids:
            raise RuntimeError("Vocab.prime must come before any token is added")
        df: dict[str, int] = {}
        for toks in token_lists:
            for t in set(toks):
                df[t] = df.get(t, 0) + 1
        for r, t in enumerate(sorted(df, key=lambda t: (df[t], t))):
            self.ids[t] = len(self.rank)
            self.rank.append(r)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        ids = self.ids
        out = []
        for t in tokens:
            i = ids.get(t)
            if i is None:
                i = ids[t] = len(self.rank)
                self.rank.append(self._next_new_rank)
                self._next_new_rank -= 1
            out.append(i)
        return out


class ExactIndex:
    """The pool of kept texts, answering "which pool record has the highest ROUGE-L F with this
    text, if any is above the threshold" exactly, without scoring most of the pool.

    ``threshold``: decisions are ``F > threshold`` (strictly greater, as Alpaca's). ``workers``:
    threads for the LCS of one record's survivors (0 = all cores).

    Filters, each a bound on the LCS that can only let extra pairs through, never skip a pair
    that rouge_score scores above the threshold:

    1. prefix filter: a pair needs a token occurrence in common among the first
       ``n - min_overlap(n) + 1`` of each side's occurrences in rank order (else their multiset
       overlap, hence their LCS, is too small);
    2. length window: ``LCS <= min(m, n)``;
    3. bucket overlap: tokens are counted into ``_BUCKETS`` buckets (the most frequent tokens
       each get their own, the rest share by id), and ``sum(min(bucket counts))`` is at least
       the multiset overlap, which is at least the LCS. Vectorised over all candidates at once.

    Only then is the LCS computed (rapidfuzz, C++) and the F formed with rouge_score's floats.
    """

    # A pair is skipped only if even its bound is at or below threshold - _MARGIN; rouge_score's
    # float F differs from the exact 2*LCS/(m+n) by a few ulps, far below this.
    _MARGIN = 1e-9
    _BUCKETS = 128
    _DEDICATED = 64  # buckets reserved for the most frequent primed tokens
    # Below this many survivors threading costs more than it saves.
    _PARALLEL_MIN = 2048

    def __init__(self, threshold: float, tokenizer: str = "default", workers: int = 0):
        self.threshold = float(threshold)
        self.tokenize = get_tokenizer(tokenizer)
        self.workers = workers if workers > 0 else -1
        self.vocab = Vocab()
        self._t = max(0.0, self.threshold - self._MARGIN)
        self._dedicated: dict[int, int] = {}
        self._tok_bucket = np.zeros(0, dtype=np.int64)
        self._keys: list = []  # pool position -> caller's key (record id)
        self._docs: list[str | list[int]] = []  # pool position -> encoded token ids
        self._lens = np.zeros(1024, dtype=np.int64)
        # Bucket counts per pool record; saturate at 255, and a record with a saturated bucket
        # is flagged so the bound is never applied to it (a saturated count could undercount).
        self._sig = np.zeros((1024, self._BUCKETS), dtype=np.uint8)
        self._unbounded = np.zeros(1024, dtype=bool)
        self._postings: dict[int, array] = {}
        self.pairs_scored = 0  # LCS computations done (for benchmarks)

    def __len__(self) -> int:
        return len(self._docs)

    def prime(self, texts: Sequence[str]) -> None:
        """Order tokens rare-first from a sample of texts (speed only; never changes a result)."""
        self.vocab.prime([self.tokenize(t) for t in texts])
        n = len(self.vocab.rank)
        # The last primed ids are the most frequent tokens: give those their own buckets.
        for b, tid in enumerate(range(max(0, n - self._DEDICATED), n)):
            self._dedicated[tid] = b

    def _min_overlap(self, n: int) -> int:
        """Smallest overlap a text of n tokens needs with any partner to reach F > t."""
        t = self._t
        if t >= 1.0:
            return n + 1
        # overlap >= LCS > t (n + m) / 2 and overlap <= m give overlap > t n / (2 - t).
        return math.floor(t * n / (2.0 - t)) + 1

    def _prefix(self, ids: list[int]) -> list[int]:
        """The multiset's first n - min_overlap + 1 elements in rank order, as element keys."""
        n = len(ids)
        size = n - self._min_overlap(n) + 1
        if size <= 0:
            return []
        rank = self.vocab.rank
        seen: dict[int, int] = {}
        keys = []
        for i in ids:
            k = seen.get(i, 0)
            seen[i] = k + 1
            # One key per (token, occurrence): multiset overlap becomes set overlap.
            keys.append(((rank[i] + (1 << 40)) << 32) | k)
        keys.sort()
        return keys[:size]

    def _signature(self, ids: list[int]) -> tuple[np.ndarray, bool]:
        nv = len(self.vocab.rank)
        if len(self._tok_bucket) < nv:
            d, shared = self._dedicated, self._BUCKETS - self._DEDICATED
            start = len(self._tok_bucket)
            extra = [d.get(i, self._DEDICATED + i % shared) for i in range(start, nv)]
            self._tok_bucket = np.concatenate([self._tok_bucket, np.array(extra, np.int64)])
        counts = np.bincount(self._tok_bucket[ids], minlength=self._BUCKETS)
        saturated = bool(counts.max(initial=0) > 255)
        return np.minimum(counts, 255).astype(np.uint8), saturated

    def prepare(self, text: str) -> tuple:
        """Tokenize and encode once: (token ids, prefix keys, bucket signature, saturated)."""
        ids = self.vocab.encode(self.tokenize(text))
        return (ids, self._prefix(ids), *self._signature(ids))

    def best(self, prepared: tuple) -> tuple[object | None, float]:
        """(key, F) of the pool record with the highest F, first in pool order on ties, if that
        F is above the threshold; else (None, 0.0). Every pool record skipped unscored has
        F <= threshold, so the answer is the one a full scan with rouge_score gives."""
        ids, prefix, sig, saturated = prepared
        m = len(ids)
        if not m or not prefix:
            return None, 0.0
        postings = self._postings
        lists = [np.frombuffer(a, dtype=np.int32) for k in prefix if (a := postings.get(k))]
        if not lists:
            return None, 0.0
        cand = np.concatenate(lists) if len(lists) > 1 else lists[0]
        t = self._t
        # Length window, as bounds on the pool record's length n: min(m, n) > t (m + n) / 2.
        lo, hi = t * m / (2.0 - t), (2.0 - t) * m / t if t > 0 else math.inf
        lens = self._lens[cand]
        cand = cand[(lens > lo) & (lens < hi)]
        if not len(cand):
            return None, 0.0
        lens = self._lens[cand]
        if not saturated:
            bound = np.minimum(self._sig[cand], sig).sum(axis=1, dtype=np.int64)
            ok = (2 * bound > t * (lens + m)) | self._unbounded[cand]
            cand = cand[ok]
            if not len(cand):
                return None, 0.0
        if len(lists) > 1:
            cand = np.unique(cand)
        lens = self._lens[cand]
        ok = 2 * np.minimum(lens, m) > t * (lens + m)
        cand, lens = cand[ok], lens[ok]
        if not len(cand):
            return None, 0.0
        docs = self._docs
        sel = cand.tolist()
        workers = self.workers if len(sel) >= self._PARALLEL_MIN else 1
        lcs = process.cdist(
            [_encode(ids)],
            [docs[p] for p in sel],
            scorer=LCSseq.similarity,
            dtype=np.int32,
            workers=workers,
        )[0]
        self.pairs_scored += len(sel)
        best_p, best_f = None, 0.0
        for p, L, n in zip(sel, lcs.tolist(), lens.tolist(), strict=True):
            if L and 2 * L > t * (m + n):
                f = fmeasure(L, m, n)
                if f > best_f and f > self.threshold:
                    best_p, best_f = p, f
        if best_p is None:
            return None, 0.0
        return self._keys[best_p], best_f

    def add(self, key: object, prepared: tuple) -> None:
        """Put a kept text into the pool. Texts with no tokens can never match and stay out."""
        ids, prefix, sig, saturated = prepared
        pos = len(self._docs)
        if pos == len(self._lens):
            grow = len(self._lens)
            self._lens = np.concatenate([self._lens, np.zeros(grow, np.int64)])
            self._sig = np.concatenate([self._sig, np.zeros((grow, self._BUCKETS), np.uint8)])
            self._unbounded = np.concatenate([self._unbounded, np.zeros(grow, bool)])
        self._keys.append(key)
        self._docs.append(_encode(ids))
        self._lens[pos] = len(ids)
        self._sig[pos] = sig
        self._unbounded[pos] = saturated
        postings = self._postings
        for k in prefix:
            a = postings.get(k)
            if a is None:
                postings[k] = array("i", (pos,))
            else:
                a.append(pos)


class MinHashIndex:
    """Approximate near-duplicate search for millions of records: datasketch MinHash signatures
    of each text's token-occurrence set in a ``MinHashLSH``.

    ROUGE-L F > t implies a token-multiset Jaccard above t / (2 - t) (0.54 for t = 0.7), so an LSH
    threshold a little under that catches most exact duplicates. With ``verify`` the LSH
    candidates are scored with the exact F (the pool then keeps token ids); without it a
    candidate whose estimated Jaccard reaches ``lsh_threshold`` counts as a duplicate.
    """

    def __init__(
        self,
        threshold: float,
        tokenizer: str = "default",
        num_perm: int = 128,
        lsh_threshold: float = 0.5,
        verify: bool = True,
        seed: int = 1,
    ):
        from datasketch import MinHash, MinHashLSH
        from datasketch.hashfunc import sha1_hash32

        self._MinHash = MinHash
        self.threshold = float(threshold)
        self.tokenize = get_tokenizer(tokenizer)
        self.num_perm = num_perm
        self.lsh_threshold = lsh_threshold
        self.verify = verify
        self.seed = seed
        self.lsh = MinHashLSH(threshold=lsh_threshold, num_perm=num_perm)
        self._perm = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        # The same token occurrences recur across millions of records: hash each once (SHA-1,
        # datasketch's own hash), in a memo cleared when it grows past _HASH_MEMO entries.
        self._memo: dict[bytes, int] = {}
        self._sha1 = sha1_hash32
        self.vocab = Vocab()
        # Per pool position: encoded token ids (verify) or the signature as uint32 (its hash
        # values are below 2**32), half the memory of datasketch's uint64 array.
        self._store: dict[int, tuple[int, str | list[int]] | np.ndarray] = {}
        self._keys: list = []
        self.pairs_scored = 0

    def __len__(self) -> int:
        return len(self._keys)

    _HASH_MEMO = 1 << 20

    def _hash(self, data: bytes) -> int:
        h = self._memo.get(data)
        if h is None:
            if len(self._memo) >= self._HASH_MEMO:
                self._memo.clear()
            h = self._memo[data] = self._sha1(data)
        return h

    def prepare(self, text: str):
        toks = self.tokenize(text)
        seen: dict[str, int] = {}
        shingles = []
        for t in toks:
            k = seen.get(t, 0)
            seen[t] = k + 1
            shingles.append(f"{t}\x00{k}".encode())
        sig = None
        if shingles:
            sig = self._MinHash(
                num_perm=self.num_perm,
                seed=self.seed,
                permutations=self._perm,
                scheme="affine32",
                hashfunc=self._hash,
            )
            sig.update_batch(shingles)
        return self.vocab.encode(toks) if self.verify else toks, sig

    def best(self, prepared) -> tuple[object | None, float]:
        """(key, score) of the best LSH candidate that counts as a duplicate, else (None, 0.0).
        The score is the exact ROUGE-L F with ``verify``, else the estimated Jaccard."""
        toks, sig = prepared
        if sig is None:
            return None, 0.0
        cands = sorted(self.lsh.query(sig))
        best_p, best_s = None, 0.0
        for p in cands:
            self.pairs_scored += 1
            if self.verify:
                n, doc = self._store[p]
                s = fmeasure(lcs_length(_encode(toks), doc), len(toks), n)
                hit = s > self.threshold
            else:
                s = float(np.mean(self._store[p] == sig.hashvalues.astype(np.uint32)))
                hit = s >= self.lsh_threshold
            if hit and s > best_s:
                best_p, best_s = p, s
        if best_p is None:
            return None, 0.0
        return self._keys[best_p], best_s

    def add(self, key: object, prepared) -> None:
        toks, sig = prepared
        pos = len(self._keys)
        self._keys.append(key)
        if sig is None:
            return
        self.lsh.insert(pos, sig, check_duplication=False)
        if self.verify:
            self._store[pos] = (len(toks), _encode(toks))
        else:
            self._store[pos] = sig.hashvalues.astype(np.uint32)
