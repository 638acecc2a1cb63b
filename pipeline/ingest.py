"""``python -m pipeline ingest PATH``: instruction data from a local repository or docs folder.

This module only wires: the source (:func:`pipeline.walk.walk` over the folder, and ``git log``),
the stages of :mod:`stages.ingest` and the shared dedup, filter and export stages, the sinks
(each stage's kept and rejected files from the one table, ``STAGE_FILES["ingest"]`` in
:mod:`pipeline.rundir`; ``raw_text.jsonl``, ``stats.json``, ``ingest_report.json``) and the LLM
client (through the engine, :mod:`pipeline.engine`). Every decision is a stage's.

The flow::

    walk ─► chunk ─► raw_text.jsonl
              ├─► file recall ──────────────────┐ born in generate (01_generated)
              ├─► git_log ─► commits ───────────┤
              └─► QA requests ─► LLM ─► generate ─► ground ─► dedup ─┐
                                                                      ▼
                                                   filter (04_filter) ─► export (05_export)

QA pairs go through ground (02_grounded) and dedup (03_dedup); file-recall and commit records
join them at the filter, under the rules that judge data rather than prose
(:func:`stages.ingest.verbatim_filter`). The export is :func:`pipeline.rundir.write_export`, the
same as ``generate``'s (``export.validation_fraction``, ``system_prompt``, ``save_to_disk``), its
split seeded by ``ingest.seed``.

Secrets: the walk skips a file holding a credential whole, so the model never reads it; the
report says which kind of secret sits on which line, never its value.

Config: the ``ingest:`` section of the pipeline config (:class:`stages.ingest.IngestConfig`),
loaded and overridden (``--set ingest.key=value``) like every other section; ingest's own
defaults for the filter are a layer under the user's file (:func:`load_ingest_config`).

The books: at the end the run checks, for every stage (the walk and ``git_log`` included), that
records in = kept + rejected with the same ids and that its files hold what it counted; a
mismatch is a :class:`pipeline.errors.BooksError` naming the stage.

Run directory ``outputs/<run>/``: ``config.yaml``, ``raw_text.jsonl``, the stage files
``01_generated`` .. ``04_filter`` (``.jsonl`` and ``.rejected.jsonl``) and
``05_export.rejected.jsonl``, ``data.json``, ``messages.jsonl`` (and their ``.validation``
twins), ``stats.json``, ``ingest_report.json`` and the response cache.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from pipeline.config import PipelineConfig, load_config, merge, save_config
from pipeline.configlib import read_yaml
from pipeline.engine import engine_for
from pipeline.errors import BooksError
from pipeline.llm import UsageMeter
from pipeline.prompts import render
from pipeline.records import write_json_atomic, write_jsonl_atomic
from pipeline.rundir import StageFiles, books_errors, write_export
from pipeline.stats import StageStats, summary_table
from pipeline.walk import WalkResult, git_commits, skip_entry, snapshot_date, token_counter, walk
from stages import filters
from stages import ingest as ing
from stages.sources import Document

DEFAULT_CONFIG = Path("configs/ingest.yaml")


def ingest_defaults() -> dict:
    """Ingest's own config defaults, a layer under the user's file and ``--set``: "file",
    "map", "graph", "plot" are ordinary words in questions about a code base or its wiki, so
    only true modalities (images, audio...) stay blocked; and the conversations are judged as
    general ones, whatever ``generation.mode`` says."""
    return {"filter": {"blocklist": list(filters.CODE_BLOCKLIST), "mode": "general"}}


def load_ingest_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    *,
    kind: str | None = None,
    run: str | None = None,
) -> PipelineConfig:
    """:func:`pipeline.config.load_config` over :func:`ingest_defaults`; ``kind`` and ``run``
    (the CLI's ``--kind`` and ``--run``) win over the file, ``--set`` over everything."""
    data = merge(ingest_defaults(), read_yaml(path) if path else {})
    given: dict = {"run": run} if run else {}
    if kind:
        given["ingest"] = {"kind": kind}
    return load_config(None, overrides, extra=merge(data, given))


def _drain(records: Iterable[dict], stats: StageStats) -> list[dict]:
    """Run a stage to its end; its input is already a list, so the time is the stage's own."""
    t0 = time.perf_counter()
    out = list(records)
    stats.seconds += time.perf_counter() - t0
    return out


def _ticking(answers: Iterator, bar) -> Iterator:
    for a in answers:
        bar.update(1)
        yield a


class Ingest:
    """One ingest run over a run directory; :meth:`execute` returns the stats dict."""

    def __init__(self, root: str | os.PathLike, cfg: PipelineConfig, *, progress: bool = True):
        self.root = Path(root)
        self.cfg = cfg
        self.progress = progress
        self.repo = cfg.ingest.name or self.root.resolve().name
        self.dir = Path(cfg.output_dir) / (cfg.run or f"ingest-{self.repo}")
        self.stats: dict[str, StageStats] = {}
        self.stop_reason: str | None = None
        self.model: str | None = None

    def _stage(self, files: StageFiles, name: str) -> StageStats:
        self.stats[name] = files.stats(name)
        return self.stats[name]

    def execute(self) -> dict:
        cfg, icfg = self.cfg, self.cfg.ingest
        started = time.time()
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{self.root}: not a directory (give a repository or docs folder)"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.dir / "config.yaml")

        # The source: what may be read is read, the rest skipped with a reason.
        w = self.walk_result = walk(self.root, icfg)
        self.stats["walk"] = w.stats
        self.date = snapshot_date(w.root, w.is_git, icfg.snapshot_date)
        count, self.tokenizer_desc = token_counter(icfg.tokenizer)
        docs = self.documents = self._raw_text(w.documents, count)
        what = "page" if icfg.kind == "docs" else "file"
        if icfg.include_git_log:
            # A commit holding a credential is a skipped source, listed in the report like a file.
            self.stats["git_log"] = StageStats(
                stage="git_log", sink=lambda r: w.skipped.append(skip_entry(r))
            )

        usage = UsageMeter(prices=cfg.llm.prices)
        # The same stages on either engine (engine.kind): local, or Ray actors and tasks.
        self.engine = engine_for(cfg)
        try:
            self._stages(w, docs, count, what, usage)
        finally:
            self.engine.close()
        self._write_report(w)
        errors = books_errors(self.dir, "ingest", self.stats)
        self._write_stats(usage, started, errors)
        if errors:
            raise BooksError("the books do not balance: " + "; ".join(errors))
        return self.stats_dict

    def _stages(self, w: WalkResult, docs: list[Document], count, what: str, usage) -> None:
        cfg, icfg = self.cfg, self.cfg.ingest
        with StageFiles(self.dir, "ingest") as files:
            gen = self._stage(files, "generate")
            verbatim = self._verbatim(docs, what, w, gen)
            qa, shown = self._qa(docs, count, what, gen, usage)
            ground = self._stage(files, "ground")
            grounded = _drain(
                ing.run_grounding(qa, shown, ground, min_support=icfg.min_answer_support), ground
            )
            d_stats = self._stage(files, "dedup")
            deduped = _drain(self.engine.dedup(grounded, cfg.dedup, d_stats), d_stats)
            f_stats = self._stage(files, "filter")
            filtered = _drain(
                itertools.chain(
                    self.engine.filter(deduped, cfg.filter, f_stats),
                    self.engine.filter(verbatim, ing.verbatim_filter(cfg.filter), f_stats),
                ),
                f_stats,
            )
            # Export's kept records are the exported files themselves: only its rejects get one.
            e_stats = self.stats["export"] = files.stats("export", kept_file=False)
            t0 = time.perf_counter()
            write_export(self.dir, filtered, cfg.export, e_stats, seed=icfg.seed)
            e_stats.seconds = time.perf_counter() - t0

    def _verbatim(
        self, docs: list[Document], what: str, w: WalkResult, gen: StageStats
    ) -> list[dict]:
        """The records made without the model, born in the generate stage: file recall, and
        the commits that the git_log stage let through."""
        icfg = self.cfg.ingest
        made: list[dict] = []
        if icfg.file_recall:
            t0 = time.perf_counter()
            recall = ing.recall_records(
                docs, repo=self.repo, date=self.date, what=what, seed=icfg.seed, render=render
            )
            made += ing.keep_all(recall, gen)
            gen.seconds += time.perf_counter() - t0
        if icfg.include_git_log:
            log_stats = self.stats["git_log"]
            t0 = time.perf_counter()
            commits = git_commits(w.root, icfg.git_log_max) if w.is_git else []
            records = ing.commit_records(commits, repo=self.repo, render=render, stats=log_stats)
            kept = list(records)
            log_stats.seconds += time.perf_counter() - t0
            made += ing.keep_all(kept, gen)
        return made

    # -- raw text -----------------------------------------------------------------------------
    def _raw_text(self, docs: list[Document], count) -> list[Document]:
        t0 = time.perf_counter()
        max_tokens = self.cfg.ingest.max_tokens_per_chunk
        chunked = [ing.chunk_document(d, max_tokens, count, render, self.repo) for d in docs]
        rows = (row for d in chunked for row in ing.raw_records(d, self.repo, render))
        n = write_jsonl_atomic(self.dir / "raw_text.jsonl", rows)
        self.raw_text = {
            "documents": len(chunked),
            "chunks": n,
            "tokens": sum(d.tokens for d in chunked),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return chunked

    # -- QA -----------------------------------------------------------------------------------
    def _qa(
        self, docs: list[Document], count, what: str, gen: StageStats, usage: UsageMeter
    ) -> tuple[list[dict], dict[str, str]]:
        """The QA part of the generate stage: (the pairs as parsed, what the model was shown of
        each document). No model is started when no pair is asked for."""
        cfg, icfg = self.cfg, self.cfg.ingest
        if not (icfg.qa_per_doc and docs):
            return [], {}
        cache = self.engine.response_cache(self.dir) if cfg.llm.cache else None
        t0 = time.perf_counter()
        try:
            with self.engine.open_client(cfg, cache=cache, usage=usage) as client:
                self.model = client.model
                context = cfg.llm.embedded_ctx if client.embedded else None
                excerpts = ing.qa_excerpts(docs, ing.qa_context_budget(icfg, context), count)
                requests = ing.qa_requests(
                    excerpts, icfg, render, client.api,
                    repo=self.repo, what=what, top_p=cfg.generation.top_p,
                )  # fmt: skip
                bar = tqdm(
                    total=len(docs), desc="qa", unit="doc", disable=not self.progress,
                    leave=False, dynamic_ncols=True,
                )  # fmt: skip
                try:
                    qa = list(
                        ing.parse_qa_replies(
                            _ticking(client.stream(requests), bar),
                            gen,
                            qa_per_doc=icfg.qa_per_doc,
                            repo=self.repo,
                            render=render,
                        )
                    )
                except KeyboardInterrupt:
                    self.stop_reason = "interrupted"
                    client.abort()
                    raise
                finally:
                    bar.close()
                    self.stop_reason = self.stop_reason or client.stop_reason
        finally:
            if cache is not None:
                cache.close()
        gen.seconds += time.perf_counter() - t0
        return qa, ing.shown_sources(excerpts, self.repo)

    # -- report, stats ------------------------------------------------------------------------
    def _write_report(self, w: WalkResult) -> None:
        by_reason = Counter(s["reason"] for s in w.skipped)
        self.report = {
            "root": str(w.root),
            "kind": self.cfg.ingest.kind,
            "repo": self.repo,
            "git": w.is_git,
            "snapshot_date": self.date,
            "tokenizer": self.tokenizer_desc,
            "files_listed": w.listed,
            "files_kept": len(w.documents),
            "skipped_by_reason": dict(by_reason.most_common()),
            "skipped": w.skipped,
            "kept": [
                {"path": d.path, "tokens": d.tokens, "chunks": len(d.chunks)}
                for d in self.documents
            ],
        }
        write_json_atomic(self.dir / "ingest_report.json", self.report)

    def _write_stats(self, usage: UsageMeter, started: float, errors: list[str]) -> None:
        self.stats_dict = {
            "run": self.dir.name,
            "mode": "ingest",
            "kind": self.cfg.ingest.kind,
            "source": str(self.walk_result.root),
            "model": self.model,
            "tokenizer": self.tokenizer_desc,
            "snapshot_date": self.date,
            "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
            "wall_seconds": round(time.time() - started, 3),
            "stopped_reason": self.stop_reason,
            "kept": self.stats["export"].kept,
            "books": errors or "balanced",
            "raw_text": self.raw_text,
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
        held_out = self.stats["export"].extra.get("validation", 0)
        lines.append(
            f"run {d['run']}: {d['kept']} conversations ({held_out} held out), "
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
    config = args.config or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else None)
    cfg = load_ingest_config(config, args.set, kind=args.kind, run=args.run)
    job = Ingest(
        args.path,
        cfg,
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
