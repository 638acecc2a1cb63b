"""The stage contract, and the small types every stage shares.

A stage is an operator over records: records in, kept records out, every other record reported
as rejected with a short snake_case reason. All of that goes through one :class:`StageStats`
value, so that no call site bumps a counter by hand and the books balance by construction:

- :meth:`StageStats.admit` wraps a stage's input and counts (and fingerprints) what enters;
- :meth:`StageStats.keep` counts a kept record and hands it to the ``kept_sink``;
- :meth:`StageStats.drop` counts a rejected record and hands it, with
  ``reject: {stage, reason, ...}``, to the ``sink``.

:meth:`StageStats.balance_error` then says whether ``entered == kept + rejected`` and whether the
ids that entered are exactly the ids that left (an order-independent fingerprint: a sum of id
hashes, so the check needs constant memory at any scale).

Stages open no files, read no environment and import nothing from ``pipeline/``: the
orchestrator attaches the sinks (files), and hands in the LLM (a ``stream`` callable over
:class:`Request` values) and prompt rendering (``render(name, **vars)``) as arguments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

_MASK = (1 << 64) - 1


def help_field(
    text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING
) -> Any:
    """A dataclass field with a default and a help string (``metadata["help"]``)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


class RecordError(ValueError):
    """A malformed input record; the message names the file, the line and the field."""

    def __init__(self, path: str | os.PathLike, line: int, field: str | None, problem: str):
        self.path, self.line, self.field = str(path), line, field
        where = f"{path}:{line}"
        super().__init__(f"{where}: field '{field}': {problem}" if field else f"{where}: {problem}")


def _id_hash(record: dict) -> int:
    rid = record.get("id")
    key = rid if isinstance(rid, str) else json.dumps(rid, sort_keys=True, default=str)
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


@dataclass
class StageStats:
    """What one stage saw: records in, kept, dropped by reason, wall seconds, and any
    stage-specific counters in ``extra`` (numbers only, so that two values add up).

    ``total`` counts every decision (:meth:`keep` + :meth:`drop`); ``entered`` counts what
    :meth:`admit` let in (for stages whose input is records; generation's input is requests and
    its records are born there, so it has no ``entered``)."""

    stage: str = ""
    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    extra: Counter = field(default_factory=Counter)
    entered: int | None = None
    sink: Callable[[dict], None] | None = field(default=None, repr=False, compare=False)
    kept_sink: Callable[[dict], None] | None = field(default=None, repr=False, compare=False)
    _in_hash: int = field(default=0, repr=False, compare=False)
    _out_hash: int = field(default=0, repr=False, compare=False)

    # -- the three verbs ----------------------------------------------------------------------
    def admit(self, records: Iterable[dict]) -> Iterator[dict]:
        """Count and fingerprint each record as it enters the stage."""
        if self.entered is None:
            self.entered = 0
        for rec in records:
            self.entered += 1
            self._in_hash = (self._in_hash + _id_hash(rec)) & _MASK
            yield rec

    def keep(self, record: dict) -> dict:
        """Count a kept record (and write it through ``kept_sink``); returns it."""
        self.total += 1
        self.kept += 1
        self._out_hash = (self._out_hash + _id_hash(record)) & _MASK
        if self.kept_sink is not None:
            self.kept_sink(record)
        return record

    def drop(self, record: dict, reason: str, **detail: Any) -> None:
        """Count a rejection and hand the record, with ``reject: {stage, reason, ...}``, to the sink."""
        self.total += 1
        self.dropped[reason] += 1
        self._out_hash = (self._out_hash + _id_hash(record)) & _MASK
        if self.sink is not None:
            self.sink({**record, "reject": {"stage": self.stage, "reason": reason, **detail}})

    # -- the books ----------------------------------------------------------------------------
    @property
    def rejected(self) -> int:
        return sum(self.dropped.values())

    def balance_error(self) -> str | None:
        """None when the books balance, else what is wrong, naming the stage."""
        if self.total != self.kept + self.rejected:
            return (
                f"stage {self.stage}: {self.total} decided != {self.kept} kept + "
                f"{self.rejected} rejected"
            )
        if self.entered is not None:
            if self.entered != self.total:
                return (
                    f"stage {self.stage}: {self.entered} records entered but {self.kept} kept + "
                    f"{self.rejected} rejected = {self.total} left"
                )
            if self._in_hash != self._out_hash:
                return f"stage {self.stage}: the ids that left are not the ids that entered"
        return None

    def __add__(self, other: StageStats) -> StageStats:
        if not isinstance(other, StageStats):
            return NotImplemented
        entered = (
            None
            if self.entered is None and other.entered is None
            else (self.entered or 0) + (other.entered or 0)
        )
        return StageStats(
            stage=self.stage or other.stage,
            total=self.total + other.total,
            kept=self.kept + other.kept,
            dropped=self.dropped + other.dropped,
            seconds=self.seconds + other.seconds,
            extra=self.extra + other.extra,
            entered=entered,
            sink=self.sink or other.sink,
            kept_sink=self.kept_sink or other.kept_sink,
            _in_hash=(self._in_hash + other._in_hash) & _MASK,
            _out_hash=(self._out_hash + other._out_hash) & _MASK,
        )

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "kept": self.kept,
            "rejected": self.rejected,
            "dropped": dict(self.dropped.most_common()),
            "seconds": round(self.seconds, 3),
            **({"entered": self.entered} if self.entered is not None else {}),
            **({"extra": dict(self.extra)} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, stage: str, data: dict) -> StageStats:
        return cls(
            stage=stage,
            total=data.get("total", 0),
            kept=data.get("kept", 0),
            dropped=Counter(data.get("dropped", {})),
            seconds=data.get("seconds", 0.0),
            extra=Counter(data.get("extra", {})),
            entered=data.get("entered"),
        )


def run_check(
    records: Iterable[dict],
    check: Callable[[dict], str | None],
    stats: StageStats,
) -> Iterator[dict]:
    """The loop of a stateless stage: admit each record, keep it when ``check`` says None, else
    drop it with the reason ``check`` names."""
    for rec in stats.admit(records):
        reason = check(rec)
        if reason:
            stats.drop(rec, reason)
        else:
            yield stats.keep(rec)


# -- the LLM, as stages see it ---------------------------------------------------------------
@dataclass
class Request:
    """One model call. ``kind`` labels it for usage accounting (generate, tests, solutions...);
    ``sample`` is the sample index, part of the cache key so that k samples of the same prompt
    are k different cache entries."""

    kind: str
    messages: list[dict] | None = None
    prompt: str | None = None
    params: dict = field(default_factory=dict)
    sample: int = 0
    tag: Any = None  # caller's bookkeeping (not part of the key)
    api: str | None = None  # "chat" | "completion": overrides the client's default for this call

    def key(self, model: str, api: str) -> str:
        body = {
            "model": model,
            "api": self.api or api,
            "messages": self.messages,
            "prompt": self.prompt,
            "params": self.params,
            "sample": self.sample,
        }
        return hashlib.sha256(
            json.dumps(body, sort_keys=True, ensure_ascii=False).encode()
        ).hexdigest()


@dataclass
class Response:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    request_id: str
    cached: bool = False
    key: str = ""

    def to_row(self, when: float) -> dict:
        """The response as one row of a response cache (journal line or stored object)."""
        return {
            "key": self.key,
            "text": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "model": self.model,
            "request_id": self.request_id,
            "time": when,
        }

    @classmethod
    def from_row(cls, row: dict, key: str) -> Response:
        """A cached answer back from its row."""
        return cls(
            text=row["text"],
            finish_reason=row["finish_reason"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            model=row["model"],
            request_id=row["request_id"],
            cached=True,
            key=key,
        )


@dataclass
class Failure:
    """A request that could not be answered after all retries (kept as a reject, not a crash)."""

    error: str
    kind: str = "request_failed"


class Stream(Protocol):
    """What a stage gets as its LLM: answers ``requests`` (lazily, bounded concurrency) and
    yields ``(request, Response | Failure)`` in request order."""

    def __call__(
        self, requests: Iterable[Request]
    ) -> Iterator[tuple[Request, Response | Failure]]: ...


class Render(Protocol):
    def __call__(self, name: str, **variables: object) -> str: ...
