"""Exact ROUGE-L dedup on a Ray cluster: the phases of :mod:`stages.dedup_pairs`, as tasks and
actors, with the greedy order resolved on the driver. Same decisions as
:class:`stages.dedup.Deduper` (and rouge_score): the phases are the module's own functions, and
this file only says where each one runs.

1. Tokenize and count (one task per partition of ``engine.dedup_partition`` texts, sent as the
   input is read, at most ``dedup_tasks + 1`` running); one task adds the counts and fixes the
   global token order (:meth:`TokenOrder.from_counts`).
2. Encode (one task per partition, the order broadcast); one task concatenates the partitions.
   The counts, the order and the encoded corpus go from task to task in the object store and
   never to the driver.
3. Join actors (``engine.dedup_tasks``, default one per cluster CPU) each hold a replica of the
   prefix index of the kept texts. Per block of ``engine.dedup_block`` texts every actor probes
   its interleaved share of the block against the pool and scores its candidate pairs
   (:func:`probe`: candidate pairs and their exact scores, level by level); then, once the
   driver has said which block texts the pool already dropped, against the block's own live
   texts (``below=True``). Replicas rather than a broadcast per block: the index only grows, so
   each actor adds just the previous block's kept texts instead of receiving the whole index
   every block.
4. The driver runs :func:`resolve` over the block's edges in ``(j, i)`` order, then tells the
   actors which of the block's texts were kept.
5. The write-back reads the input a second time, in order, and writes each record kept or
   rejected with its nearest id and score.

Driver memory: 13 bytes per text (kept: a byte; nearest: an int32; score: a float64), 1 more
while the write-back is prepared, and, for each record that is some duplicate's nearest (at
most the kept ones), 16 bytes and its id's JSON; besides that one block's edges, a few
partitions of texts on their way to the tokenize tasks, and the ``against`` ids. No record and
no vocabulary is held: the input is read twice (a list, or :class:`pipeline.records.RecordFile`
as ``pipeline dedup`` passes it); a one-shot iterator is read into a list first, and then the
driver holds it. Measured (BENCHMARKS.md, 1M records): the driver's heap grows ~27 bytes per
record; the object-store pages it writes are shared memory, capped by its node's store.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from stages import dedup_pairs as dp
from stages.base import StageStats
from stages.dedup import REASON_DUPLICATE, REASON_MISSING, field_text


def _tokenize(texts: list[str], tokenizer: str) -> tuple[dp.TokenizedPartition, Counter]:
    part = dp.tokenize_partition(texts, tokenizer)
    return part, dp.element_counts(part)


def _order(*counts: Counter) -> dp.TokenOrder:
    total: Counter = Counter()
    for c in counts:
        total.update(c)
    return dp.TokenOrder.from_counts(total)


def _encode(part: dp.TokenizedPartition, order: dp.TokenOrder, threshold: float):
    return dp.encode_partition(part, order, threshold)


def _concat(*parts: dp.EncodedPartition) -> tuple[dp.EncodedPartition, int]:
    enc = dp.concat(parts)
    return enc, int(enc.lengths.max(initial=0))


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


@dataclass
class Slots:
    """Decisions per slot (``against`` texts first, then the input texts in order): ``kept``
    one byte each, and for a dropped text its ``nearest`` slot (``-1`` when kept) and F."""

    kept: bytearray
    nearest: np.ndarray  # int32
    score: np.ndarray  # float64, rouge_score's F exactly as resolve() compared it
    n_against: int
    pairs_scored: int = 0

    def __len__(self) -> int:
        return len(self.kept)


def _tokenize_stream(ray, texts: Iterable[str], partition: int, tokenizer: str, window: int):
    """Phase 1 as the texts arrive: one tokenize task per ``partition`` texts, at most
    ``window`` of them running, so the driver holds a few partitions of texts, never the
    corpus. (partition refs, count refs, number of texts)."""
    tok = ray.remote(_tokenize).options(num_returns=2)
    parts: list = []
    counts: list = []
    running: list = []
    total = 0
    it = iter(texts)
    for batch in iter(lambda: list(itertools.islice(it, partition)), []):
        if len(running) >= window:
            _, running = ray.wait(running, num_returns=1, fetch_local=False)
        p, c = tok.remote(batch, tokenizer)
        parts.append(p)
        counts.append(c)
        running.append(c)
        total += len(batch)
    return parts, counts, total


def dedup_texts(engine, texts: Iterable[str], n_against: int, cfg) -> Slots:
    """:func:`stages.dedup_pairs.dedup_texts`, the work spread over the cluster: ``texts`` are
    the ``against`` texts (the first ``n_against``), then the input texts, read once, as they
    come. The counts, the token order and the encoded corpus stay in the object store."""
    import ray

    ec = engine.cfg
    na = n_against
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    n = max(1, ec.dedup_tasks or cpus)
    parts, counts, total = _tokenize_stream(ray, texts, ec.dedup_partition, cfg.tokenizer, n + 1)
    order = ray.remote(_order).remote(*counts)
    del counts
    enc_task = ray.remote(_encode)
    encoded = [enc_task.remote(p, order, cfg.threshold) for p in parts]
    del parts, order
    enc_ref, len_ref = ray.remote(_concat).options(num_returns=2).remote(*encoded)
    del encoded
    max_len = ray.get(len_ref)
    Joiner = ray.remote(_Joiner).options(num_cpus=1, scheduling_strategy="SPREAD")
    actors = [Joiner.remote(enc_ref, cfg.threshold, max_len, na) for _ in range(n)]
    del enc_ref
    out = Slots(
        bytearray(b"\x01") * total, np.full(total, -1, np.int32), np.zeros(total, np.float64), na
    )
    try:
        for a in range(na, total, ec.dedup_block):
            b = min(a + ec.dedup_block, total)
            slots = np.arange(a, b)
            shares = [slots[k::n] for k in range(n)]
            got = ray.get([act.pool.remote(s) for act, s in zip(actors, shares, strict=True)])
            pool_edges = dp.Edges.cat([e for e, _ in got])
            out.pairs_scored += sum(c for _, c in got)
            # Texts the pool drops can never be kept, so they are no one's nearest.
            live = ray.put(np.setdiff1d(slots, pool_edges.j))
            got = ray.get([act.own.remote(live, s) for act, s in zip(actors, shares, strict=True)])
            own_edges = dp.Edges.cat([e for e, _ in got])
            out.pairs_scored += sum(c for _, c in got)
            dp.resolve(dp.Edges.cat([pool_edges, own_edges]), out.kept, out.nearest, out.score)
            block = np.frombuffer(out.kept, dtype=np.uint8, count=b - a, offset=a)
            keep, drop = np.flatnonzero(block) + a, np.flatnonzero(block == 0) + a
            del block  # a view would pin the bytearray
            ray.get([act.settle.remote(keep, drop) for act in actors])
    finally:
        for act in actors:
            ray.kill(act)
    return out


class _Ids:
    """The ids of the slots that are some dropped text's nearest (``wanted``, ascending), taken
    as the write-back passes them; a nearest always comes before the texts it drops, so it is
    here when they are written. A str or int id is kept as its JSON (which gives it back equal
    and of the same type) in one buffer; any other, as the object."""

    def __init__(self, wanted: np.ndarray):
        self.wanted = wanted
        self.offsets = np.zeros(len(wanted) + 1, np.int64)
        self.buf = bytearray()
        self.other: dict[int, Any] = {}
        self.filled = 0

    def offer(self, slot: int, rid: Any) -> None:
        k = self.filled
        if k == len(self.wanted) or self.wanted[k] != slot:
            return
        if type(rid) is str or type(rid) is int:
            self.buf += json.dumps(rid).encode()
        else:
            self.other[k] = rid
        self.filled = k + 1
        self.offsets[k + 1] = len(self.buf)

    def __getitem__(self, slot: int) -> Any:
        k = int(np.searchsorted(self.wanted, slot))
        if k in self.other:
            return self.other[k]
        return json.loads(self.buf[self.offsets[k] : self.offsets[k + 1]])


def run(
    engine, records: Iterable[dict], cfg, stats: StageStats, against: Iterable[dict] = ()
) -> Iterator[dict]:
    """The dedup stage (as :func:`stages.dedup.run`, ``method="exact"``) on the cluster.

    ``records`` is read twice: once for the texts, once for the write-back in input order, so
    it must give the same records on every ``iter()`` (a list, a
    :class:`pipeline.records.RecordFile`). An iterator (a generator) can be read only once, so
    it is first read into a list, which the driver then holds."""
    if isinstance(records, Iterator):
        records = list(records)
    a_ids: list[Any] = []
    a_texts: list[str] = []
    for i, r in enumerate(against):
        if (t := field_text(r, cfg.field)) is not None:
            a_texts.append(t)
            a_ids.append(r.get("id", f"against:{i}"))
    na = len(a_texts)
    texts = (t for r in records if (t := field_text(r, cfg.field)) is not None)
    d = dedup_texts(engine, itertools.chain(a_texts, texts), na, cfg)
    del a_texts
    # Which input slots are someone's nearest: only their ids are kept for the write-back.
    nearest = d.nearest[d.nearest >= na]
    wanted = np.zeros(len(d), dtype=bool)
    wanted[nearest] = True
    del nearest
    ids = _Ids(np.flatnonzero(wanted))
    del wanted
    slot = na
    for k, rec in enumerate(stats.admit(records)):
        if field_text(rec, cfg.field) is None:
            stats.drop(rec, REASON_MISSING, field=cfg.field)
            continue
        if slot == len(d):
            raise RuntimeError(f"dedup: the input gave more texts on its second pass ({records!r})")
        ids.offer(slot, rec.get("id", k))
        if d.kept[slot]:
            yield stats.keep(rec)
        else:
            q = int(d.nearest[slot])
            nid = a_ids[q] if q < na else ids[q]
            detail: dict[str, Any] = {"nearest_id": nid, "score": float(d.score[slot])}
            if q < na:
                detail["nearest_against"] = True
            stats.drop(rec, REASON_DUPLICATE, **detail)
        slot += 1
    if slot != len(d):
        raise RuntimeError(f"dedup: the input gave fewer texts on its second pass ({records!r})")
    stats.extra["pairs_scored"] += d.pairs_scored
