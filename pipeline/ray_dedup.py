"""Exact ROUGE-L dedup on a Ray cluster: the phases of :mod:`stages.dedup_pairs`, as tasks and
actors, with the greedy order resolved on the driver. Same decisions as
:class:`stages.dedup.Deduper` (and rouge_score): the phases are the module's own functions, and
this file only says where each one runs.

1. Tokenize and count (one task per partition of ``engine.dedup_partition`` texts); the driver
   adds the counts and fixes the global token order (:meth:`TokenOrder.from_counts`).
2. Encode (one task per partition, the order broadcast); the driver concatenates the partitions
   once and puts them in the object store.
3. Join actors (``engine.dedup_tasks``, default one per cluster CPU) each hold a replica of the
   prefix index of the kept texts. Per block of ``engine.dedup_block`` texts every actor probes
   its interleaved share of the block against the pool and scores its candidate pairs
   (:func:`probe`: candidate pairs and their exact scores, level by level); then, once the driver has said which block
   texts the pool already dropped, against the block's own live texts (``below=True``).
   Replicas rather than a broadcast per block: the index only grows, so each actor adds just
   the previous block's kept texts instead of receiving the whole index every block.
4. The driver runs :func:`resolve` over the block's edges in ``(j, i)`` order, then tells the
   actors which of the block's texts were kept.

Driver memory: the records (needed to write them back in order), one byte, one int and one float
per text, and one block's edges; the encoded corpus lives in the object store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from stages import dedup_pairs as dp
from stages.base import StageStats
from stages.dedup import REASON_DUPLICATE, REASON_MISSING


def _tokenize(texts: list[str], tokenizer: str) -> tuple[dp.TokenizedPartition, Counter]:
    part = dp.tokenize_partition(texts, tokenizer)
    return part, dp.element_counts(part)


def _encode(part: dp.TokenizedPartition, order: dp.TokenOrder, threshold: float):
    return dp.encode_partition(part, order, threshold)


class _Joiner:
    """A replica of the pool's prefix index over the encoded corpus."""

    def __init__(self, enc: dp.EncodedPartition, threshold: float, max_len: int, na: int):
        self.enc, self.t, self.max_len = enc, threshold, max_len
        self.index = dp.PrefixIndex(threshold, max_len, dp.levels(threshold))
        self.index.add(enc, np.arange(na))
        # A copy the actor may edit: dropped texts' strings are released as they are decided.
        self.enc.docs = list(enc.docs)

    def settle(self, kept: np.ndarray, dropped: np.ndarray) -> None:
        self.index.add(self.enc, kept)
        for s in dropped.tolist():
            self.enc.docs[s] = ""

    def pool(self, slots: np.ndarray) -> tuple[dp.Edges, int]:
        return dp.probe(self.enc, slots, self.index, self.t)

    def own(self, alive: np.ndarray, slots: np.ndarray) -> tuple[dp.Edges, int]:
        own = dp.PrefixIndex(self.t, self.max_len)
        own.add(self.enc, alive)
        return dp.probe(self.enc, slots, own, self.t, True)


def dedup_texts(engine, texts: list[str], against: list[str], cfg) -> dp.Decisions:
    """:func:`stages.dedup_pairs.dedup_texts`, the work spread over the cluster."""
    import ray

    ec = engine.cfg
    all_texts = [*against, *texts]
    na, total = len(against), len(against) + len(texts)
    tok = ray.remote(_tokenize).options(num_returns=2)
    enc_task = ray.remote(_encode)
    bounds = list(range(0, total, ec.dedup_partition)) + [total]
    parts, counts_refs = [], []
    for a, b in zip(bounds, bounds[1:], strict=False):
        p, c = tok.remote(all_texts[a:b], cfg.tokenizer)
        parts.append(p)
        counts_refs.append(c)
    counts: Counter = Counter()
    for c in ray.get(counts_refs):
        counts.update(c)
    order = ray.put(dp.TokenOrder.from_counts(counts))
    del counts, all_texts
    encoded = ray.get([enc_task.remote(p, order, cfg.threshold) for p in parts])
    del parts
    enc = dp.concat(encoded)
    del encoded
    max_len = int(enc.lengths.max(initial=0))
    enc_ref = ray.put(enc)
    del enc
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    n = max(1, ec.dedup_tasks or cpus)
    Joiner = ray.remote(_Joiner).options(num_cpus=1, scheduling_strategy="SPREAD")
    actors = [Joiner.remote(enc_ref, cfg.threshold, max_len, na) for _ in range(n)]
    kept = bytearray(b"\x01") * total
    nearest = [-1] * total
    score = [0.0] * total
    pairs = 0
    try:
        for a in range(na, total, ec.dedup_block):
            b = min(a + ec.dedup_block, total)
            slots = np.arange(a, b)
            shares = [slots[k::n] for k in range(n)]
            got = ray.get([act.pool.remote(s) for act, s in zip(actors, shares, strict=True)])
            pool_edges = dp.Edges.cat([e for e, _ in got])
            pairs += sum(c for _, c in got)
            # Texts the pool drops can never be kept, so they are no one's nearest.
            live = ray.put(np.setdiff1d(slots, pool_edges.j))
            got = ray.get([act.own.remote(live, s) for act, s in zip(actors, shares, strict=True)])
            own_edges = dp.Edges.cat([e for e, _ in got])
            pairs += sum(c for _, c in got)
            dp.resolve(dp.Edges.cat([pool_edges, own_edges]), kept, nearest, score)
            keep = np.array([s for s in range(a, b) if kept[s]], dtype=np.int64)
            drop = np.array([s for s in range(a, b) if not kept[s]], dtype=np.int64)
            ray.get([act.settle.remote(keep, drop) for act in actors])
    finally:
        for act in actors:
            ray.kill(act)
    return dp.Decisions([bool(k) for k in kept[na:]], nearest[na:], score[na:], na, pairs)


def _text(record: dict, name: str) -> str | None:
    value = record.get(name)
    return value if isinstance(value, str) else None


def run(
    engine, records: Iterable[dict], cfg, stats: StageStats, against: Iterable[dict] = ()
) -> Iterator[dict]:
    """The dedup stage (as :func:`stages.dedup.run`, ``method="exact"``) on the cluster."""
    records = list(records)
    pool: list[tuple[Any, bool]] = []  # slot -> (id, is_against)
    a_texts: list[str] = []
    for i, r in enumerate(against):
        if (t := _text(r, cfg.field)) is not None:
            a_texts.append(t)
            pool.append((r.get("id", f"against:{i}"), True))
    texts: list[str] = []
    where: list[int] = []  # record index -> input text index, -1 when the field is missing
    for k, r in enumerate(records):
        t = _text(r, cfg.field)
        where.append(len(texts) if t is not None else -1)
        if t is not None:
            texts.append(t)
            pool.append((r.get("id", k), False))
    d = dedup_texts(engine, texts, a_texts, cfg)
    for k, rec in enumerate(stats.admit(records)):
        q = where[k]
        if q < 0:
            stats.drop(rec, REASON_MISSING, field=cfg.field)
        elif d.kept[q]:
            yield stats.keep(rec)
        else:
            nid, is_against = pool[d.nearest[q]]
            detail: dict[str, Any] = {"nearest_id": nid, "score": d.score[q]}
            if is_against:
                detail["nearest_against"] = True
            stats.drop(rec, REASON_DUPLICATE, **detail)
    stats.extra["pairs_scored"] += d.pairs_scored
