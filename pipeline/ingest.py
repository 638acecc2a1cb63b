"""``python -m pipeline ingest PATH``: instruction data from a local repository or docs folder.

The recipe: every kept file (or page) becomes raw-text chunks for continued pre-training
(``raw_text.jsonl``, ``{"text", "source"}``, each at most ``ingest.max_tokens_per_chunk`` tokens
with its path header), one "show me this file as of <date>" conversation per chunk whose answer
is the file itself, grounded question/answer pairs written by the model from each file, and
optionally "Summarise commit X" pairs from ``git log``. Conversations go through the same
dedup, filter and export stages as ``generate`` and are split into ``messages.jsonl`` and a
seeded ``messages.validation.jsonl``.

Walk: ``git ls-files --cached --others --exclude-standard`` in a git checkout (``.gitignore``
honoured by git itself; ignored paths are listed in the report as ``gitignored``), else a
directory walk honouring every ``.gitignore`` on the way with ``pathspec``. Each file is then
classified by :mod:`stages.ingest` (vendored, generated, binary, secret...) and every skip is
written to ``ingest_report.json`` with its reason. Files holding a credential are skipped whole
and never read by the model; the report says which kind of secret on which line, never its value.

Config: the pipeline's own sections (``llm``, ``dedup``, ``filter``, ``export``...) load through
:func:`pipeline.config.load_config`; the ``ingest:`` section of the YAML file and ``--set
ingest.key=value`` overrides are popped off first and built into :class:`IngestConfig` here.

Run directory ``outputs/<run>/``: ``config.yaml``, ``raw_text.jsonl``, ``01_generated.jsonl``
(QA pairs as parsed, file-recall and commit records), ``02_grounded.jsonl`` and
``03_dedup.jsonl`` (QA pairs), ``04_filter.jsonl`` (all conversations), each with its
``.rejected.jsonl``; ``messages.jsonl``, ``messages.validation.jsonl``, ``data.json``,
``data.validation.json``, ``stats.json``, ``ingest_report.json`` and the response cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from pipeline.config import ConfigError, PipelineConfig, build, load_config, parse_set, to_dict
from pipeline.configlib import read_yaml
from pipeline.prompts import render
from pipeline.records import JsonlWriter, write_json_atomic, write_jsonl_atomic
from pipeline.stats import StageStats, summary_table
from stages import dedup, export, filters
from stages import ingest as ing

log = logging.getLogger("pipeline.ingest")

KINDS = ("repo", "docs")
DEFAULT_CONFIG = Path("configs/ingest.yaml")


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class IngestConfig:
    kind: str = _help(
        "repo (a code checkout) | docs (a folder of Markdown/text/HTML pages)", "repo"
    )
    name: str = _help(
        "name of the repository or wiki used in instructions; empty = the folder name", ""
    )
    max_tokens_per_chunk: int = _help(
        "tokens per raw-text chunk and per file-recall answer, path header included", 8192
    )
    tokenizer: str = _help(
        "target tokenizer for counting: a HF tokenizer name or directory, a .gguf file, or 'smollm2' "
        "(the bundled model's); empty = tokenizer-free estimate (letter runs / 6, digits and "
        "punctuation one each; about 1.1x a BPE count)",
        "",
    )
    max_files: int = _help(
        "use at most this many files (in path order, after skipping); 0 = all", 0
    )
    max_file_bytes: int = _help("skip files larger than this (too_large)", 1_000_000)
    qa_per_doc: int = _help(
        "question/answer pairs asked for per file or page; 0 = no model calls", 3
    )
    qa_context_tokens: int = _help(
        "tokens of a document shown to the model for its QA pairs (its first chunk of this size; "
        "capped to fit the embedded server's context)",
        1024,
    )
    qa_max_tokens: int = _help("completion tokens per QA request", 320)
    qa_temperature: float = _help("sampling temperature of QA requests", 0.7)
    min_answer_support: float = _help(
        "share of an answer's content words that must occur in its source (ungrounded_answer); "
        "identifiers and numbers must all occur",
        0.75,
    )
    file_recall: bool = _help(
        "add one 'show the contents of <path> as of <date>' conversation per chunk", True
    )
    include_git_log: bool = _help(
        "add 'Summarise commit X' pairs from git log (subject, body, diffstat)", False
    )
    git_log_max: int = _help("most recent commits used when include_git_log is on", 50)
    validation_fraction: float = _help(
        "share of conversations held out in messages.validation.jsonl (seeded)", 0.1
    )
    seed: int = _help("seed of the validation split and of instruction phrasing", 42)
    snapshot_date: str = _help(
        "date put in file-recall pairs (YYYY-MM-DD); empty = last commit date, else today (UTC)", ""
    )
    exclude: list[str] = _help("extra gitignore-style patterns to skip (excluded)", factory=list)
    entropy_threshold: float = _help(
        "bits per character from which a long mixed-case token counts as a secret; 0 = off", 4.0
    )
    entropy_min_length: int = _help("shortest token checked for entropy", 32)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"ingest.kind={self.kind!r}: use 'repo' or 'docs'")
        if self.max_tokens_per_chunk < 64:
            raise ValueError(
                f"ingest.max_tokens_per_chunk={self.max_tokens_per_chunk!r}: must be at least 64"
            )
        for name in ("max_files", "qa_per_doc", "git_log_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"ingest.{name}={getattr(self, name)!r}: must be 0 or more")
        if self.max_file_bytes < 1:
            raise ValueError(f"ingest.max_file_bytes={self.max_file_bytes!r}: must be positive")
        if self.qa_context_tokens < 32:
            raise ValueError(
                f"ingest.qa_context_tokens={self.qa_context_tokens!r}: must be at least 32"
            )
        if self.qa_max_tokens < 16:
            raise ValueError(f"ingest.qa_max_tokens={self.qa_max_tokens!r}: must be at least 16")
        if not 0.0 <= self.min_answer_support <= 1.0:
            raise ValueError(
                f"ingest.min_answer_support={self.min_answer_support!r}: must be in [0, 1]"
            )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"ingest.validation_fraction={self.validation_fraction!r}: must be in [0, 1)"
            )
        if self.snapshot_date:
            try:
                datetime.strptime(self.snapshot_date, "%Y-%m-%d")
            except ValueError:
                raise ValueError(
                    f"ingest.snapshot_date={self.snapshot_date!r}: use YYYY-MM-DD"
                ) from None
        if not all(isinstance(p, str) for p in self.exclude):
            raise ValueError(
                f"ingest.exclude={self.exclude!r}: must be a list of gitignore-style patterns"
            )


# -- config -----------------------------------------------------------------------------------


def split_overrides(pairs: list[str]) -> tuple[list[str], list[str]]:
    """(``ingest.*`` overrides with the prefix removed, every other override)."""
    mine, rest = [], []
    for pair in pairs or []:
        (mine if pair.strip().startswith("ingest.") else rest).append(
            pair.strip().removeprefix("ingest.")
        )
    return mine, rest


def load_ingest_config(
    path: str | os.PathLike | None,
    overrides: list[str] | None = None,
    *,
    kind: str | None = None,
    run: str | None = None,
) -> tuple[PipelineConfig, IngestConfig]:
    """The pipeline config and the ingest config from a YAML file and ``--set`` overrides.

    The ``ingest:`` section and ``ingest.*`` overrides are taken out before the rest goes to
    :func:`pipeline.config.load_config` (whose PipelineConfig rejects unknown sections).
    ``kind`` (the CLI's ``--kind``) wins over the file; ``run`` sets the run name.
    """
    data: dict = read_yaml(path) if path else {}
    section = data.pop("ingest", None) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: ingest: expected a mapping of IngestConfig fields")
    mine, rest = split_overrides(overrides or [])
    section = {**section, **_flat(parse_set(mine))}
    if isinstance(section.get("snapshot_date"), date):
        section["snapshot_date"] = section[
            "snapshot_date"
        ].isoformat()  # YAML reads 2024-05-01 as a date
    if kind:
        section["kind"] = kind
    if run:
        data["run"] = run
    icfg = build(IngestConfig, section, "ingest")
    cfg = load_config(None, rest, extra=data)
    user_filter = {**(data.get("filter") or {}), **(parse_set(rest).get("filter") or {})}
    if "blocklist" not in user_filter:
        # "file", "map", "graph", "plot" are ordinary words in questions about a code base or
        # its wiki; only true modalities (images, audio...) stay blocked.
        cfg.filter.blocklist = list(filters.CODE_BLOCKLIST)
    if "mode" not in user_filter:
        cfg.filter.mode = "general"
    return cfg, icfg


def _flat(d: dict) -> dict:
    for k, v in d.items():
        if isinstance(v, dict):
            raise ConfigError(f"--set ingest.{k}.…: IngestConfig has no nested sections")
    return d


# -- token counting ---------------------------------------------------------------------------


def token_counter(spec: str) -> tuple[Callable[[str], int], str]:
    """(count function, description) for ``ingest.tokenizer``; empty = the estimate."""
    if not spec:
        return ing.approx_token_count, "approx (letter runs / 6, digits and punctuation one each)"
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


# -- the walk ---------------------------------------------------------------------------------


@dataclass
class Document:
    path: str  # POSIX, relative to the root
    text: str  # what is trained on (HTML pages converted to text)
    tokens: int = 0
    chunks: list[ing.Chunk] = field(default_factory=list)


@dataclass
class WalkResult:
    root: Path
    is_git: bool
    documents: list[Document]
    skipped: list[dict]
    listed: int


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
            elif d in ing.VENDORED_DIRS or d in ing.GENERATED_DIRS or d.endswith(".egg-info"):
                files.append(rel + "/")  # reported once as the whole directory
            else:
                keep_dirs.append(d)
        dirnames[:] = keep_dirs
        for f in sorted(filenames):
            rel = f"{rel_dir}/{f}" if rel_dir else f
            (ignored if is_ignored(rel, False) else files).append(rel)
    return sorted(files), sorted(ignored)


def walk(root: Path, icfg: IngestConfig) -> WalkResult:
    """Every file under ``root`` either read into a Document or skipped with a reason."""
    import pathspec

    root = root.resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    is_git = is_git_checkout(root)
    listed, ignored = _git_list(root) if is_git else _walk_list(root)
    skipped: list[dict] = [{"path": p, "reason": "gitignored"} for p in ignored]
    excluded = pathspec.GitIgnoreSpec.from_lines(icfg.exclude) if icfg.exclude else None
    docs: list[Document] = []
    seen_hashes: dict[str, str] = {}

    def skip(rel: str, reason: str, **detail: Any) -> None:
        skipped.append({"path": rel, "reason": reason, **detail})

    for rel in listed:
        if rel.endswith("/"):  # a vendored/generated directory pruned by the folder walk
            reason, detail = ing.classify_path(rel + "x", kind=icfg.kind)
            skip(rel, reason or "generated", **detail)
            continue
        if excluded is not None and excluded.match_file(rel):
            skip(rel, "excluded")
            continue
        reason, detail = ing.classify_path(rel, kind=icfg.kind)
        if reason:
            skip(rel, reason, **detail)
            continue
        full = root / rel
        # A symlink may point outside the checkout (~/.ssh/...): never follow one.
        if full.is_symlink():
            skip(rel, "symlink")
            continue
        if not full.is_file():
            skip(rel, "not_a_file")  # a submodule, or a path deleted since git listed it
            continue
        size = full.stat().st_size
        if size > icfg.max_file_bytes:
            skip(rel, "too_large", bytes=size)
            continue
        if icfg.max_files and len(docs) >= icfg.max_files:
            skip(rel, "max_files")
            continue
        data = full.read_bytes()
        text, bad = ing.decode(data)
        if text is None:
            skip(rel, bad or "binary")
            continue
        reason, detail = ing.classify_content(
            text,
            entropy_threshold=icfg.entropy_threshold,
            entropy_min_length=icfg.entropy_min_length,
        )
        if reason:
            skip(rel, reason, **detail)
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen_hashes:
            skip(rel, "duplicate_content", same_as=seen_hashes[digest])
            continue
        seen_hashes[digest] = rel
        if PurePosixPath(rel).suffix.lower() in (".html", ".htm") and icfg.kind == "docs":
            text = ing.html_to_text(text)
            if not text.strip():
                skip(rel, "empty")
                continue
        docs.append(Document(path=rel, text=text))
    return WalkResult(
        root=root, is_git=is_git, documents=docs, skipped=skipped, listed=len(listed) + len(ignored)
    )


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
    """The last ``limit`` non-merge commits: hash, date, subject, body, diffstat."""
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
        sha, date, subject, body, stat = parts[:5]
        commits.append(
            {
                "sha": sha.strip(),
                "date": date.strip(),
                "subject": subject.strip(),
                "body": body.strip(),
                "stat": stat.strip("\n"),
            }
        )
    return commits


# -- records ----------------------------------------------------------------------------------


def _one_line(name: str, **variables: object) -> str:
    return render(name, **variables).strip("\n")


def _part_label(doc: Document, i: int) -> str:
    if len(doc.chunks) == 1:
        return ""
    c = doc.chunks[i]
    return _one_line(
        "ingest_recall_part",
        first=c.first_line,
        last=c.last_line,
        part=i + 1,
        parts=len(doc.chunks),
    )


def raw_records(doc: Document, repo: str) -> Iterator[dict]:
    for i, c in enumerate(doc.chunks):
        header = _one_line("ingest_raw_header", repo=repo, path=doc.path, part=_part_label(doc, i))
        yield {"text": f"{header}\n\n{c.text}", "source": doc.path}


def recall_records(
    doc: Document, index: int, repo: str, date: str, what: str, seed: int
) -> Iterator[dict]:
    phrasings = [
        ln
        for ln in render(
            "ingest_recall_instruction", path=doc.path, repo=repo, date=date, what=what
        ).splitlines()
        if ln.strip()
    ]
    rng = random.Random(f"{seed}:recall:{doc.path}")
    for i, c in enumerate(doc.chunks):
        part = _part_label(doc, i)
        instruction = rng.choice(phrasings)
        if part:
            instruction = (
                instruction.rstrip(".?") + part + ("?" if instruction.endswith("?") else ".")
            )
        prefix = _one_line("ingest_recall_answer", date=date, path=doc.path, repo=repo, part=part)
        yield {
            "id": f"f{index}-{i}",
            "instruction": instruction,
            "input": "",
            "output": f"{prefix}\n\n{c.text}",
            "meta": {
                "kind": "file_recall",
                "source": doc.path,
                "lines": [c.first_line, c.last_line],
                "snapshot": date,
            },
        }


def commit_records(commits: list[dict], repo: str, skipped: list[dict]) -> Iterator[dict]:
    for i, c in enumerate(commits):
        short = c["sha"][:10]
        text = "\n".join((c["subject"], c["body"], c["stat"]))
        hits = ing.find_secrets(text)
        if hits:
            skipped.append(
                {
                    "path": f"commit:{short}",
                    "reason": "secret",
                    "findings": [{"kind": h.kind, "line": h.line} for h in hits[:20]],
                }
            )
            continue
        answer = render(
            "ingest_commit_answer",
            short=short,
            date=c["date"],
            subject=c["subject"],
            body=c["body"],
            stat=c["stat"],
        )
        answer = "\n\n".join(p.strip("\n") for p in answer.split("\n\n") if p.strip())
        yield {
            "id": f"c{i}",
            "instruction": _one_line("ingest_commit_instruction", short=short, repo=repo),
            "input": "",
            "output": answer,
            "meta": {"kind": "commit", "commit": c["sha"], "date": c["date"]},
        }


def qa_instruction(question: str, path: str, repo: str) -> str:
    """The question as asked in training: it names the file unless it already does."""
    if path in question or PurePosixPath(path).name in question:
        return question
    return _one_line("ingest_qa_instruction", path=path, repo=repo, question=question)


# -- the run ----------------------------------------------------------------------------------

STAGE_FILES = {
    "generate": "01_generated",
    "ground": "02_grounded",
    "dedup": "03_dedup",
    "filter": "04_filter",
}


class Ingest:
    """One ingest run over a run directory; :meth:`execute` returns the stats dict."""

    def __init__(
        self,
        root: str | os.PathLike,
        cfg: PipelineConfig,
        icfg: IngestConfig,
        *,
        progress: bool = True,
    ):
        self.root = Path(root)
        self.cfg = cfg
        self.icfg = icfg
        self.progress = progress
        self.repo = icfg.name or self.root.resolve().name
        self.dir = Path(cfg.output_dir) / (cfg.run or f"ingest-{self.repo}")
        self.stats: dict[str, StageStats] = {}
        self.stop_reason: str | None = None
        self.model: str | None = None

    def _writers(self, stage: str) -> tuple[JsonlWriter, JsonlWriter]:
        base = STAGE_FILES[stage]
        kept = JsonlWriter(self.dir / f"{base}.jsonl", append=False)
        rejected = JsonlWriter(self.dir / f"{base}.rejected.jsonl", append=False)
        self._open.extend((kept, rejected))
        return kept, rejected

    def execute(self) -> dict:
        from pipeline.llm import ResponseCache, UsageMeter

        cfg, icfg = self.cfg, self.icfg
        started = time.time()
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{self.root}: not a directory (give a repository or docs folder)"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        resolved = {**to_dict(cfg), "ingest": dataclasses.asdict(icfg)}
        (self.dir / "config.yaml").write_text(
            yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True), encoding="utf-8"
        )

        # 1. walk: read what may be read, skip the rest with a reason.
        t0 = time.perf_counter()
        w = walk(self.root, icfg)
        self.walk_result = w
        self.date = snapshot_date(w.root, w.is_git, icfg.snapshot_date)
        walk_stats = StageStats(stage="walk", total=w.listed, kept=len(w.documents))
        for s in w.skipped:
            walk_stats.dropped[s["reason"]] += 1
        walk_stats.seconds = time.perf_counter() - t0
        self.stats["walk"] = walk_stats

        # 2. raw text, chunked by the target tokenizer.
        t0 = time.perf_counter()
        count, self.tokenizer_desc = token_counter(icfg.tokenizer)
        raw_stats = StageStats(stage="raw_text")
        raw_rows: list[dict] = []
        for doc in w.documents:
            header_budget = (
                count(
                    _one_line(
                        "ingest_raw_header",
                        repo=self.repo,
                        path=doc.path,
                        part=" (lines 100000-100000, part 1000 of 1000)",
                    )
                )
                + 4
            )
            doc.tokens = count(doc.text)
            doc.chunks = ing.chunk_lines(
                doc.text, max(16, icfg.max_tokens_per_chunk - header_budget), count
            )
            raw_stats.total += 1
            raw_stats.kept += 1
            for row in raw_records(doc, self.repo):
                raw_rows.append(row)
                raw_stats.extra["chunks"] += 1
            raw_stats.extra["tokens"] += doc.tokens
        write_jsonl_atomic(self.dir / "raw_text.jsonl", raw_rows)
        raw_stats.seconds = time.perf_counter() - t0
        self.stats["raw_text"] = raw_stats

        self._open: list[JsonlWriter] = []
        gen_w, gen_rej = self._writers("generate")
        what = "page" if icfg.kind == "docs" else "file"
        recall: list[dict] = []
        if icfg.file_recall:
            rec_stats = StageStats(stage="recall")
            for i, doc in enumerate(w.documents):
                rec_stats.total += 1
                rec_stats.kept += 1
                for rec in recall_records(doc, i, self.repo, self.date, what, icfg.seed):
                    gen_w.write(rec)
                    recall.append(rec)
            self.stats["recall"] = rec_stats
        if icfg.include_git_log:
            t0 = time.perf_counter()
            commits = git_commits(w.root, icfg.git_log_max) if w.is_git else []
            before = len(w.skipped)
            commit_recs = list(commit_records(commits, self.repo, w.skipped))
            log_stats = StageStats(stage="git_log", total=len(commits), kept=len(commit_recs))
            log_stats.dropped.update(s["reason"] for s in w.skipped[before:])
            for rec in commit_recs:
                gen_w.write(rec)
            recall.extend(commit_recs)
            log_stats.seconds = time.perf_counter() - t0
            self.stats["git_log"] = log_stats

        usage = UsageMeter(prices=cfg.llm.prices)
        kept_qa: list[dict] = []
        cache = None
        try:
            if icfg.qa_per_doc and w.documents:
                cache = (
                    ResponseCache(self.dir / "cache" / "responses.jsonl") if cfg.llm.cache else None
                )
                kept_qa = self._qa(w.documents, count, what, gen_w, gen_rej, usage, cache)
            filtered = self._filter(kept_qa, recall)
        finally:
            for wr in self._open:
                wr.close()
            if cache is not None:
                cache.close()
        self._export(filtered)
        self._write_report(w)
        self._write_stats(usage, started, len(filtered), raw_stats)
        return self.stats_dict

    # -- QA -----------------------------------------------------------------------------------
    def _qa(
        self, docs: list[Document], count, what: str, gen_w, gen_rej, usage, cache
    ) -> list[dict]:
        from tqdm import tqdm

        from pipeline.llm import Failure, Request
        from pipeline.run import open_client

        cfg, icfg = self.cfg, self.icfg
        gen_stats = StageStats(stage="generate", sink=gen_rej.write)
        ground_w, ground_rej = self._writers("ground")
        g_stats = StageStats(stage="ground", sink=ground_rej.write)
        dedup_w, dedup_rej = self._writers("dedup")
        d_stats = StageStats(stage="dedup", sink=dedup_rej.write)
        self.stats.update(generate=gen_stats, ground=g_stats, dedup=d_stats)
        sources: dict[str, str] = {}
        parsed: list[dict] = []
        t0 = time.perf_counter()
        with open_client(cfg, cache=cache, usage=usage) as client:
            self.model = client.model
            budget = icfg.qa_context_tokens
            if client.embedded:
                # The prompt, the document and the answer must fit the embedded server's context;
                # our counts run a little above the model's own, so this leaves a margin.
                budget = min(budget, cfg.llm.embedded_ctx - icfg.qa_max_tokens - 200)

            def requests() -> Iterator[Request]:
                for i, doc in enumerate(docs):
                    excerpt = ing.chunk_lines(doc.text, max(32, budget), count)[0].text
                    # The model was shown the path and the repository name too: answers may use them.
                    sources[doc.path] = f"{self.repo}\n{doc.path}\n{excerpt}"
                    variables = {
                        "what": what,
                        "path": doc.path,
                        "repo": self.repo,
                        "document": excerpt.rstrip("\n"),
                        "count": icfg.qa_per_doc,
                    }
                    params = {
                        "temperature": icfg.qa_temperature,
                        "top_p": cfg.generation.top_p,
                        "max_tokens": icfg.qa_max_tokens,
                        "seed": icfg.seed * 100003 + i,
                    }
                    if client.api == "completion":
                        text = render("ingest_qa_completion", **variables).rstrip()
                        params["stop"] = [f"Question {icfg.qa_per_doc + 1}", "\n--- "]
                        req = Request(
                            kind="qa", prompt=text, params=params, sample=i, api="completion"
                        )
                        prefix = "Question 1:"
                        template = "ingest_qa_completion"
                    else:
                        text = render("ingest_qa_chat", **variables)
                        req = Request(
                            kind="qa",
                            messages=[{"role": "user", "content": text}],
                            params=params,
                            sample=i,
                            api="chat",
                        )
                        prefix, template = "", "ingest_qa_chat"
                    req.tag = {"index": i, "doc": doc, "prefix": prefix, "template": template}
                    yield req

            bar = tqdm(
                total=len(docs),
                desc="qa",
                unit="doc",
                disable=not self.progress,
                leave=False,
                dynamic_ncols=True,
            )
            try:
                for req, resp in client.stream(requests()):
                    bar.update(1)
                    i, doc = req.tag["index"], req.tag["doc"]
                    if isinstance(resp, Failure):
                        gen_stats.total += 1
                        gen_stats.drop(
                            {"id": f"q{i}", "meta": {"source": doc.path, "error": resp.error}},
                            "request_failed",
                        )
                        continue
                    parsed.extend(self._parse_reply(req, resp, gen_stats, gen_w))
            finally:
                bar.close()
                self.stop_reason = client.stop_reason
        gen_stats.seconds = time.perf_counter() - t0

        t0 = time.perf_counter()
        grounded = []
        for rec in ing.run_grounding(parsed, sources, g_stats, min_support=icfg.min_answer_support):
            ground_w.write(rec)
            grounded.append(rec)
        g_stats.seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        kept = []
        for rec in dedup.run(grounded, cfg.dedup, d_stats):
            dedup_w.write(rec)
            kept.append(rec)
        d_stats.seconds = time.perf_counter() - t0
        return kept

    def _parse_reply(self, req, resp, stats: StageStats, writer: JsonlWriter) -> Iterator[dict]:
        i, doc = req.tag["index"], req.tag["doc"]
        meta = {
            "kind": "qa",
            "source": doc.path,
            "template": req.tag["template"],
            "model": resp.model,
            "request_id": resp.request_id,
            "finish_reason": resp.finish_reason,
            "usage": {
                "prompt_tokens": resp.prompt_tokens,
                "completion_tokens": resp.completion_tokens,
            },
            "cached": resp.cached,
            "request": i,
        }
        pairs = ing.parse_qa(req.tag["prefix"] + resp.text)[: self.icfg.qa_per_doc]
        if not pairs:
            stats.total += 1
            stats.drop({"id": f"q{i}", "meta": meta, "raw": resp.text}, "unparseable_reply")
            return
        for j, (question, answer) in enumerate(pairs):
            stats.total += 1
            rec = {
                "id": f"q{i}-{j}",
                "instruction": qa_instruction(question, doc.path, self.repo),
                "input": "",
                "output": answer or "",
                "meta": meta,
            }
            if not answer:
                last = j == len(pairs) - 1
                reason = (
                    "truncated_generation"
                    if last and resp.finish_reason == "length"
                    else "missing_output"
                )
                stats.drop(rec, reason)
                continue
            stats.kept += 1
            writer.write(rec)
            yield rec

    # -- filter, export, report, stats --------------------------------------------------------
    def _filter(self, qa: list[dict], recall: list[dict]) -> list[dict]:
        f_w, f_rej = self._writers("filter")
        f_stats = StageStats(stage="filter", sink=f_rej.write)
        self.stats["filter"] = f_stats
        # A file is an answer as it stands: it may end mid-sentence, hold prompt-like markers
        # (this project's own templates do), mention URLs or restate its path. Only the rules
        # that judge data rather than prose apply to file-recall and commit records.
        verbatim = dataclasses.replace(
            self.cfg.filter,
            blocklist=[],
            code_blocklist=[],
            reject_unseen_references=False,
            reject_truncated_outputs=False,
            reject_template_leaks=False,
            restatement_threshold=1.0,
            reject_output_copies_input=False,
            python_must_parse=False,
            non_answer_patterns=[],
        )
        t0 = time.perf_counter()
        kept = []
        for records, fcfg in ((qa, self.cfg.filter), (recall, verbatim)):
            for rec in filters.run(records, fcfg, f_stats):
                f_w.write(rec)
                kept.append(rec)
        f_stats.seconds = time.perf_counter() - t0
        return kept

    def _export(self, kept: list[dict]) -> None:
        e_stats = StageStats(stage="export")
        t0 = time.perf_counter()
        rows = list(export.run(kept, e_stats))
        train, val = export.split(rows, self.icfg.validation_fraction, self.icfg.seed)
        system = self.cfg.export.system_prompt
        write_jsonl_atomic(
            self.dir / "messages.jsonl", (export.to_messages(r, system) for r in train)
        )
        write_jsonl_atomic(
            self.dir / "messages.validation.jsonl", (export.to_messages(r, system) for r in val)
        )
        write_json_atomic(self.dir / "data.json", [export.to_alpaca(r) for r in train])
        write_json_atomic(self.dir / "data.validation.json", [export.to_alpaca(r) for r in val])
        e_stats.extra["train"] += len(train)
        e_stats.extra["validation"] += len(val)
        e_stats.seconds = time.perf_counter() - t0
        self.stats["export"] = e_stats

    def _write_report(self, w: WalkResult) -> None:
        by_reason = Counter(s["reason"] for s in w.skipped)
        self.report = {
            "root": str(w.root),
            "kind": self.icfg.kind,
            "repo": self.repo,
            "git": w.is_git,
            "snapshot_date": self.date,
            "tokenizer": self.tokenizer_desc,
            "files_listed": w.listed,
            "files_kept": len(w.documents),
            "skipped_by_reason": dict(by_reason.most_common()),
            "skipped": w.skipped,
            "kept": [
                {"path": d.path, "tokens": d.tokens, "chunks": len(d.chunks)} for d in w.documents
            ],
        }
        write_json_atomic(self.dir / "ingest_report.json", self.report)

    def _write_stats(self, usage, started: float, n_kept: int, raw_stats: StageStats) -> None:
        self.stats_dict = {
            "run": self.dir.name,
            "mode": "ingest",
            "kind": self.icfg.kind,
            "source": str(self.walk_result.root),
            "model": self.model,
            "tokenizer": self.tokenizer_desc,
            "snapshot_date": self.date,
            "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
            "wall_seconds": round(time.time() - started, 3),
            "stopped_reason": self.stop_reason,
            "kept": n_kept,
            "raw_text": {
                "chunks": int(raw_stats.extra["chunks"]),
                "tokens": int(raw_stats.extra["tokens"]),
            },
            "stages": {name: s.to_dict() for name, s in self.stats.items()},
            "llm": usage.to_dict(),
        }
        write_json_atomic(self.dir / "stats.json", self.stats_dict)

    def summary(self) -> str:
        r = self.report
        lines = [summary_table(self.stats), ""]
        lines.append(
            f"files: {r['files_listed']} listed, {r['files_kept']} kept, {len(r['skipped'])} skipped"
        )
        groups: dict[str, list[str]] = {}
        for s in r["skipped"]:
            groups.setdefault(s["reason"], []).append(s["path"])
        for reason, paths in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(paths[:4]) + (f", ... (+{len(paths) - 4})" if len(paths) > 4 else "")
            lines.append(f"  skipped {reason}: {len(paths)}: {shown}")
        d = self.stats_dict
        llm = d["llm"]
        lines.append(
            f"run {d['run']}: {d['kept']} conversations ({d['stages']['export'].get('extra', {}).get('validation', 0)} held out), "
            f"{d['raw_text']['chunks']} raw-text chunks ({d['raw_text']['tokens']} tokens, {self.tokenizer_desc.split(' ')[0]}) in {self.dir}"
            + (f" (stopped: {d['stopped_reason']})" if d["stopped_reason"] else "")
        )
        lines.append(
            f"requests {llm['requests']} ({llm['cached']} from cache, {llm['failed']} failed), tokens {llm['prompt_tokens']} prompt + {llm['completion_tokens']} completion, cost ${llm['cost']:.4f}, {d['wall_seconds']:.1f}s"
        )
        lines.append(f"skip report: {self.dir / 'ingest_report.json'}")
        lines.append(
            f"train on the mix: make train DATA={self.dir / 'messages.jsonl'} "
            f"SET='data.raw_text={self.dir / 'raw_text.jsonl'} "
            f"data.validation_path={self.dir / 'messages.validation.jsonl'}'"
        )
        return "\n".join(lines)


def main(args) -> int:
    """Entry of ``python -m pipeline ingest`` (``args``: path, kind, run, config, set)."""
    config = getattr(args, "config", None)
    if not config and DEFAULT_CONFIG.exists():
        config = str(DEFAULT_CONFIG)
    overrides = list(getattr(args, "set", []) or [])
    # The CLI's --kind defaults to "repo", which is also IngestConfig's default: only "docs" on
    # the command line is known to be the user's choice and overrides the config file.
    kind = getattr(args, "kind", None)
    cfg, icfg = load_ingest_config(
        config,
        overrides,
        kind=kind if kind and kind != "repo" else None,
        run=getattr(args, "run", None),
    )
    job = Ingest(
        args.path,
        cfg,
        icfg,
        progress=not getattr(args, "no_progress", False) and sys.stderr.isatty(),
    )
    print(f"run directory: {job.dir}", file=sys.stderr)
    try:
        job.execute()
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: run the same command again to resume (answers are cached in {job.dir / 'cache'})",
            file=sys.stderr,
        )
        return 130
    print(job.summary(), file=sys.stderr)
    return 0
