"""Semantic dedup (stage ``semdedup``, optional; exact ROUGE-L dedup stays the default): a
record is rejected when the cosine similarity of its embedding to an earlier kept record's, or
an ``against`` record's, is above ``threshold``.

Embeddings come in as an ``embed`` callable (texts -> vectors), which the orchestrator backs
with the OpenAI-compatible ``/v1/embeddings`` route (llama.cpp's server started with embeddings
on, vLLM, OpenAI) and the response cache; this module opens nothing. Vectors are normalised
once, so a comparison is a dot product; the pool is a plain list (a run's records number in the
thousands; an ANN index is the next step past that).

Reads ``cfg.field`` (default ``instruction``) and ``id``. Reject reasons:
``semantic_duplicate`` (detail ``nearest_id``, ``score``: the cosine, rounded to 4 places),
``embedding_failed`` (no vector: the request failed after its retries, or the text is empty).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from stages.base import StageStats, help_field

Embed = Callable[[list[str]], list[list[float] | None]]


@dataclass
class SemDedupConfig:
    enabled: bool = help_field(
        "after ROUGE-L dedup, also drop records whose embedding is too close to a kept one", False
    )
    threshold: float = help_field("semantic_duplicate: cosine similarity above this", 0.95)
    field: str = help_field("record field embedded", "instruction")
    model: str | None = help_field(
        "embedding model name sent to /v1/embeddings; unset = the generation model", None
    )
    batch: int = help_field("texts per embeddings request", 32)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"semdedup.threshold={self.threshold!r}: must be in (0, 1]")
        if self.batch < 1:
            raise ValueError(f"semdedup.batch={self.batch!r}: must be at least 1")


def normalise(vec: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in vec))
    return [x / n for x in vec] if n else list(vec)


def nearest(vec: list[float], pool: list[tuple[str, list[float]]]) -> tuple[str | None, float]:
    best_id, best = None, -1.0
    for rid, other in pool:
        s = sum(a * b for a, b in zip(vec, other, strict=True))
        if s > best:
            best_id, best = rid, s
    return best_id, best


def check(
    vec: list[float], pool: list[tuple[str, list[float]]], cfg: SemDedupConfig
) -> tuple[str | None, dict]:
    rid, score = nearest(vec, pool)
    if rid is not None and score > cfg.threshold:
        return "semantic_duplicate", {"nearest_id": rid, "score": round(score, 4)}
    return None, {}


class SemanticDeduper:
    """The kept pool (ids and unit vectors) of one run."""

    def __init__(self, cfg: SemDedupConfig, embed: Embed, against: Iterable[dict] = ()):
        self.cfg, self.embed = cfg, embed
        against = [r for r in against if isinstance(r.get(cfg.field), str)]
        self.pool: list[tuple[str, list[float]]] = []
        for recs in _batches(against, cfg.batch):
            for r, v in zip(recs, self.embed([r[cfg.field] for r in recs]), strict=True):
                if v is not None:
                    self.pool.append((r["id"], normalise(v)))

    def run(self, records: Iterable[dict], stats: StageStats) -> Iterator[dict]:
        for recs in _batches(stats.admit(records), self.cfg.batch):
            vecs = self.embed([str(r.get(self.cfg.field, "")) for r in recs])
            for r, v in zip(recs, vecs, strict=True):
                if v is None:
                    stats.drop(r, "embedding_failed")
                    continue
                v = normalise(v)
                reason, detail = check(v, self.pool, self.cfg)
                if reason:
                    stats.drop(r, reason, **detail)
                else:
                    self.pool.append((r["id"], v))
                    yield stats.keep(r)


def _batches(items: Iterable[dict], n: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for it in items:
        batch.append(it)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
