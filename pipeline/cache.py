"""The response cache every node of a cluster can reach: a content-addressed directory store.

One answer is one small JSON file named by the request's key (the sha256 of the full request:
model, API, messages or prompt, sampling params, sample index), under ``<root>/<key[:2]>/``.
``root`` is a local path (one machine, or an NFS mount every node shares) or any ``fsspec`` URL
(``s3://bucket/run-cache``, ``gs://…``), so Ray's client actors on every node read and write the
same cache.

Why a file per answer rather than the local engine's JSONL journal: many writers on many
machines append to no single file safely, and no writer can repair another's torn line. Here a
writer never exposes a partial file: on a local or NFS path it writes a temporary name and
renames it over the final one (rename is atomic within a directory, also on NFS), and on an
object store the PUT of one object is atomic. Two actors answering the same request write the
same key; the later rename wins and either copy is a valid answer. A reader that finds no file
(or one it cannot parse) treats the request as unanswered.

The local engine's journal (``cache/responses.jsonl``) is read as a fallback, so a run started
on the local engine resumes on the Ray engine without paying any answer again.
"""

from __future__ import annotations

import json
import os
import time
import uuid

from stages.base import Response


def read_journal(path: str | os.PathLike) -> dict[str, dict]:
    """The rows of a JSONL response journal by key; unreadable lines (a torn last line from a
    kill) are skipped."""
    rows: dict[str, dict] = {}
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
                rows[row["key"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return rows


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


class DirCache:
    """``get(key)`` / ``put(response)`` over a directory store (see the module doc); picklable,
    so it travels to Ray actors, which open the filesystem on first use."""

    def __init__(self, root: str | os.PathLike, journal: str | os.PathLike | None = None):
        self.root = str(root).rstrip("/")
        self.journal = str(journal) if journal else None
        self._fs = self._path = None
        self._old: dict[str, dict] | None = None
        self.local = "://" not in self.root or self.root.startswith("file://")

    def __getstate__(self) -> dict:
        return {"root": self.root, "journal": self.journal}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"], state["journal"])

    def _open(self):
        if self._fs is None:
            self._fs, self._path = _fs(self.root)
            self._fs.makedirs(self._path, exist_ok=True)
        return self._fs

    def _file(self, key: str) -> str:
        return f"{self._path}/{key[:2]}/{key}.json"

    def _journal_rows(self) -> dict[str, dict]:
        if self._old is None:
            self._old = read_journal(self.journal) if self.journal else {}
        return self._old

    def get(self, key: str) -> Response | None:
        fs = self._open()
        try:
            row = json.loads(fs.cat_file(self._file(key)))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            row = self._journal_rows().get(key)
        return None if row is None else Response.from_row(row, key)

    def put(self, resp: Response) -> None:
        row = resp.to_row(time.time())
        data = json.dumps(row, ensure_ascii=False).encode()
        fs = self._open()
        final = self._file(resp.key)
        if self.local:
            folder = os.path.dirname(final)
            os.makedirs(folder, exist_ok=True)
            tmp = f"{final}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        else:  # an object store: one PUT is atomic
            fs.pipe_file(final, data)

    def keys(self) -> list[str]:
        fs = self._open()
        return [os.path.basename(p)[: -len(".json")] for p in fs.glob(f"{self._path}/*/*.json")]

    def __len__(self) -> int:
        return len(self.keys())

    def close(self) -> None:
        pass
