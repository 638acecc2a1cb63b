"""Reading and writing records: JSONL (append-and-flush, torn-line repair on resume) and the
Alpaca JSON array (write-to-temp-then-rename). Every read error names the file, line and field."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from stages.base import RecordError

__all__ = ["RecordError"]  # re-exported: callers name it from here or from stages.base


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield one dict per non-blank line; a line that is not a JSON object is a RecordError."""
    for _, obj in enumerate_jsonl(path):
        yield obj


def enumerate_jsonl(
    path: str | os.PathLike, on_torn_tail: Callable[[int], None] | None = None
) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` per non-blank line (of a ``.jsonl`` or ``.jsonl.gz``
    file), for validators that name the line.

    A last line without its newline that is not valid JSON is a write cut off by a kill: with
    ``on_torn_tail`` it is skipped and reported by line number, otherwise it is an error."""
    # Line by line, not readlines(): a pass over a large file holds one line, not the file.
    # Only the last line can lack its newline, so that alone marks the torn tail.
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                if on_torn_tail is not None and not line.endswith("\n"):
                    on_torn_tail(lineno)
                    continue
                raise RecordError(
                    path, lineno, None, f"not valid JSON ({e.msg} at column {e.colno})"
                ) from None
            if not isinstance(obj, dict):
                raise RecordError(
                    path, lineno, None, f"expected a JSON object, got {type(obj).__name__}"
                )
            yield lineno, obj


def read_records(path: str | os.PathLike) -> Iterator[dict]:
    """Records from a ``.jsonl`` file or from a JSON array file (Alpaca ``data.json``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    with open(p, encoding="utf-8") as f:
        head = f.read(1024).lstrip()
    if head.startswith("["):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RecordError(p, e.lineno, None, f"not valid JSON ({e.msg})") from None
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise RecordError(p, i + 1, None, f"array item {i} is not a JSON object")
            yield obj
    else:
        yield from read_jsonl(p)


class RecordFile:
    """The records of a file (:func:`read_records`), read again from the start by every
    ``iter()``: a stage that needs two passes (the Ray engine's exact dedup: texts out to the
    cluster, then the write-back in input order) re-reads the file instead of holding it, and
    each pass reports bad input by file, line and field as one read would. ``passes`` counts the
    iterations begun."""

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self.passes = 0

    def __iter__(self) -> Iterator[dict]:
        self.passes += 1
        return read_records(self.path)

    def __repr__(self) -> str:
        return f"RecordFile({str(self.path)!r})"


def require(record: dict, field: str, kind: type | tuple[type, ...], path: str, line: int) -> Any:
    """Return ``record[field]`` if present and of ``kind``, else raise a RecordError naming it."""
    if field not in record:
        raise RecordError(path, line, field, "missing")
    value = record[field]
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise RecordError(path, line, field, f"expected {names}, got {type(value).__name__}")
    return value


def repair_tail(path: str | os.PathLike) -> int:
    """Cut a torn last line (a write killed mid-line) off a JSONL file; return bytes removed."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return 0
    with open(p, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        # Walk back to the last newline; everything after it is a partial record.
        pos, chunk = size, 4096
        tail = b""
        while pos > 0:
            step = min(chunk, pos)
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail
            idx = tail.rfind(b"\n")
            if idx != -1:
                keep = pos + idx + 1
                break
        else:
            keep = 0
        if keep < size:
            f.truncate(keep)
        return size - keep


class JsonlWriter:
    """Append records one line at a time, flushed at once, so a killed run loses at most the
    line being written (which :func:`repair_tail` removes on resume)."""

    def __init__(self, path: str | os.PathLike, *, append: bool = True, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if append:
            repair_tail(self.path)
        self._f = open(self.path, "a" if append else "w", encoding="utf-8")
        self._fsync = fsync
        self.count = 0

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.fileno())
        self.count += 1

    def write_all(self, records: Iterable[dict]) -> None:
        for r in records:
            self.write(r)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _usual_mode(path: str) -> None:
    """mkstemp makes 0600 files; outputs get the mode an ordinary open() would give them."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write JSON to a temp file in the same directory, then rename it over ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=indent)
            f.write("\n")
        _usual_mode(tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write a whole JSONL file via temp-then-rename; return the number of records."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                n += 1
        _usual_mode(tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
