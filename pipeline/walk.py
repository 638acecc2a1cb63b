"""The file-system and git side of ingest: which files a folder holds, reading them, the
snapshot date, the commit log, and the tokenizer that counts their tokens. Every decision on a
file is :mod:`stages.sources`'s; this module only lists, opens and runs git.

:func:`walk` lists files with ``git ls-files --cached --others --exclude-standard`` in a git
checkout (``.gitignore`` honoured by git itself), else with a directory walk honouring every
``.gitignore`` on the way (``pathspec``). Each listed path is then either read into a
:class:`stages.sources.Document` or skipped with a reason, through the ``walk`` stage's
:class:`StageStats` (listed = kept + skipped, by construction). The reasons of
:mod:`stages.sources` (``vendored``, ``generated``, ``secret_file``, ``binary``,
``undecodable``, ``empty``, ``secret``, ``not_a_document``) and the walk's own:
``gitignored``, ``excluded`` (``ingest.exclude``), ``symlink`` (never followed: it may point
outside the checkout), ``not_a_file`` (a submodule, or a path deleted since it was listed),
``too_large``, ``max_files``, ``duplicate_content`` (``same_as`` names the first copy).

A file is read only once its name passed :func:`stages.sources.classify_path`, and its content
is classified before anything else sees it: a file holding a credential never leaves this
module as a Document.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.configlib import ConfigError
from stages import sources
from stages.base import StageStats
from stages.ingest import IngestConfig
from stages.sources import Document

# -- token counting ---------------------------------------------------------------------------


def token_counter(spec: str) -> tuple[Callable[[str], int], str]:
    """(count function, description) for ``ingest.tokenizer``; empty = the estimate."""
    if not spec:
        return (
            sources.approx_token_count,
            "approx (letter runs / 6, digits and punctuation one each)",
        )
    from transformers import AutoTokenizer

    if spec == "smollm2":
        from pipeline.server import find_smollm2

        spec = str(find_smollm2())
    try:
        if spec.endswith(".gguf"):
            gguf = Path(spec)
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        else:
            tok = AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"ingest.tokenizer={spec!r}: cannot load it ({str(e).splitlines()[0][:200]})"
        ) from None

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    return count, spec


# -- git --------------------------------------------------------------------------------------


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # core.fsmonitor=false: a hostile checkout's .git/config must not run a command through git.
    cmd = ["git", "-c", "core.fsmonitor=false", "-c", "core.quotepath=off", "-C", str(root), *args]
    return subprocess.run(cmd, capture_output=True, check=check, timeout=120)


def is_git_checkout(root: Path) -> bool:
    try:
        r = _git(root, "rev-parse", "--is-inside-work-tree", check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and r.stdout.strip() == b"true"


def snapshot_date(root: Path, is_git: bool, configured: str = "") -> str:
    """``configured``, else the date of the last commit, else today (UTC)."""
    if configured:
        return configured
    if is_git:
        r = _git(root, "log", "-1", "--format=%cs", check=False)
        out = r.stdout.decode().strip()
        if r.returncode == 0 and out:
            return out
    return datetime.now(UTC).strftime("%Y-%m-%d")


def git_commits(root: Path, limit: int) -> list[dict]:
    """The last ``limit`` non-merge commits: sha, date, subject, body, stat (the diffstat)."""
    r = _git(
        root,
        "log",
        f"-n{limit}",
        "--no-merges",
        "--stat=100",
        "--format=%x1e%H%x1f%cs%x1f%s%x1f%b%x1f",
        check=False,
    )
    if r.returncode != 0:
        return []  # no commit yet
    commits = []
    for block in r.stdout.decode("utf-8", "replace").split("\x1e"):
        parts = block.split("\x1f")
        if len(parts) < 5:
            continue
        sha, day, subject, body, stat = parts[:5]
        commits.append(
            {
                "sha": sha.strip(),
                "date": day.strip(),
                "subject": subject.strip(),
                "body": body.strip(),
                "stat": stat.strip("\n"),
            }
        )
    return commits


# -- listing ----------------------------------------------------------------------------------


def _git_list(root: Path) -> tuple[list[str], list[str]]:
    """(files to consider, ignored paths; an ignored directory once, with a trailing slash)."""
    files = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout
    ignored = _git(
        root, "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory"
    ).stdout
    split = lambda b: sorted({p for p in b.decode("utf-8", "surrogateescape").split("\0") if p})  # noqa: E731
    return split(files), split(ignored)


def _walk_list(root: Path) -> tuple[list[str], list[str]]:
    """The same lists for a plain folder, honouring each ``.gitignore`` below ``root``."""
    import pathspec

    specs: list[tuple[str, pathspec.GitIgnoreSpec]] = []
    files: list[str] = []
    ignored: list[str] = []

    def is_ignored(rel: str, is_dir: bool) -> bool:
        verdict = False
        for base, spec in specs:
            if base and not rel.startswith(base + "/"):
                continue
            sub = rel[len(base) + 1 :] if base else rel
            result = spec.check_file(sub + ("/" if is_dir else ""))
            if result.include is not None:
                verdict = result.include
        return verdict

    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        if ".gitignore" in filenames:
            try:
                lines = (
                    (Path(dirpath) / ".gitignore")
                    .read_text(encoding="utf-8", errors="replace")
                    .splitlines()
                )
                specs.append((rel_dir, pathspec.GitIgnoreSpec.from_lines(lines)))
            except OSError:
                pass
        keep_dirs = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if d == ".git":
                continue
            if is_ignored(rel, True):
                ignored.append(rel + "/")
            elif (
                d in sources.VENDORED_DIRS or d in sources.GENERATED_DIRS or d.endswith(".egg-info")
            ):
                files.append(rel + "/")  # reported once as the whole directory
            else:
                keep_dirs.append(d)
        dirnames[:] = keep_dirs
        for f in sorted(filenames):
            rel = f"{rel_dir}/{f}" if rel_dir else f
            (ignored if is_ignored(rel, False) else files).append(rel)
    return sorted(files), sorted(ignored)


# -- the walk ---------------------------------------------------------------------------------


@dataclass
class WalkResult:
    root: Path
    is_git: bool
    documents: list[Document]
    skipped: list[dict]  # {"path", "reason", **detail}, as ingest_report.json lists them
    listed: int
    stats: StageStats


def skip_entry(rejected: dict) -> dict:
    """A rejected source record (a file, a commit) as the report lists it: path, reason and the
    detail (which never holds a secret's value)."""
    detail = {k: v for k, v in rejected["reject"].items() if k != "stage"}
    return {"path": rejected.get("path", rejected["id"]), **detail}


class _Reader:
    """Reads one listed path into a Document, or says why not. Holds the walk's state: the
    content hashes seen (for ``duplicate_content``) and the ``exclude`` patterns."""

    def __init__(self, root: Path, cfg: IngestConfig):
        import pathspec

        self.root, self.cfg = root, cfg
        self.excluded = pathspec.GitIgnoreSpec.from_lines(cfg.exclude) if cfg.exclude else None
        self.seen: dict[str, str] = {}

    def read(self, rel: str, n_kept: int) -> tuple[Document | None, str, dict[str, Any]]:
        cfg = self.cfg
        if rel.endswith("/"):  # a vendored/generated directory pruned by the folder walk
            reason, detail = sources.classify_path(rel + "x", kind=cfg.kind)
            return None, reason or "generated", detail
        if self.excluded is not None and self.excluded.match_file(rel):
            return None, "excluded", {}
        reason, detail = sources.classify_path(rel, kind=cfg.kind)
        if reason:
            return None, reason, detail
        full = self.root / rel
        # A symlink may point outside the checkout (~/.ssh/...): never follow one.
        if full.is_symlink():
            return None, "symlink", {}
        if not full.is_file():
            return None, "not_a_file", {}
        size = full.stat().st_size
        if size > cfg.max_file_bytes:
            return None, "too_large", {"bytes": size}
        if cfg.max_files and n_kept >= cfg.max_files:
            return None, "max_files", {}
        data = full.read_bytes()
        text, bad = sources.decode(data)
        if text is None:
            return None, bad or "binary", {}
        reason, detail = sources.classify_content(
            text,
            entropy_threshold=cfg.entropy_threshold,
            entropy_min_length=cfg.entropy_min_length,
        )
        if reason:
            return None, reason, detail
        digest = hashlib.sha256(data).hexdigest()
        if digest in self.seen:
            return None, "duplicate_content", {"same_as": self.seen[digest]}
        self.seen[digest] = rel
        if PurePosixPath(rel).suffix.lower() in (".html", ".htm") and cfg.kind == "docs":
            text = sources.html_to_text(text)
            if not text.strip():
                return None, "empty", {}
        return Document(path=rel, text=text), "", {}


def walk(root: Path, cfg: IngestConfig) -> WalkResult:
    """Every file under ``root`` either read into a Document or skipped with a reason."""
    t0 = time.perf_counter()
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    is_git = is_git_checkout(root)
    listed, ignored = _git_list(root) if is_git else _walk_list(root)
    skipped: list[dict] = []
    stats = StageStats(stage="walk", sink=lambda r: skipped.append(skip_entry(r)))
    for entry in stats.admit({"id": p} for p in ignored):
        stats.drop(entry, "gitignored")
    reader = _Reader(root, cfg)
    docs: list[Document] = []
    for entry in stats.admit({"id": p} for p in listed):
        doc, reason, detail = reader.read(entry["id"], len(docs))
        if doc is None:
            stats.drop(entry, reason, **detail)
        else:
            docs.append(doc)
            stats.keep(entry)
    stats.seconds = time.perf_counter() - t0
    return WalkResult(
        root=root,
        is_git=is_git,
        documents=docs,
        skipped=skipped,
        listed=len(listed) + len(ignored),
        stats=stats,
    )
