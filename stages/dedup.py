"""Dedup stage: greedy ROUGE-L near-duplicate removal, exactly as Alpaca decides it, fast.

In input order, a record is rejected iff its ROUGE-L F-measure (rouge_score's
``RougeScorer(["rougeL"], use_stemmer=False)``, its tokenizer and its float arithmetic) against
any earlier *kept* record, or any ``against`` record, is greater than ``threshold``. The exact
method gives rouge_score's decisions, ties at the threshold included, through the shortcuts in
:mod:`stages.rouge`; ``method="minhash"`` trades exactness for scale (MinHash LSH, optionally
with the exact F on its candidates).

Reads: ``cfg.field`` (default ``instruction``) and ``id``. Writes nothing into kept records.
Reject reasons:

* ``rouge_duplicate``: detail ``nearest_id`` (the kept or ``against`` record with the highest
  score; the first one on ties), ``score`` (its F, or with unverified MinHash its estimated
  Jaccard), and ``nearest_against: true`` when that record came from ``against``.
* ``missing_field``: the compared field is absent or not a string, so the record cannot be
  compared; detail ``field``. Such records are never added to the pool.

A text with no tokens (e.g. only punctuation, or only non-ASCII words under the default
tokenizer) has F = 0 against everything, as in rouge_score, so it is always kept.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from stages.base import StageStats
from stages.rouge import TOKENIZERS, ExactIndex, MinHashIndex

REASON_DUPLICATE = "rouge_duplicate"
REASON_MISSING = "missing_field"
METHODS = ("exact", "minhash")
ALGORITHMS = ("stream", "pairs")


@dataclass
class DedupConfig:
    threshold: float = dataclasses.field(
        default=0.7,
        metadata={
            "help": "reject a record whose ROUGE-L F against any earlier kept or --against "
            "record is greater than this"
        },
    )
    field: str = dataclasses.field(
        default="instruction",
        metadata={
            "help": "record field compared; fields joined by + (instruction+output) are "
            "compared as one text"
        },
    )
    method: str = dataclasses.field(
        default="exact",
        metadata={
            "help": "exact (rouge_score's decisions, fast) | minhash (MinHash LSH, for millions "
            "of records; approximate)"
        },
    )
    tokenizer: str = dataclasses.field(
        default="default",
        metadata={
            "help": "default (rouge_score's: ASCII words only, non-ASCII words vanish) | unicode "
            "(every script; Han, kana, Thai... one token per character)"
        },
    )
    workers: int = dataclasses.field(
        default=0, metadata={"help": "threads for the LCS of large candidate sets; 0 = all cores"}
    )
    prime_size: int = dataclasses.field(
        default=4096,
        metadata={
            "help": "records read ahead to order tokens rare-first (speed only; decisions are "
            "the same for any value); 0 = no read-ahead"
        },
    )
    num_perm: int = dataclasses.field(
        default=128, metadata={"help": "minhash: permutations per signature"}
    )
    lsh_threshold: float = dataclasses.field(
        default=0.5,
        metadata={
            "help": "minhash: Jaccard threshold of the LSH over token occurrences; ROUGE-L F > t "
            "implies Jaccard > t/(2-t) (0.54 at t=0.7), so stay a little below that"
        },
    )
    verify_minhash: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "minhash: score LSH candidates with the exact ROUGE-L F (pool keeps token "
            "ids); false = a candidate with estimated Jaccard >= lsh_threshold is a duplicate"
        },
    )
    minhash_seed: int = dataclasses.field(default=1, metadata={"help": "minhash: permutation seed"})
    algorithm: str = dataclasses.field(
        default="stream",
        metadata={
            "help": "exact: stream (each record against the kept pool as it arrives; what "
            "generation uses) | pairs (a batch over the whole input: candidate pairs by a "
            "prefix-filter join, scored, resolved in input order; same decisions, for large "
            "files and clusters)"
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise ValueError(f"dedup.threshold={self.threshold!r}: must be a number in [0, 1]")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(
                f"dedup.threshold={self.threshold!r}: must be between 0 and 1 (Alpaca uses 0.7)"
            )
        if not isinstance(self.field, str) or not self.field:
            raise ValueError(f"dedup.field={self.field!r}: name a record field, e.g. 'instruction'")
        if self.method not in METHODS:
            raise ValueError(f"dedup.method={self.method!r}: use one of {', '.join(METHODS)}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(
                f"dedup.tokenizer={self.tokenizer!r}: use one of {', '.join(TOKENIZERS)}"
            )
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"dedup.workers={self.workers!r}: use 0 (all cores) or a count")
        if not isinstance(self.prime_size, int) or self.prime_size < 0:
            raise ValueError(f"dedup.prime_size={self.prime_size!r}: use 0 or a record count")
        if not isinstance(self.num_perm, int) or self.num_perm < 2:
            raise ValueError(f"dedup.num_perm={self.num_perm!r}: use an integer >= 2, e.g. 128")
        if not 0.0 < self.lsh_threshold < 1.0:
            raise ValueError(
                f"dedup.lsh_threshold={self.lsh_threshold!r}: must be strictly between 0 and 1"
            )
        if self.algorithm not in ALGORITHMS:
            raise ValueError(
                f"dedup.algorithm={self.algorithm!r}: use one of {', '.join(ALGORITHMS)}"
            )
        if self.algorithm == "pairs" and self.method != "exact":
            raise ValueError(
                f"dedup.algorithm='pairs' needs dedup.method='exact' (got {self.method!r}); "
                "use algorithm=stream for minhash"
            )


def field_text(record: dict, name: str) -> str | None:
    """The text ``dedup.field`` names in ``record``: one field's string, or for names joined by
    ``+`` (``instruction+output``) their strings joined by a newline; None when one is missing
    or not a string."""
    values = [record.get(n) for n in name.split("+")]
    if not all(isinstance(v, str) for v in values):
        return None
    return "\n".join(values)


_text = field_text


class Deduper:
    """The dedup pool as a streaming object: :meth:`check` one record at a time (the pipeline
    calls it as each LLM answer arrives); a kept record joins the pool.

    ``against``: records every input is compared with (earlier runs, a benchmark); they are
    never rejected and their ids are reported as ``nearest_id`` with ``nearest_against``.
    ``sample``: texts (of the records about to come) used only to order tokens rare-first,
    which makes the exact method faster; decisions never depend on it.
    """

    def __init__(self, cfg: DedupConfig, against: Iterable[dict] = (), sample: Iterable[str] = ()):
        self.cfg = cfg
        against = list(against)
        if cfg.method == "exact":
            self.index: ExactIndex | MinHashIndex = ExactIndex(
                cfg.threshold, cfg.tokenizer, cfg.workers
            )
            sample_texts = [t for r in against if (t := _text(r, cfg.field)) is not None]
            sample_texts.extend(sample)
            if sample_texts:
                self.index.prime(sample_texts)
        else:
            self.index = MinHashIndex(
                cfg.threshold,
                cfg.tokenizer,
                num_perm=cfg.num_perm,
                lsh_threshold=cfg.lsh_threshold,
                verify=cfg.verify_minhash,
                seed=cfg.minhash_seed,
            )
        self._seen = 0
        for i, r in enumerate(against):
            text = _text(r, cfg.field)
            if text is not None:
                self.index.add((r.get("id", f"against:{i}"), True), self.index.prepare(text))

    @property
    def pairs_scored(self) -> int:
        """Pairs whose LCS (or MinHash candidate) was actually computed."""
        return self.index.pairs_scored

    def check(self, record: dict) -> tuple[str | None, dict[str, Any]]:
        """(None, detail) and add the record to the pool if kept; (reason, detail) if not.

        For a duplicate, detail is ``{nearest_id, score}`` (+ ``nearest_against``). For a kept
        record it is ``{nearest_id: None, score: None}``: only pairs that could exceed the
        threshold are scored, so no honest "nearest" exists for it.
        """
        self._seen += 1
        text = _text(record, self.cfg.field)
        if text is None:
            return REASON_MISSING, {"field": self.cfg.field}
        prepared = self.index.prepare(text)
        key, score = self.index.best(prepared)
        if key is not None and score > self.cfg.threshold:
            nearest_id, is_against = key
            detail: dict[str, Any] = {"nearest_id": nearest_id, "score": score}
            if is_against:
                detail["nearest_against"] = True
            return REASON_DUPLICATE, detail
        self.index.add((record.get("id", self._seen - 1), False), prepared)
        return None, {"nearest_id": None, "score": None}

    def run(self, records: Iterable[dict], stats: StageStats) -> Iterator[dict]:
        """The stage over ``records`` against this pool (which outlives the call: a run that
        dedups round after round keeps one Deduper)."""
        scored_before = self.pairs_scored
        for rec in stats.admit(records):
            reason, detail = self.check(rec)
            if reason is not None:
                stats.drop(rec, reason, **detail)
            else:
                yield stats.keep(rec)
        stats.extra["pairs_scored"] += self.pairs_scored - scored_before


def prime_sample(records: Iterable[dict], cfg: DedupConfig) -> list[str]:
    """Texts of the first ``cfg.prime_size`` records, to order tokens rare-first (exact only)."""
    if cfg.method != "exact":
        return []
    head = itertools.islice(records, cfg.prime_size)
    return [t for r in head if (t := _text(r, cfg.field)) is not None]


def run_pairs(
    records: Iterable[dict], cfg: DedupConfig, stats: StageStats, against: Iterable[dict] = ()
) -> Iterator[dict]:
    """The same decisions and reject details as :class:`Deduper`, computed as a batch by
    :mod:`stages.dedup_pairs` (reads all records first, then yields in input order)."""
    from stages.dedup_pairs import dedup_texts

    keys, pool_texts = [], []
    for i, r in enumerate(against):
        if (text := _text(r, cfg.field)) is not None:
            keys.append((r.get("id", f"against:{i}"), True))
            pool_texts.append(text)
    n_against = len(keys)
    recs = list(stats.admit(records))
    texts = []
    for k, rec in enumerate(recs):
        if (text := _text(rec, cfg.field)) is not None:
            keys.append((rec.get("id", k), False))
            texts.append(text)
    found = dedup_texts(texts, pool_texts, cfg.threshold, cfg.tokenizer, cfg.workers)
    stats.extra["pairs_scored"] += found.pairs_scored
    slot = n_against
    for rec in recs:
        if _text(rec, cfg.field) is None:
            stats.drop(rec, REASON_MISSING, field=cfg.field)
            continue
        x = slot - n_against
        slot += 1
        if found.kept[x]:
            yield stats.keep(rec)
            continue
        nearest_id, is_against = keys[found.nearest[x]]
        detail: dict[str, Any] = {"nearest_id": nearest_id, "score": found.score[x]}
        if is_against:
            detail["nearest_against"] = True
        stats.drop(rec, REASON_DUPLICATE, **detail)


def run(
    records: Iterable[dict], cfg: DedupConfig, stats: StageStats, against: Iterable[dict] = ()
) -> Iterator[dict]:
    """Yield kept records in input order; drop duplicates via ``stats.drop``.

    Reads ahead at most ``cfg.prime_size`` records (to order tokens rare-first), then streams;
    with ``cfg.algorithm == "pairs"``, reads everything first (:func:`run_pairs`).
    """
    if cfg.algorithm == "pairs":
        yield from run_pairs(records, cfg, stats, against)
        return
    it = iter(records)
    head = list(itertools.islice(it, cfg.prime_size)) if cfg.method == "exact" else []
    deduper = Deduper(cfg, against, sample=prime_sample(head, cfg))
    yield from deduper.run(itertools.chain(head, it), stats)
