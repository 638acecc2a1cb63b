"""Exact greedy ROUGE-L dedup as a similarity join: partitions -> candidate pairs -> scored
edges -> one resolution pass, so that the work can be spread over threads, processes or a Ray
cluster and the decisions are still exactly those of :class:`stages.dedup.Deduper` and of
rouge_score.

The rule (Self-Instruct's): texts are taken in order; text ``j`` is dropped iff its ROUGE-L F
with some earlier *kept* text ``i`` (or an ``against`` text) is ``> threshold``; its nearest is
the kept text with the highest F, the first in pool order (``against`` texts, then inputs in
order) on ties. F is rouge_score's float: ``p = L/|i|``, ``r = L/|j|``, ``F = 2*p*r/(p+r)``
(:func:`stages.rouge.fmeasure`, ``j`` as the target), ``L`` the LCS of the token sequences
(rapidfuzz's ``LCSseq`` over token ids as characters, as in the streaming path).

Phases, each a plain function over arrays, so that an engine can run them as tasks:

1. :func:`tokenize_partition` per partition of texts (the tokenizers of :mod:`stages.rouge`);
   :func:`element_counts` per partition, which add up; :meth:`TokenOrder.from_counts` on the
   driver: one global order of token *occurrences* ``(token, k)`` ("the k-th copy of token in a
   text"), rarest first, ties by ``(token, k)``; :func:`encode_partition` per partition.
2. :func:`candidate_pairs`: a block of probe texts against a read-only :class:`PrefixIndex` of
   kept texts: every pair that could have F > threshold (proof below), each once.
3. :func:`score_pairs`: an exact overlap bound, then the LCS and rouge_score's F of the rest;
   the edges ``(i, j, F)``, ``i < j``, F > threshold.
4. :func:`resolve` on the driver: one pass over the edges sorted by ``(j, i)``.

:func:`dedup_texts` runs them locally, block after block of input order.

Why no pair is missed. Write ``n = |i|``, ``m = |j|`` (tokens) and ``o`` for the size of the
multiset intersection of their tokens, which is the size of the *set* intersection of their
occurrence sets ``{(token, k)}``. A common subsequence uses each token at most as often as both
texts hold it, so ``L <= o <= min(n, m)``.

* Float slack. rouge_score's F is within a few ulps (relative ~1e-15) of the exact
  ``2L/(n+m)``, so F > t implies ``2L > t'(n+m)`` with ``t' = t - 1e-9``. Every bound below is
  derived from ``t'`` and evaluated in float64; the slack dwarfs the rounding of those
  evaluations, so a computed bound is never tighter than the true one.
* Length. ``L <= min(n, m)`` and ``2L > t'(n+m)``: for ``n <= m``, ``n > t'm/(2-t')``; for
  ``n > m``, ``n < m(2-t')/t'``.
* Required overlap. ``o >= L``, ``L <= n`` and ``2L > t'(n+m)`` give ``o > t'm/(2-t')``, so
  ``o >= alpha(m) = floor(t'm/(2-t')) + 1`` (either text in this role). If ``|x| <= |y|``,
  ``o > t'(|x|+|y|)/2 >= t'|x|``, so ``o >= gamma(|x|) = floor(t'|x|) + 1``.
* Prefix lemma (with ``l`` shared elements). Order all occurrences globally. If
  ``|X ∩ Y| >= a >= l`` and ``|X ∩ Y| >= b >= l``, the first ``|X| - a + l`` elements of X and
  the first ``|Y| - b + l`` of Y both hold the ``l`` smallest elements of ``X ∩ Y``: at most
  ``a - l`` elements of ``X ∩ Y`` lie past X's prefix, so at least ``l`` lie in it, and the
  prefix is downward closed in X, so the ``l`` smallest of ``X ∩ Y`` are in it; same for Y.
  The index uses the *long* prefix (``a = alpha``) of the longer text and the *short* prefix
  (``a = gamma``) of the shorter (either on equal lengths), with ``l = 2`` where that text's
  ``a >= 2`` and ``l = 1`` otherwise (a text of one token): every pair with F > t shares its
  smallest common element ``e1`` in both prefixes, and when both texts have ``l = 2`` also its
  second ``e2``, so a pair with a single hit is dropped when both sides have ``l = 2``.
* Positional bound. At ``e1``, at rank positions ``p`` in i and ``q`` in j, every other common
  occurrence comes after both, so ``o <= 1 + min(n-1-p, m-1-q)``; at ``e2``, ``o <= 2 + min(...)``.
  A hit is kept iff ``l + min(n-p, m-q) - 1 > t'(n+m)/2`` with the pair's ``l``, which holds at
  ``e1`` (and ``e2``) of every pair with F > t, whatever the hit; so the per-hit test, and the
  partner length cap it gives per probe entry before any hit is expanded
  (``n < 2(m-q+1)/t' - m``), drop nothing needed.
* Overlap bound. Tokens fall into 64 buckets (the 32 most frequent tokens one each, the rest by
  id); ``sum_b min(count_i(b), count_j(b)) >= o`` since min is superadditive. Counts are kept in
  a byte; a text with a count above 255 is never pruned by this bound.
* Levels. A pass at a higher threshold ``u`` (``u > t``) finds, by the same lemma, every pool
  text with F > u. A probe that gets an edge with F > u there has its maximum among the texts
  that pass found, ties included, so it needs no pass at a lower level; the others go on to the
  next level, the last being ``t`` itself.
* Greedy pruning. The resolution reads an edge ``(i, j)`` only when ``i`` is kept, and a kept
  text's decision never depends on later ones. So edges from texts already known to be dropped
  may be left out: the index holds only kept (and ``against``) texts, and texts are joined in
  blocks of input order: a block against the pool of earlier blocks, then against the block's
  own texts that the pool did not drop. Every edge from a kept text to a later text is still
  produced before the later text is resolved.
* Scores. Surviving pairs get the exact LCS (rapidfuzz) and F from :func:`stages.rouge.fmeasure`
  itself, compared with ``>``; :func:`resolve` keeps, per ``j``, the highest F over kept ``i``
  and the smallest ``i`` on ties: exactly ``ExactIndex.best`` of the streaming path.

Why it is fast. Per text, Python only tokenizes; everything after is array work. The pool's
prefix entries are sorted by ``(element, length)``, so one ``searchsorted`` per probe entry
(needles sorted, so each search resumes where the last ended) finds its length-compatible
partners, ``np.repeat`` expands them, the positional bound is one array expression and one sort
per chunk dedupes and counts the hits of each pair (``np.unique``'s hash path in numpy 2.4 is
two orders of magnitude slower than sorting int64 keys). The shorter text of a pair probes with
its short prefix (~30% of its tokens at t = 0.7, against ~46% for a plain prefix filter);
requiring two shared elements removes the pairs that share one rare token and little else (the
bulk of a plain prefix join's output); the levels settle near-copies with prefixes of ~10-20%;
the overlap bound, a few byte operations per pair, spares most LCS calls (~0.6 us each for
scattered pairs). Greedy pruning keeps the pairs between two duplicates (most pairs, on
near-duplicate-heavy data) from ever forming. Pool segments merge log-structured, so adding a
block's kept texts sorts about that block's entries.

What stays quadratic: a probe is joined with every kept text that shares enough of its rarer
tokens, and on corpora of templated texts (the 7,673 "toolformer" instructions of the 25k
corpus share ~30-token preambles) the kept texts of one template are all such partners, so the
work grows about 3-4x per doubling of the input, as for the streaming index; blocks spread it
over workers.

Partitioning for a cluster: phase 1 maps over input partitions; per block, phases 2 and 3 map
over slices of the block against the broadcast index (:func:`probe`); the driver runs
:func:`resolve` and :meth:`PrefixIndex.add`. Driver state: a byte per text, the block's edges
and the index (about 16 bytes per prefix entry of a kept text, ~1.7 entries per token over the
levels and tiers).
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from stages.rouge import _CHAR_IDS, _SURROGATE_SPAN, _SURROGATES, fmeasure, get_tokenizer

# Every bound tests against t - MARGIN: rouge_score's float F is within a few ulps of 2L/(n+m),
# far inside this, and the slack dwarfs the rounding of the bounds themselves.
MARGIN = 1e-9
# One join expands at most about this many hits at once (~60 bytes each in temporaries).
_CHUNK_HITS = 1 << 21
# Overlap-bound buckets; the most frequent tokens get their own (they dominate the counts).
_BUCKETS = 64
_DEDICATED = 32
_BOUND_CHUNK = 1 << 18
# Tier keys below this are stored as int32; search keys are clipped to it.
_KEY32 = (1 << 31) - 1


def _lower(threshold: float) -> float:
    return max(0.0, float(threshold) - MARGIN)


def _distinct(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sorting; numpy 2.4's hash-based np.unique is far slower)."""
    s = np.sort(keys)
    return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s


def required_overlap(lengths: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(gamma, alpha): the overlap a text of each length needs with a partner at least as long,
    and with any partner, to exceed the threshold (module docstring)."""
    n = np.asarray(lengths, dtype=np.int64)
    if threshold >= 1.0:  # F <= 1: nothing is ever above the threshold
        return n + 1, n + 1
    t = _lower(threshold)
    nf = n.astype(np.float64)
    gamma = np.floor(t * nf).astype(np.int64) + 1
    alpha = np.floor(t * nf / (2.0 - t)).astype(np.int64) + 1
    return gamma, alpha


def prefix_sizes(lengths: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(short, long) prefix sizes: ``n - a + 2`` for a required overlap ``a >= 2`` (a partner
    then shares two elements of it), ``n - a + 1`` otherwise; ``a`` is gamma for the shorter
    text of a pair, alpha for the longer."""
    n = np.asarray(lengths, dtype=np.int64)
    gamma, alpha = required_overlap(n, threshold)
    short = n - gamma + 1 + (gamma >= 2)
    long = n - alpha + 1 + (alpha >= 2)
    return np.maximum(short, 0), np.maximum(long, 0)


def length_window(
    lengths: np.ndarray, threshold: float, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (lowest, highest) partner length with which a text can exceed the threshold."""
    m = np.asarray(lengths, dtype=np.int64)
    t = _lower(threshold)
    lo = np.floor(t * m / (2.0 - t)).astype(np.int64) + 1
    if t > 0:
        hi = np.minimum(np.floor(m * (2.0 - t) / t), max_len).astype(np.int64)
    else:
        hi = np.full_like(m, max_len)
    return lo, hi


def levels(threshold: float, count: int = 3) -> tuple[float, ...]:
    """Thresholds of the probe passes, highest first, ending at ``threshold``."""
    if threshold >= 1.0 or count <= 1:
        return (float(threshold),)
    t = float(threshold)
    return tuple(t + (1.0 - t) * k / count for k in range(count - 1, 0, -1)) + (t,)


# -- phase 1: tokenize, count, order, encode -------------------------------------------------
@dataclass
class TokenizedPartition:
    """Texts of one partition as local token ids; ``occ[x]`` is how many earlier copies of the
    same token its text holds (the ``k`` of the occurrence ``(token, k)``)."""

    vocab: list[str]
    ids: np.ndarray  # int32, every text's local token ids, concatenated
    occ: np.ndarray  # int32, aligned with ids
    offsets: np.ndarray  # int64, len(texts) + 1


def tokenize_partition(texts: Iterable[str], tokenizer: str = "default") -> TokenizedPartition:
    """Tokenize with :mod:`stages.rouge`'s tokenizer (rouge_score's, for "default")."""
    tok = get_tokenizer(tokenizer)
    local: dict[str, int] = {}
    ids: list[int] = []
    lens = [0]
    for text in texts:
        toks = tok(text)
        ids.extend([local.setdefault(t, len(local)) for t in toks])
        lens.append(len(toks))
    ids_a = np.array(ids, dtype=np.int32)
    offsets = np.cumsum(np.array(lens, dtype=np.int64))
    # Occurrence index: sorted by (text, token, position), the k-th member of a run of equal
    # (text, token) is copy k.
    text_of = np.repeat(np.arange(len(lens) - 1, dtype=np.int64), np.diff(offsets))
    order = np.lexsort((np.arange(len(ids_a)), ids_a, text_of))
    key = text_of[order] * (len(local) + 1) + ids_a[order]
    run_start = np.r_[True, key[1:] != key[:-1]] if len(key) else np.zeros(0, bool)
    first = np.maximum.accumulate(np.where(run_start, np.arange(len(key)), 0))
    occ = np.empty(len(key), dtype=np.int32)
    occ[order] = np.arange(len(key)) - first
    return TokenizedPartition(list(local), ids_a, occ, offsets)


def _local_elements(part: TokenizedPartition) -> tuple[np.ndarray, np.ndarray]:
    """(distinct local element keys ``occ * |vocab| + id``, index of each occurrence in them)."""
    key = part.occ.astype(np.int64) * max(1, len(part.vocab)) + part.ids
    o = np.argsort(key, kind="stable")
    s = key[o]
    new = np.r_[True, s[1:] != s[:-1]] if len(s) else np.zeros(0, bool)
    inverse = np.empty(len(key), dtype=np.int64)
    inverse[o] = np.cumsum(new) - 1
    return s[new], inverse


def element_counts(part: TokenizedPartition) -> Counter:
    """``{(token, k): number of texts with at least k+1 copies}``; partitions' counts add up."""
    keys, inverse = _local_elements(part)
    counts = np.bincount(inverse, minlength=len(keys))
    nv, vocab = max(1, len(part.vocab)), part.vocab
    return Counter(
        {(vocab[k % nv], k // nv): c for k, c in zip(keys.tolist(), counts.tolist(), strict=True)}
    )


@dataclass
class TokenOrder:
    """The global order: ``rank[(token, k)]``, rarest first (ties by token, then k), and each
    token's id for the LCS strings and buckets (most frequent first)."""

    rank: dict[tuple[str, int], int]
    token_id: dict[str, int]

    @classmethod
    def from_counts(cls, counts: Mapping[tuple[str, int], int]) -> TokenOrder:
        elems = sorted(counts, key=lambda e: (counts[e], e))
        firsts = sorted((e for e in counts if e[1] == 0), key=lambda e: (-counts[e], e[0]))
        return cls({e: r for r, e in enumerate(elems)}, {e[0]: i for i, e in enumerate(firsts)})


@dataclass
class EncodedPartition:
    """What the join needs of each text: its length, the long prefix (at the base threshold)
    of its occurrence ranks in ascending order (shorter prefixes are its start), its bucket
    counts and its LCS string."""

    lengths: np.ndarray  # int64
    prefix: np.ndarray  # int32 ranks, concatenated
    prefix_offsets: np.ndarray  # int64, len + 1
    sig: np.ndarray  # uint8 (len, _BUCKETS)
    saturated: np.ndarray  # bool: a bucket count above 255 (the bound is not applied)
    docs: list[str | list[int]]

    def __len__(self) -> int:
        return len(self.lengths)


def encode_partition(
    part: TokenizedPartition, order: TokenOrder, threshold: float
) -> EncodedPartition:
    """Global ranks, the rank-sorted long prefix, bucket counts and LCS string of every text."""
    lengths = np.diff(part.offsets)
    nt = len(lengths)
    keys, inverse = _local_elements(part)
    nv, vocab = max(1, len(part.vocab)), part.vocab
    key_rank = np.array(
        [order.rank[(vocab[k % nv], k // nv)] for k in keys.tolist()], dtype=np.int32
    )
    ranks = key_rank[inverse]
    text_of = np.repeat(np.arange(nt, dtype=np.int64), lengths)
    srt = np.lexsort((ranks, text_of))
    _, long = prefix_sizes(lengths, threshold)
    pos = np.arange(len(srt), dtype=np.int64) - np.repeat(part.offsets[:-1], lengths)
    prefix = ranks[srt][pos < np.repeat(long, lengths)]
    prefix_offsets = np.r_[0, np.cumsum(long)].astype(np.int64)

    gid = np.array([order.token_id[t] for t in vocab], dtype=np.int64)[part.ids]
    bucket = np.where(gid < _DEDICATED, gid, _DEDICATED + gid % (_BUCKETS - _DEDICATED))
    counts = np.bincount(text_of * _BUCKETS + bucket, minlength=nt * _BUCKETS)
    counts = counts.reshape(nt, _BUCKETS)
    saturated = counts.max(axis=1, initial=0) > 255
    sig = np.minimum(counts, 255).astype(np.uint8)

    off = part.offsets.tolist()
    docs: list[str | list[int]]
    if len(order.token_id) <= _CHAR_IDS:
        # Token ids as characters, skipping the surrogates (as stages.rouge._encode), decoded
        # once per partition and sliced per text.
        code = np.where(gid < _SURROGATES, gid, gid + _SURROGATE_SPAN).astype("<u4")
        whole = code.tobytes().decode("utf-32-le")
        docs = [whole[a:b] for a, b in zip(off[:-1], off[1:], strict=True)]
    else:  # more distinct tokens than code points: rapidfuzz compares int lists by value
        flat = gid.tolist()
        docs = [flat[a:b] for a, b in zip(off[:-1], off[1:], strict=True)]
    return EncodedPartition(lengths.astype(np.int64), prefix, prefix_offsets, sig, saturated, docs)


def concat(parts: Sequence[EncodedPartition]) -> EncodedPartition:
    """Partitions side by side, in order (slots are positions in the result)."""
    prefix_offsets = [np.zeros(1, np.int64)]
    base = 0
    for p in parts:
        prefix_offsets.append(p.prefix_offsets[1:] + base)
        base += int(p.prefix_offsets[-1])
    return EncodedPartition(
        np.concatenate([np.zeros(0, np.int64)] + [p.lengths for p in parts]),
        np.concatenate([np.zeros(0, np.int32)] + [p.prefix for p in parts]),
        np.concatenate(prefix_offsets),
        np.concatenate([np.zeros((0, _BUCKETS), np.uint8)] + [p.sig for p in parts]),
        np.concatenate([np.zeros(0, bool)] + [p.saturated for p in parts]),
        [d for p in parts for d in p.docs],
    )


# -- phase 2: the index and candidate pairs ----------------------------------------------------
@dataclass
class _Tier:
    """Prefix entries sorted by ``key = element * stride + length``."""

    key: np.ndarray  # int64
    slot: np.ndarray  # int32
    length: np.ndarray  # int32: the text's token count
    room: np.ndarray  # int32: length - the entry's rank position in its text

    def __len__(self) -> int:
        return len(self.key)

    @classmethod
    def build(cls, key, slot, length, room) -> _Tier:
        o = np.argsort(key, kind="stable")
        i32 = np.int32
        key = key[o]
        if len(key) and key[-1] < _KEY32:  # a third less memory for the usual vocabularies
            key = key.astype(i32)
        return cls(key, slot[o].astype(i32), length[o].astype(i32), room[o].astype(i32))

    def needles(self, q: np.ndarray) -> np.ndarray:
        """Search keys in this tier's dtype (clipping keeps every comparison's outcome)."""
        return np.minimum(q, _KEY32).astype(self.key.dtype) if self.key.dtype == np.int32 else q

    @classmethod
    def merge(cls, a: _Tier, b: _Tier) -> _Tier:
        return cls.build(
            *(
                np.concatenate([getattr(a, f), getattr(b, f)])
                for f in ("key", "slot", "length", "room")
            )
        )


def _entries(
    enc: EncodedPartition, slots: np.ndarray, threshold: float, short: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(element, slot, position, length) of the short or long prefix entries at ``threshold``
    of ``slots`` (grouped by slot, in the order of ``slots``)."""
    slots = np.asarray(slots, dtype=np.int64)
    lens = enc.lengths[slots]
    start = enc.prefix_offsets[slots]
    size = np.minimum(
        enc.prefix_offsets[slots + 1] - start, prefix_sizes(lens, threshold)[0 if short else 1]
    )
    total = int(size.sum())
    rep = np.repeat(np.arange(len(slots)), size)
    pos = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(size) - size, size)
    elem = enc.prefix[start[rep] + pos].astype(np.int64)
    return elem, slots[rep], pos, lens[rep]


@dataclass
class PrefixIndex:
    """Prefix entries of a pool of texts, per level and in two tiers: short prefixes (met by
    partners at least as long) and long prefixes (met by shorter partners); each tier a list of
    sorted segments merged log-structured, so adding costs about the size of what is added."""

    threshold: float
    max_len: int
    levels: tuple[float, ...] = ()
    tiers: dict[tuple[int, bool], list[_Tier]] = field(default_factory=dict)
    size: int = 0

    def __post_init__(self) -> None:
        if not self.levels:
            self.levels = (float(self.threshold),)
        for k in range(len(self.levels)):
            for short in (True, False):
                self.tiers.setdefault((k, short), [])

    @property
    def stride(self) -> int:
        return self.max_len + 2

    def add(self, enc: EncodedPartition, slots: np.ndarray) -> None:
        """Put the texts ``slots`` of ``enc`` into the pool."""
        slots = np.asarray(slots, dtype=np.int64)
        if not len(slots):
            return
        self.size += len(slots)
        for (k, short), segs in self.tiers.items():
            elem, slot, pos, lens = _entries(enc, slots, self.levels[k], short)
            segs.append(_Tier.build(elem * self.stride + lens, slot, lens, lens - pos))
            while len(segs) > 1 and len(segs[-2]) <= 2 * len(segs[-1]):
                b, a = segs.pop(), segs.pop()
                segs.append(_Tier.merge(a, b))


def _join(
    tier: _Tier,
    probe: tuple[np.ndarray, ...],
    qlo: np.ndarray,
    qhi: np.ndarray,
    stride: int,
    t: float,
    two: tuple[np.ndarray, np.ndarray],
    below: bool,
) -> Iterable[np.ndarray]:
    """Distinct pair keys ``j << 32 | i`` of the pool entries of ``tier`` with a key in
    ``[qlo, qhi]`` of each probe entry, that pass the positional bound and, where both texts
    need two shared elements (``two``: per length, for the tier's pool role and the probe's),
    have two hits. ``below``: ``i < j`` only. ``qlo``, ``qhi`` sorted per probe text's run."""
    elem, slot, pos, m = probe
    if not len(elem) or not len(tier):
        return
    # Sorted needles let searchsorted resume where the last search ended (far fewer misses).
    o = np.argsort(qlo, kind="stable")
    start = np.empty(len(qlo), dtype=np.int64)
    start[o] = np.searchsorted(tier.key, tier.needles(qlo[o]), side="left")
    stop = np.empty(len(qhi), dtype=np.int64)
    stop[o] = np.searchsorted(tier.key, tier.needles(qhi[o]), side="right")
    hits = np.maximum(stop - start, 0)
    cum = np.cumsum(hits)
    # Chunks end where a probe text's entries end (they are contiguous), so all hits of a pair
    # fall in one chunk: one sort there dedupes and counts them.
    ends = np.flatnonzero(np.r_[slot[1:] != slot[:-1], True]) + 1
    cum_at_end = cum[ends - 1]
    two_pool, two_probe = two
    a, e = 0, 0
    while a < len(elem):
        before = int(cum[a - 1]) if a else 0
        e = max(int(np.searchsorted(cum_at_end, before + _CHUNK_HITS, side="right")), e + 1)
        b = int(ends[e - 1])
        h = hits[a:b]
        n_hits = int(cum[b - 1]) - before
        if n_hits:
            idx = np.repeat(start[a:b] - (np.cumsum(h) - h), h) + np.arange(n_hits)
            i_len = tier.length[idx]
            j_len = np.repeat(m[a:b], h)
            pair_two = two_pool[i_len] & np.repeat(two_probe[m[a:b]], h)
            # The first shared element leaves room for 1 + what follows it on both sides; the
            # second for 2 + what follows it.
            room = np.minimum(tier.room[idx], np.repeat(m[a:b] - pos[a:b], h)) + pair_two
            ok = 2 * room > t * (i_len + j_len)
            i_slot = tier.slot[idx].astype(np.int64)
            j_slot = np.repeat(slot[a:b], h)
            if below:
                ok &= i_slot < j_slot
            if ok.any():
                # The flag rides in the key's low bit (slots are below 2**31).
                keys = np.sort((j_slot[ok] << 32) | (i_slot[ok] << 1) | pair_two[ok])
                first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
                count = np.diff(np.r_[first, len(keys)])
                keys = keys[first]
                keys = keys[(count >= 2) | ((keys & 1) == 0)]
                yield ((keys >> 32) << 32) | ((keys & 0xFFFFFFFF) >> 1)
        a = b


def _room_cap(probe: tuple[np.ndarray, ...], t: float, max_len: int) -> np.ndarray:
    """Longest partner with which a probe entry can pass the positional bound: the room
    ``m - q + 1`` (the most a hit at position q can leave, first or second shared element)
    must exceed ``t'(n + m)/2``, so ``n < 2(m - q + 1)/t' - m``."""
    _, _, q, m = probe
    if t <= 0:
        return np.full(len(m), max_len, dtype=np.int64)
    return np.floor(2.0 * (m - q + 1) / t - m).astype(np.int64)


def _two_table(max_len: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per length: does a text need two shared elements as the shorter / longer of a pair
    (its gamma / alpha is at least 2)?"""
    gamma, alpha = required_overlap(np.arange(max_len + 2), threshold)
    return gamma >= 2, alpha >= 2


def candidate_pairs(
    enc: EncodedPartition,
    slots: np.ndarray,
    index: PrefixIndex,
    level: int = -1,
    below: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(i, j): every pool text ``i`` and probe text ``j`` (``slots``, ascending) that could have
    F > ``index.levels[level]``, each pair once, sorted by (j, i). ``below``: only ``i < j``
    (a block joined with itself)."""
    slots = np.asarray(slots, dtype=np.int64)
    thr = index.levels[level]
    level = level % len(index.levels)
    t = _lower(thr)
    out: list[np.ndarray] = []
    if index.size and len(slots) and thr < 1.0:
        stride, max_len = index.stride, index.max_len
        two_short, two_long = _two_table(max_len, thr)
        # A partner longer than the probe has its long prefix indexed and meets the probe's
        # short prefix; a partner at most as long has its short prefix indexed and meets the
        # probe's long one.
        short = _entries(enc, slots, thr, short=True)
        _, hi = length_window(short[3], thr, max_len)
        hi = np.minimum(hi, _room_cap(short, t, max_len))
        qlo, qhi = short[0] * stride + short[3] + 1, short[0] * stride + hi
        for tier in index.tiers[(level, False)]:
            out.extend(_join(tier, short, qlo, qhi, stride, t, (two_long, two_short), below))
        long = _entries(enc, slots, thr, short=False)
        lo, _ = length_window(long[3], thr, max_len)
        hi = np.minimum(long[3], _room_cap(long, t, max_len))
        qlo, qhi = long[0] * stride + lo, long[0] * stride + hi
        for tier in index.tiers[(level, True)]:
            out.extend(_join(tier, long, qlo, qhi, stride, t, (two_short, two_long), below))
    if not out:
        empty = np.zeros(0, np.int64)
        return empty, empty
    # For a given probe, a pool text sits in one segment of one tier, so the parts are disjoint.
    keys = np.sort(np.concatenate(out)) if len(out) > 1 else out[0]
    return keys & 0xFFFFFFFF, keys >> 32


# -- phase 3: scoring --------------------------------------------------------------------------
@dataclass
class Edges:
    """Pairs above the threshold: slots ``i < j`` and rouge_score's F, sorted by (j, i)."""

    i: np.ndarray
    j: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.i)

    @classmethod
    def empty(cls) -> Edges:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))

    @classmethod
    def cat(cls, parts: Sequence[Edges]) -> Edges:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        i = np.concatenate([p.i for p in parts])
        j = np.concatenate([p.j for p in parts])
        o = np.lexsort((i, j))
        return cls(i[o], j[o], np.concatenate([p.score for p in parts])[o])


_M8 = np.uint64(0x00FF00FF00FF00FF)
_M16 = np.uint64(0x0001000100010001)


def overlap_bound(enc: EncodedPartition, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Per pair, ``sum_b min(count_i(b), count_j(b))``, at least the multiset overlap (or a
    huge value when either side has a saturated bucket)."""
    out = np.empty(len(i), dtype=np.int64)
    for a in range(0, len(i), _BOUND_CHUNK):
        ii, jj = i[a : a + _BOUND_CHUNK], j[a : a + _BOUND_CHUNK]
        x = np.minimum(np.take(enc.sig, ii, axis=0), np.take(enc.sig, jj, axis=0))
        # Byte sums, 8 bytes per word: pairs of bytes into 16-bit lanes (<= 510), then the
        # four lanes summed into the top lane by one multiply (<= 2040, no carry out).
        w = x.view(np.uint64)
        w = (w & _M8) + ((w >> np.uint64(8)) & _M8)
        w = (w * _M16) >> np.uint64(48)
        out[a : a + _BOUND_CHUNK] = w.sum(axis=1)
    out[enc.saturated[i] | enc.saturated[j]] = np.iinfo(np.int64).max // 4
    return out


def score_pairs(enc: EncodedPartition, i: np.ndarray, j: np.ndarray, threshold: float) -> Edges:
    """Exact F of the candidate pairs (sorted by j) that pass the overlap bound: rapidfuzz's
    LCS and :func:`stages.rouge.fmeasure` with ``j`` as the target (as the streaming path); the
    pairs with F > threshold."""
    if not len(i):
        return Edges.empty()
    t = _lower(threshold)
    n, m = enc.lengths[i], enc.lengths[j]
    ok = np.flatnonzero(2 * overlap_bound(enc, i, j) > t * (n + m))
    i, j, n, m = i[ok], j[ok], n[ok], m[ok]
    if not len(i):
        return Edges.empty()
    docs = enc.docs
    lcs = np.empty(len(i), dtype=np.int64)
    bounds = np.flatnonzero(np.r_[True, j[1:] != j[:-1], True]).tolist()
    il, jl = i.tolist(), j.tolist()
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        lcs[a:b] = process.cdist(
            [docs[jl[a]]], [docs[p] for p in il[a:b]], scorer=LCSseq.similarity, dtype=np.int32
        )[0]
    near = np.flatnonzero(2 * lcs > t * (n + m))
    scores = np.array(
        [
            fmeasure(L, mm, nn)
            for L, mm, nn in zip(
                lcs[near].tolist(), m[near].tolist(), n[near].tolist(), strict=True
            )
        ],
        dtype=np.float64,
    )
    hit = scores > threshold
    sel = near[hit]
    return Edges(i[sel], j[sel], scores[hit])


# -- phase 4: resolution -----------------------------------------------------------------------
def resolve(edges: Edges, kept: bytearray, nearest: list[int], score: list[float]) -> None:
    """One pass over ``edges`` sorted by (j, i), in order after every earlier call's: ``j`` is
    dropped iff it has an edge from a kept ``i``; ``nearest[j]``, ``score[j]`` become the kept
    ``i`` with the highest F, the first on ties. ``kept`` starts all ones and ``score`` all
    zeros; when ``j``'s edges are read, every ``i < j`` is final."""
    for i, j, f in zip(edges.i.tolist(), edges.j.tolist(), edges.score.tolist(), strict=True):
        if kept[i] and f > score[j]:
            kept[j] = 0
            nearest[j] = i
            score[j] = f


# -- a block: against the pool, then against itself ----------------------------------------
def probe(
    enc: EncodedPartition,
    slots: np.ndarray,
    index: PrefixIndex,
    threshold: float,
    below: bool = False,
) -> tuple[Edges, int]:
    """Edges from the texts of ``index`` to the probe texts ``slots``, level by level: a probe
    with an edge above a level is settled there, the rest go on to the next level (the last is
    ``threshold``). ``below``: only ``i < j`` (a block against itself). (edges, pairs scored)."""
    remaining = np.asarray(slots, dtype=np.int64)
    found, scored = [], 0
    last = len(index.levels) - 1
    for k, level in enumerate(index.levels):
        if not len(remaining):
            break
        i, j = candidate_pairs(enc, remaining, index, level=k, below=below)
        scored += len(i)
        edges = score_pairs(enc, i, j, level)
        if k < last:
            # Every index text above this level was a candidate: a probe with such an edge has
            # its maximum (and its ties) among these edges.
            settled = _distinct(edges.j)
            remaining = remaining[~np.isin(remaining, settled)]
        found.append(edges)
    return Edges.cat(found), scored


# -- the whole computation, local ----------------------------------------------------------
@dataclass
class Decisions:
    """Per input text, in order: kept; for a dropped one its nearest slot (``-1`` when kept;
    slots below ``n_against`` are ``against`` texts, input k is slot ``n_against + k``) and F."""

    kept: list[bool]
    nearest: list[int]
    score: list[float]
    n_against: int
    pairs_scored: int = 0


def dedup_texts(
    texts: Sequence[str],
    against: Sequence[str] = (),
    threshold: float = 0.7,
    tokenizer: str = "default",
    workers: int = 1,
    block: int = 2048,
    partition: int = 65536,
    level_count: int = 3,
) -> Decisions:
    """Greedy exact dedup of ``texts`` after the ``against`` texts (never dropped).

    ``workers``: threads (0 = all cores) over slices of each block (numpy and rapidfuzz release
    the GIL in their loops). ``block``, ``partition``, ``level_count``: speed only."""
    all_texts = [*against, *texts]
    na, total = len(against), len(all_texts)
    workers = workers or os.cpu_count() or 1
    chunks = [all_texts[a : a + partition] for a in range(0, total, partition)]
    del all_texts
    with ThreadPoolExecutor(workers) as pool_ex:
        run = pool_ex.map if workers > 1 else map
        parts = list(run(tokenize_partition, chunks, itertools.repeat(tokenizer)))
        del chunks
        counts: Counter = Counter()
        for c in run(element_counts, parts):
            counts.update(c)
        order = TokenOrder.from_counts(counts)
        enc = concat(
            list(run(encode_partition, parts, itertools.repeat(order), itertools.repeat(threshold)))
        )
        del parts, counts
        max_len = int(enc.lengths.max(initial=0))
        index = PrefixIndex(threshold, max_len, levels(threshold, level_count))
        index.add(enc, np.arange(na))
        kept = bytearray(b"\x01") * total
        nearest = [-1] * total
        score = [0.0] * total
        scored = 0
        for a in range(na, total, block):
            b = min(a + block, total)
            slots = np.arange(a, b, dtype=np.int64)
            pieces = np.array_split(slots, min(workers, len(slots)))
            rep = itertools.repeat
            got = list(run(probe, rep(enc), pieces, rep(index), rep(threshold)))
            # Texts the pool drops can never be kept, so they are no one's nearest.
            own = PrefixIndex(threshold, max_len)
            own.add(enc, np.setdiff1d(slots, np.concatenate([e.j for e, _ in got])))
            got += list(run(probe, rep(enc), pieces, rep(own), rep(threshold), rep(True)))
            scored += sum(n for _, n in got)
            resolve(Edges.cat([e for e, _ in got]), kept, nearest, score)
            keep = np.flatnonzero(np.frombuffer(kept, dtype=np.uint8, count=b - a, offset=a)) + a
            index.add(enc, keep)
            for s in range(a, b):  # a dropped text is never a partner again
                if not kept[s]:
                    enc.docs[s] = ""
    return Decisions([bool(k) for k in kept[na:]], nearest[na:], score[na:], na, scored)
