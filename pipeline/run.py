"""The whole run: seeds -> generate -> dedup -> (answer) -> filter -> (solve -> verify) -> export.

This module only wires: a source (the seed file), the stage operators of :mod:`stages`, the
sinks (each stage's kept and rejected JSONL files, ``stats.json``, the report) and the LLM
client, which it owns. Every decision is a stage's.

Rounds. Generation runs in rounds: the requests of a round are built from the records kept
before it began (seeded per request index), every record of the round goes through every
stage, and the next round is sized from the yield so far (:func:`stages.generate.next_round_size`).
Which requests a run makes is therefore a function of the answers it gets, never of timing:
records made past the target are exported as ``over_target`` rejects, not cut off mid-flight.

Resume: every model answer is journaled in ``cache/responses.jsonl`` the moment it arrives.
Running the same command again rewrites the stage files from scratch, replaying answered
requests from the cache at no cost: a finished run makes no request at all, and a killed run
makes only the requests the uninterrupted run would have made. On the Ray engine
(``engine.kind=ray``, :mod:`pipeline.engine`) answers go to a directory store every node can
reach (:mod:`pipeline.cache`), and the LLM, filter and verify stages run on the cluster; this
module wires the same stages either way.

The books: at the end the run checks, for every stage, that records in = kept + rejected with
the same ids, and that its files hold what it counted; a mismatch is a :class:`BooksError`
naming the stage.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from pipeline import prompts
from pipeline.config import PipelineConfig, save_config
from pipeline.engine import engine_for
from pipeline.errors import BooksError
from pipeline.llm import LLMClient, ResponseCache, UsageMeter, resolve_api_key
from pipeline.records import enumerate_jsonl, write_json_atomic, write_jsonl_atomic
from pipeline.rundir import StageFiles, books_errors, write_export
from pipeline.stats import StageStats, summary_table
from stages import dedup, generate, seeds

log = logging.getLogger("pipeline")


def run_dir_for(cfg: PipelineConfig) -> Path:
    name = cfg.run or f"{cfg.generation.mode}-n{cfg.generation.num}-s{cfg.generation.seed}"
    return Path(cfg.output_dir) / name


@contextlib.contextmanager
def open_endpoint(cfg: PipelineConfig):
    """Yield ``(base_urls, model, api, embedded)``: the configured endpoint(s), or the embedded
    llama.cpp server started here and stopped on exit, Ctrl-C or error."""
    base_urls = list(cfg.llm.base_urls) or ([cfg.llm.base_url] if cfg.llm.base_url else [])
    if not base_urls and os.environ.get("OPENAI_BASE_URL"):
        base_urls = [os.environ["OPENAI_BASE_URL"]]
    if base_urls:
        model = cfg.llm.model or os.environ.get("OPENAI_MODEL") or "gpt-4o-mini"
        yield base_urls, model, ("chat" if cfg.llm.api == "auto" else cfg.llm.api), False
        return
    from pipeline.server import EmbeddedServer

    srv = EmbeddedServer(
        cfg.llm.embedded_model,
        threads=cfg.llm.embedded_threads,
        threads_batch=cfg.llm.embedded_threads_batch,
        ctx=cfg.llm.embedded_ctx,
        embedding=cfg.semdedup.enabled,
    )
    log.info(
        "starting the embedded model server (%s, %d threads)", srv.model_path.name, srv.threads
    )
    with srv:
        default_api = getattr(srv, "api", "completion")
        yield (
            [srv.base_url],
            cfg.llm.model or srv.model_name,
            (default_api if cfg.llm.api == "auto" else cfg.llm.api),
            True,
        )


@contextlib.contextmanager
def open_client(
    cfg: PipelineConfig, *, cache: ResponseCache | None = None, usage: UsageMeter | None = None
):
    """The LLM client over the configured endpoint(s) or the embedded server (see
    :func:`open_endpoint`); ``client.embedded`` tells which."""
    with open_endpoint(cfg) as (base_urls, model, api, embedded):
        client = LLMClient(
            cfg.llm,
            base_urls=base_urls,
            model=model,
            # The embedded server needs no key, and must never receive the user's.
            api_key=None if embedded else resolve_api_key(cfg.llm),
            cache=cache,
            usage=usage,
            api=api,
        )
        client.embedded = embedded
        yield client


class _Clock:
    """Wall time of each stage of a lazy chain. Pulling a record through a stage also runs every
    stage upstream of it; each stage is charged only its own share (its inclusive time minus
    that of the stage feeding it)."""

    def __init__(self) -> None:
        self.inclusive: list[tuple[StageStats, float]] = []

    def wrap(self, records: Iterable[dict], stats: StageStats) -> Iterator[dict]:
        slot = len(self.inclusive)
        self.inclusive.append((stats, 0.0))
        it = iter(records)
        while True:
            t0 = time.perf_counter()
            try:
                r = next(it)
            except StopIteration:
                self._add(slot, time.perf_counter() - t0)
                return
            self._add(slot, time.perf_counter() - t0)
            yield r

    def _add(self, slot: int, dt: float) -> None:
        st, t = self.inclusive[slot]
        self.inclusive[slot] = (st, t + dt)

    def charge(self) -> None:
        upstream = 0.0
        for st, t in self.inclusive:
            st.seconds += max(0.0, t - upstream)
            upstream = t


class Run:
    """One pipeline run over a run directory. ``execute()`` returns the stats dict."""

    def __init__(self, cfg: PipelineConfig, *, progress: bool = True):
        self.cfg = cfg
        self.dir = run_dir_for(cfg)
        self.progress = progress
        self.stats: dict[str, StageStats] = {}
        self.stop_reason: str | None = None
        self.model: str | None = None

    def _bar(self, total: int | None, desc: str):
        return tqdm(
            total=total,
            desc=desc,
            unit="rec",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )

    def load_seeds(self) -> list[dict]:
        path = Path(self.cfg.generation.seeds_path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: seed file not found (generation.seeds_path)")
        return seeds.load_seed_records(enumerate_jsonl(path), str(path))

    # -- the run ------------------------------------------------------------------------------
    def execute(self) -> dict:
        cfg, g = self.cfg, self.cfg.generation
        self.dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.dir / "config.yaml")
        started = time.time()
        seed_records = self.load_seeds()
        s_stats = StageStats(stage="seeds")
        write_jsonl_atomic(
            self.dir / "00_seeds.jsonl", (s_stats.keep(r) for r in s_stats.admit(seed_records))
        )
        self.stats["seeds"] = s_stats
        pool = seeds.pool_for_mode(seed_records, g.mode)

        self.engine = engine = engine_for(cfg)
        cache = engine.response_cache(self.dir) if cfg.llm.cache else None
        usage = UsageMeter(prices=cfg.llm.prices)
        kept: list[dict] = []
        finished = False
        with StageFiles(self.dir, g.mode) as files:
            try:
                with engine.open_client(cfg, cache=cache, usage=usage) as client:
                    self.model, self.api, self.embedded = (
                        client.model,
                        client.api,
                        client.embedded,
                    )
                    try:
                        if g.mode == "general":
                            self._general(client, pool, seed_records, files, kept)
                        else:
                            self._code(client, pool, seed_records, files, kept)
                        finished = True
                    except KeyboardInterrupt:
                        self.stop_reason = "interrupted"
                        client.abort()
                        raise
                    finally:
                        self.stop_reason = self.stop_reason or client.stop_reason
            finally:
                engine.close()
                if cache is not None:
                    cache.close()
                # Export whatever was kept, even on interruption or a fatal error: nothing is
                # lost.
                e_stats = files.stats("export", kept_file=False)
                t0 = time.perf_counter()
                write_export(self.dir, kept, cfg.export, e_stats, seed=g.seed, limit=g.num)
                e_stats.seconds = time.perf_counter() - t0
                self.stats["export"] = e_stats
        errors = books_errors(self.dir, g.mode, self.stats) if finished else []
        self._write_stats(usage, started, errors, checked=finished)
        from pipeline.card import strategy_funnel, write_card
        from stages.classify import label_balance

        # Per-strategy funnel and classification label balance, for the report and the card.
        self.stats_dict["by_strategy"] = strategy_funnel(self.dir, g.mode, list(self.stats))
        if balance := label_balance(kept[: g.num]):
            self.stats_dict["label_balance"] = balance
        write_json_atomic(self.dir / "stats.json", self.stats_dict)
        write_card(self.dir, self.stats_dict, kept[: g.num], g.mode)
        if errors:
            raise BooksError("the books do not balance: " + "; ".join(errors))
        return self.stats_dict

    def _stage(self, files: StageFiles, name: str) -> StageStats:
        self.stats[name] = files.stats(name)
        return self.stats[name]

    def _answer_mode(self) -> str:
        g = self.cfg.generation
        if g.answer_mode != "auto":
            return g.answer_mode
        return "chat" if self.embedded and self.api == "completion" else "inline"

    def _general(
        self,
        client: LLMClient,
        pool: list[dict],
        seed_records: list[dict],
        files: StageFiles,
        kept: list[dict],
    ) -> None:
        cfg, g = self.cfg, self.cfg.generation
        answer_mode = self.answer_mode = self._answer_mode()
        from stages import strategies

        # A mix of strategies (anything but plain alpaca) goes through stages.strategies.
        mix = g.strategy_mix() if g.strategy != "alpaca" else None
        answering = answer_mode == "chat" or bool(mix and set(mix) - {"alpaca"})
        names = (
            ["generate", "dedup"]
            + (["semdedup"] if cfg.semdedup.enabled else [])
            + (["classify"] if mix and "classification" in mix else [])
            + (["answer"] if answering else [])
            + ["filter"]
            + (["judge"] if cfg.judge.enabled else [])
        )
        if mix and "magpie" in mix:
            self._check_magpie()
        st = {name: self._stage(files, name) for name in names}
        deduper: dedup.Deduper | None = None
        semdeduper = self._semdeduper(client, seed_records, st)
        sent = round_no = 0
        clock = _Clock()
        with self._bar(g.num, "generate") as bar:
            while not client.stop_reason:
                n = generate.next_round_size(g, len(kept), sent)
                if n == 0:
                    break
                if mix:
                    reqs = strategies.round_requests(
                        sent, n, g, pool, prompts.render, self.api, model=client.model,
                        round_no=round_no, generated=kept, answer_mode=answer_mode,
                    )  # fmt: skip
                    parse = strategies.parse_replies
                else:
                    reqs = generate.round_requests(
                        sent, n, g, pool, prompts.render, self.api,
                        generated=kept, answer_mode=answer_mode,
                    )  # fmt: skip
                    parse = generate.parse_replies
                sent += n
                round_no += 1
                chain: Iterable[dict] = clock.wrap(
                    parse(
                        client.stream(reqs), st["generate"], require_output=answer_mode != "chat"
                    ),
                    st["generate"],
                )
                if deduper is None:
                    # The first round's records order the pool's tokens rare-first (speed only).
                    chain = list(chain)
                    sample = dedup.prime_sample(chain, cfg.dedup)
                    deduper = dedup.Deduper(cfg.dedup, against=seed_records, sample=sample)
                chain = clock.wrap(deduper.run(chain, st["dedup"]), st["dedup"])
                if semdeduper is not None:
                    chain = clock.wrap(semdeduper.run(chain, st["semdedup"]), st["semdedup"])
                if "classify" in st:
                    from stages import classify

                    chain = clock.wrap(
                        classify.run(
                            chain, client.stream, prompts.render, g.classification, g.seed,
                            g.top_p, st["classify"],
                        ),
                        st["classify"],
                    )  # fmt: skip
                if mix and answering:
                    chain = clock.wrap(
                        strategies.answer(
                            chain, client.stream, prompts.render, g, st["answer"],
                            answer_mode=answer_mode,
                        ),
                        st["answer"],
                    )  # fmt: skip
                elif answer_mode == "chat":
                    chain = clock.wrap(
                        generate.answer(chain, client.stream, prompts.render, g, st["answer"]),
                        st["answer"],
                    )
                chain = clock.wrap(
                    self.engine.filter(chain, cfg.filter, st["filter"]), st["filter"]
                )
                chain = self._judged(chain, client, st, clock)
                for rec in chain:
                    kept.append(rec)
                    bar.update(1)
                    bar.set_postfix(
                        requests=int(client.usage.total("requests")),
                        rejected=sum(s.rejected for s in st.values()),
                    )
        clock.charge()
        self._select(kept, files)
        if len(kept) < g.num and not client.stop_reason:
            self.stop_reason = "max_requests"

    def _semdeduper(self, client: LLMClient, seed_records: list[dict], st: dict):
        """The run's one semantic dedup pool (``semdedup.enabled``), primed with the seeds as
        ROUGE-L dedup's is (the seeds' embeddings charged to the stage's time), and kept across
        rounds; None when off."""
        sd = self.cfg.semdedup
        if not sd.enabled:
            return None
        from stages.semdedup import SemanticDeduper

        def embed(texts: list[str]) -> list[list[float] | None]:
            return client.embed(texts, sd.model, batch=sd.batch)

        t0 = time.perf_counter()
        semdeduper = SemanticDeduper(sd, embed, against=seed_records)
        st["semdedup"].seconds += time.perf_counter() - t0
        return semdeduper

    def _judged(self, chain: Iterable[dict], client: LLMClient, st: dict, clock: _Clock):
        """The judge stage on ``chain`` when ``judge.enabled``; its own endpoint or model when
        ``judge.base_url`` / ``judge.model`` name one."""
        j = self.cfg.judge
        if not j.enabled:
            return chain
        from stages import judge

        if not hasattr(self, "_judge_client"):
            self._judge_client = client
            if j.base_url or j.model:
                self._judge_client = LLMClient(
                    self.cfg.llm,
                    base_urls=[j.base_url] if j.base_url else client.base_urls,
                    model=j.model or client.model,
                    api_key=resolve_api_key(self.cfg.llm) if j.base_url else client._api_key,
                    cache=client.cache,
                    usage=client.usage,
                    api="chat",
                )
        return clock.wrap(
            judge.run(chain, self._judge_client.stream, prompts.render, j, st["judge"]),
            st["judge"],
        )

    def _select(self, kept: list[dict], files: StageFiles) -> None:
        """``judge.top_k``: the select stage over everything kept, once the rounds are done."""
        j = self.cfg.judge
        if not (j.enabled and j.top_k):
            return
        from stages import judge

        kept[:] = judge.select(kept, j, self._stage(files, "select"))

    def _oss_sources(self) -> list[tuple[str, list[str]]]:
        """OSS-Instruct's source files: ``generation.oss.source`` (a folder, walked with the
        ingest walker and its secret/vendored skipping, or one file), else the git checkout
        the run is started in."""
        import subprocess

        from pipeline.configlib import ConfigError
        from pipeline.walk import walk
        from stages import oss
        from stages.ingest import IngestConfig

        o = self.cfg.generation.oss
        if o.source:
            root = Path(o.source)
        else:
            top = subprocess.run(
                ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True
            )
            if top.returncode != 0:
                raise ConfigError(
                    "generation.strategy includes oss and generation.oss.source is empty, but "
                    f"{Path.cwd()} is not a git checkout: set generation.oss.source to a folder or file"
                )
            root = Path(top.stdout.strip())
        if root.is_file():
            files = [(root.name, root.read_text(encoding="utf-8", errors="replace"))]
        elif root.is_dir():
            files = [(d.path, d.text) for d in walk(root, IngestConfig(kind="repo")).documents]
        else:
            raise ConfigError(f"generation.oss.source={o.source!r}: no such file or folder")
        usable = oss.usable_sources(files, o)
        if not usable:
            raise ConfigError(
                f"generation.oss.source={o.source or str(root)!r}: no file ending in "
                f"{', '.join(o.suffixes)} to draw snippets from (generation.oss.suffixes)"
            )
        return usable

    def _contaminated(self):
        """HumanEval's n-gram matcher when the filter decontaminates, else none."""
        if not self.cfg.filter.decontaminate:
            return lambda _text: None
        from stages.decontam import humaneval_index

        return humaneval_index(self.cfg.filter.decontam_ngram).match

    def _check_magpie(self) -> None:
        """Magpie sends a raw completion: a chat-only endpoint cannot serve it."""
        from pipeline.configlib import ConfigError
        from stages import magpie

        if self.api != "completion":
            raise ConfigError(
                "generation.strategy includes magpie, which sends the chat template's prefix as a "
                f"raw completion (/v1/completions), but llm.api resolves to {self.api!r} for this "
                "endpoint: set llm.api=completion for an endpoint that serves raw completions "
                "(llama.cpp, vLLM); a chat-only endpoint (OpenAI) cannot run magpie"
            )
        try:
            magpie.family(self.cfg.generation.magpie, self.model or "")
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def _code(
        self,
        client: LLMClient,
        pool: list[dict],
        seed_records: list[dict],
        files: StageFiles,
        kept: list[dict],
    ) -> None:
        cfg, g = self.cfg, self.cfg.generation
        names = ["generate", "dedup"] + (["semdedup"] if cfg.semdedup.enabled else [])
        st = {name: self._stage(files, name) for name in (*names, "filter", "solve", "verify")}
        code_examples = [s for s in pool if s.get("tests")] or pool
        deduper = dedup.Deduper(cfg.dedup, against=seed_records)
        semdeduper = self._semdeduper(client, seed_records, st)
        from stages import strategies

        mix = g.strategy_mix() if g.strategy != "alpaca" else None
        if cfg.judge.enabled:
            st["judge"] = self._stage(files, "judge")
        snippets = self._oss_sources() if mix and "oss" in mix else None
        # Problems per request: an alpaca batch asks for tasks_per_request, the others for one.
        per_request = sum(
            share * (g.tasks_per_request if name == "alpaca" else 1)
            for name, share in (mix or {"alpaca": 1.0}).items()
        )
        sent = 0
        clock = _Clock()
        with self._bar(g.num, "code") as bar:
            for _round in range(g.code_rounds):
                wanted = g.num - len(kept)
                if wanted <= 0 or client.stop_reason:
                    break
                n_problems = max(1, math.ceil(wanted * g.code_overgenerate))
                n_req = max(1, math.ceil(n_problems / per_request))
                if mix:
                    reqs = strategies.round_requests(
                        sent, n_req, g, pool, prompts.render, self.api, model=client.model,
                        round_no=_round, generated=kept, snippets=snippets,
                        stats=st["generate"], contaminated=self._contaminated(),
                    )  # fmt: skip
                    parse = strategies.parse_replies
                else:
                    reqs = generate.round_requests(sent, n_req, g, pool, prompts.render, self.api)
                    parse = generate.parse_replies
                sent += n_req
                chain: Iterable[dict] = clock.wrap(
                    parse(client.stream(reqs), st["generate"], mode="code"), st["generate"]
                )
                chain = clock.wrap(deduper.run(chain, st["dedup"]), st["dedup"])
                if semdeduper is not None:
                    chain = clock.wrap(semdeduper.run(chain, st["semdedup"]), st["semdedup"])
                chain = clock.wrap(
                    self.engine.filter(chain, cfg.filter, st["filter"]), st["filter"]
                )
                chain = clock.wrap(
                    generate.solve(
                        chain, client.stream, prompts.render, g, code_examples, self.api,
                        st["solve"],
                    ),
                    st["solve"],
                )  # fmt: skip
                chain = clock.wrap(
                    self.engine.verify(chain, cfg.verify, st["verify"]), st["verify"]
                )
                chain = self._judged(chain, client, st, clock)
                for rec in chain:
                    kept.append(rec)
                    bar.update(1)
        clock.charge()
        self._select(kept, files)
        if len(kept) < g.num and not client.stop_reason:
            self.stop_reason = "max_rounds"

    def _write_stats(
        self, usage: UsageMeter, started: float, errors: list[str], *, checked: bool = True
    ) -> None:
        llm = usage.to_dict()
        n_kept = self.stats["export"].kept
        per = {
            k: (round(llm[k] / n_kept, 6) if n_kept else None)
            for k in ("prompt_tokens", "completion_tokens", "cost")
        }
        self.stats_dict = {
            "run": self.dir.name,
            "mode": self.cfg.generation.mode,
            "model": self.model,
            "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
            "wall_seconds": round(time.time() - started, 3),
            "stopped_reason": self.stop_reason,
            "kept": n_kept,
            # An interrupted run's books are not checked: it stopped mid-stage by design.
            "books": (errors or "balanced") if checked else "not checked",
            "stages": {name: s.to_dict() for name, s in self.stats.items()},
            "llm": llm,
            "per_kept_record": per,
        }
        write_json_atomic(self.dir / "stats.json", self.stats_dict)

    def summary(self) -> str:
        d = self.stats_dict
        llm = d["llm"]
        lines = [
            summary_table(self.stats),
            "",
            f"run {d['run']}: {d['kept']} records in {self.dir / 'data.json'}"
            + (f" (stopped: {d['stopped_reason']})" if d["stopped_reason"] else ""),
            f"requests {llm['requests']} ({llm['cached']} from cache, {llm['failed']} failed), tokens {llm['prompt_tokens']} prompt + {llm['completion_tokens']} completion, cost ${llm['cost']:.4f}, {d['wall_seconds']:.1f}s",
        ]
        v = self.stats.get("verify")
        if v is not None:
            ran, passed = v.extra.get("candidates_run", 0), v.extra.get("candidates_passed", 0)
            rate = f"{passed / ran:.1%}" if ran else "n/a"
            lines.append(
                f"code: {v.total} problems verified, {ran} candidates run, {passed} passed ({rate}), {v.kept} records kept with their passing candidate (in 04_verify.jsonl)"
            )
        return "\n".join(lines)
