"""The whole run: seeds -> generate -> dedup -> filter -> (verify) -> export, each stage writing
its JSONL file (and ``.rejected.jsonl``) in the run directory.

Resume: every model answer is journaled in ``cache/responses.jsonl`` the moment it arrives, and
request ids and prompts are deterministic (seeded per request index). Running the same command
again therefore rewrites the stage files from scratch, replaying answered requests from the cache
at no cost, and carries on from where the killed run stopped. Answers are processed in request
order, so a resumed run makes exactly the decisions an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from pipeline.config import PipelineConfig, save_config
from pipeline.llm import (
    Failure,
    LLMClient,
    Request,
    Response,
    ResponseCache,
    UsageMeter,
    resolve_api_key,
)
from pipeline.records import JsonlWriter, enumerate_jsonl, write_json_atomic, write_jsonl_atomic
from pipeline.stats import StageStats, summary_table
from stages import dedup, export, filters, generate, seeds

log = logging.getLogger("pipeline")

STAGE_FILES = {
    "seeds": "00_seeds",
    "generate": "01_generated",
    "dedup": "02_dedup",
    "filter": "03_filter",
    "verify": "04_verify",
}


def run_dir_for(cfg: PipelineConfig) -> Path:
    name = cfg.run or f"{cfg.generation.mode}-n{cfg.generation.num}-s{cfg.generation.seed}"
    return Path(cfg.output_dir) / name


class StageFiles:
    """The kept and rejected JSONL writers of every stage, truncated at the start of a run."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.writers: dict[str, JsonlWriter] = {}

    def kept(self, stage: str) -> JsonlWriter:
        return self._get(f"{STAGE_FILES[stage]}.jsonl")

    def rejected(self, stage: str) -> JsonlWriter:
        return self._get(f"{STAGE_FILES[stage]}.rejected.jsonl")

    def _get(self, name: str) -> JsonlWriter:
        if name not in self.writers:
            self.writers[name] = JsonlWriter(self.run_dir / name, append=False)
        return self.writers[name]

    def stats(self, stage: str) -> StageStats:
        return StageStats(stage=stage, sink=self.rejected(stage).write)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def tee(records: Iterable[dict], writer: JsonlWriter) -> Iterator[dict]:
    for r in records:
        writer.write(r)
        yield r


def timed(records: Iterable[dict], stats: StageStats) -> Iterator[dict]:
    """Charge the time spent producing each record to ``stats.seconds``."""
    it = iter(records)
    while True:
        t0 = time.perf_counter()
        try:
            r = next(it)
        except StopIteration:
            stats.seconds += time.perf_counter() - t0
            return
        stats.seconds += time.perf_counter() - t0
        yield r


def dedup_stream(
    records: Iterable[dict], cfg, stats: StageStats, against: list[dict]
) -> Iterator[dict]:
    """One record at a time through the dedup pool, so nothing is read ahead of the LLM stream."""
    deduper = dedup.Deduper(cfg, against=against)
    for rec in records:
        stats.total += 1
        reason, detail = deduper.check(rec)
        if reason:
            stats.drop(rec, reason, **detail)
            continue
        stats.kept += 1
        yield rec


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
        cfg.llm.embedded_model, threads=cfg.llm.embedded_threads, ctx=cfg.llm.embedded_ctx
    )
    log.info(
        "starting the embedded model server (%s, %d threads)", srv.model_path.name, srv.threads
    )
    with srv:
        yield (
            [srv.base_url],
            cfg.llm.model or srv.model_name,
            ("completion" if cfg.llm.api == "auto" else cfg.llm.api),
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


class Run:
    """One pipeline run over a run directory. ``execute()`` returns the stats dict."""

    def __init__(self, cfg: PipelineConfig, *, progress: bool = True):
        self.cfg = cfg
        self.dir = run_dir_for(cfg)
        self.progress = progress
        self.stats: dict[str, StageStats] = {}
        self.stop_reason: str | None = None

    # -- helpers ------------------------------------------------------------------------------
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
        records = seeds.load_seed_records(enumerate_jsonl(path), str(path))
        return records

    # -- the run ------------------------------------------------------------------------------
    def execute(self) -> dict:
        cfg = self.cfg
        self.dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.dir / "config.yaml")
        started = time.time()
        seed_records = self.load_seeds()
        s_stats = StageStats(stage="seeds", total=len(seed_records), kept=len(seed_records))
        write_jsonl_atomic(self.dir / "00_seeds.jsonl", seed_records)
        self.stats["seeds"] = s_stats
        pool = seeds.pool_for_mode(seed_records, cfg.generation.mode)

        files = StageFiles(self.dir)
        cache = ResponseCache(self.dir / "cache" / "responses.jsonl") if cfg.llm.cache else None
        usage = UsageMeter(prices=cfg.llm.prices)
        kept: list[dict] = []
        try:
            with open_client(cfg, cache=cache, usage=usage) as client:
                self.model, self.api, self.embedded = client.model, client.api, client.embedded
                try:
                    if cfg.generation.mode == "general":
                        kept = self._general(client, pool, seed_records, files)
                    else:
                        kept = self._code(client, pool, seed_records, files)
                except KeyboardInterrupt:
                    self.stop_reason = "interrupted"
                    raise
                finally:
                    self.stop_reason = self.stop_reason or client.stop_reason
        finally:
            files.close()
            if cache is not None:
                cache.close()
            # Export whatever was kept, even on interruption or a fatal error: nothing is lost.
            self._export(kept)
            self._write_stats(usage, started, len(kept))
        return self.stats_dict

    def _general(
        self, client: LLMClient, pool: list[dict], seed_records: list[dict], files: StageFiles
    ) -> list[dict]:
        g = self.cfg.generation
        gen_stats, d_stats, f_stats = (
            files.stats("generate"),
            files.stats("dedup"),
            files.stats("filter"),
        )
        self.stats.update(generate=gen_stats, dedup=d_stats, filter=f_stats)
        kept: list[dict] = []
        max_requests = g.max_requests or 50 * g.num
        self.answer_mode = (
            g.answer_mode if g.answer_mode != "auto" else ("chat" if self.embedded else "inline")
        )

        def requests() -> Iterator[Request]:
            for i in range(max_requests):
                rng = random.Random(f"{g.seed}:general:{i}")
                examples = seeds.sample_seeds(pool, g.num_prompt_tasks, rng, kept, g.mix_generated)
                template, text = generate.general_prompt(examples, g.tasks_per_request, self.api)
                # A per-request sampling seed makes runs reproducible where the server honours it.
                params = {
                    "temperature": g.temperature,
                    "top_p": g.top_p,
                    "max_tokens": g.max_tokens,
                    "seed": g.seed * 100003 + i,
                }
                if self.api == "completion":
                    # One stop marker past the asked-for batch keeps a base-style model from rambling.
                    params["stop"] = [f"Task {len(examples) + g.tasks_per_request + 1}"]
                    if self.answer_mode == "chat":
                        # The output is asked for separately: stop at the first "Output:" and
                        # spend no tokens on an answer that would be thrown away.
                        params["stop"] = ["Output:", f"\nTask {len(examples) + 2}"]
                        params["max_tokens"] = min(g.max_tokens, 160)
                yield self._batch_request(i, "Task", examples, template, text, params)

        def parsed() -> Iterator[dict]:
            for i, (req, resp) in enumerate(client.stream(requests())):
                yield from self._reply_records(
                    i, req, resp, gen_stats, require_output=self.answer_mode != "chat"
                )

        # Each timer measures the time to pull one record through its step, which includes every
        # step upstream of it; the exclusive share of each step is the difference.
        timers = [StageStats(), StageStats(), StageStats(), StageStats()]
        chain = tee(timed(parsed(), timers[0]), files.kept("generate"))
        chain = tee(
            timed(dedup_stream(chain, self.cfg.dedup, d_stats, seed_records), timers[1]),
            files.kept("dedup"),
        )
        chain = timed(
            self._answer_with_chat(client, chain, gen_stats)
            if self.answer_mode == "chat"
            else chain,
            timers[2],
        )
        chain = tee(
            timed(filters.run(chain, self.cfg.filter, f_stats), timers[3]), files.kept("filter")
        )
        with self._bar(g.num, "generate") as bar:
            try:
                for rec in chain:
                    kept.append(rec)
                    bar.update(1)
                    bar.set_postfix(
                        requests=int(client.usage.total("requests")),
                        rejected=gen_stats.rejected + d_stats.rejected + f_stats.rejected,
                    )
                    if len(kept) >= g.num:
                        break
            except KeyboardInterrupt:
                client.abort()
                raise
            finally:
                chain.close()
        t = [x.seconds for x in timers]
        gen_stats.seconds = t[0] + max(0.0, t[2] - t[1])  # answering is part of generation
        d_stats.seconds = max(0.0, t[1] - t[0])
        f_stats.seconds = max(0.0, t[3] - t[2])
        if len(kept) < g.num and not client.stop_reason:
            self.stop_reason = "max_requests"
        return kept

    def _batch_request(
        self, i: int, header: str, examples: list[dict], template: str, text: str, params: dict
    ) -> Request:
        """Batch request ``i`` (new tasks or problems) for the endpoint's API. A completion
        prompt ends inside the next block, so its reply is parsed with that header in front."""
        if self.api == "completion":
            req = Request(kind="generate", prompt=text, params=params, sample=i)
        else:
            req = Request(
                kind="generate",
                messages=[{"role": "user", "content": text}],
                params=params,
                sample=i,
            )
        prefix = f"{header} {len(examples) + 1}\nInstruction:" if self.api == "completion" else ""
        req.tag = {
            "template": template,
            "seeds": [e["id"] for e in examples],
            "index": i,
            "prefix": prefix,
        }
        return req

    def _reply_records(
        self,
        i: int,
        req: Request,
        resp: Response | Failure,
        gen_stats: StageStats,
        *,
        mode: str = "general",
        require_output: bool = True,
    ) -> Iterator[dict]:
        """Records parsed from the answer to batch request ``i`` (a failed request is a reject)."""
        if isinstance(resp, Failure):
            gen_stats.total += 1
            gen_stats.drop(
                {"id": f"g{i}", "meta": {"request": i, "error": resp.error}}, "request_failed"
            )
            return
        meta = {
            "template": req.tag["template"],
            "seeds": req.tag["seeds"],
            "model": resp.model,
            "request_id": resp.request_id,
            "usage": {
                "prompt_tokens": resp.prompt_tokens,
                "completion_tokens": resp.completion_tokens,
            },
            "cached": resp.cached,
        }
        yield from generate.records_from_reply(
            resp.text,
            request_index=i,
            finish_reason=resp.finish_reason,
            meta=meta,
            stats=gen_stats,
            mode=mode,
            prefix=req.tag["prefix"],
            require_output=require_output,
        )

    def _answer_with_chat(
        self, client: LLMClient, records: Iterable[dict], gen_stats: StageStats
    ) -> Iterator[dict]:
        """Self-Instruct's second step: ask the chat endpoint to answer each new instruction
        (with its input) and use that as the output. Small instruction-tuned models answer far
        better in chat than they continue a few-shot block."""
        g = self.cfg.generation

        def requests() -> Iterator[Request]:
            for rec in records:
                text = generate.answer_prompt(rec)
                params = {
                    "temperature": g.answer_temperature,
                    "top_p": g.top_p,
                    "max_tokens": g.max_tokens,
                    "seed": g.seed,
                }
                yield Request(
                    kind="answer",
                    messages=[{"role": "user", "content": text}],
                    params=params,
                    tag=rec,
                    api="chat",
                )

        for req, resp in client.stream(requests()):
            rec = req.tag
            if isinstance(resp, Failure):
                gen_stats.drop(
                    {**rec, "meta": {**rec["meta"], "error": resp.error}}, "request_failed"
                )
                continue
            meta = {
                **rec["meta"],
                "inline_output": rec.get("output", ""),
                "answer": {
                    "finish_reason": resp.finish_reason,
                    "request_id": resp.request_id,
                    "usage": {
                        "prompt_tokens": resp.prompt_tokens,
                        "completion_tokens": resp.completion_tokens,
                    },
                },
                "finish_reason": resp.finish_reason,
            }
            yield {**rec, "output": resp.text.strip(), "meta": meta}

    def _code(
        self, client: LLMClient, pool: list[dict], seed_records: list[dict], files: StageFiles
    ) -> list[dict]:
        from stages import verify

        g = self.cfg.generation
        gen_stats, d_stats, f_stats, v_stats = (
            files.stats(s) for s in ("generate", "dedup", "filter", "verify")
        )
        self.stats.update(generate=gen_stats, dedup=d_stats, filter=f_stats, verify=v_stats)
        for stage in ("generate", "dedup", "filter", "verify"):
            files.kept(stage)  # every stage file exists, even when a stage keeps nothing
        code_examples = [s for s in pool if s.get("tests")] or pool
        deduper = dedup.Deduper(self.cfg.dedup, against=seed_records)
        kept: list[dict] = []
        next_request = itertools.count()
        for round_no in range(g.code_rounds):
            wanted = g.num - len(kept)
            if wanted <= 0 or client.stop_reason:
                break
            n_problems = max(1, math.ceil(wanted * g.code_overgenerate))
            # 1. problems, through dedup and the instruction-side filters.
            problems: list[dict] = []
            n_req = max(1, math.ceil(n_problems / g.tasks_per_request))
            reqs = []
            for _ in range(n_req):
                i = next(next_request)
                rng = random.Random(f"{g.seed}:code:{i}")
                examples = seeds.sample_seeds(pool, g.num_prompt_tasks, rng)
                template, text = generate.code_problem_prompt(
                    examples, g.tasks_per_request, self.api
                )
                params = {
                    "temperature": g.temperature,
                    "top_p": g.top_p,
                    "max_tokens": min(g.max_tokens, 512),
                    "seed": g.seed * 100003 + i,
                }
                if self.api == "completion":
                    params["stop"] = [f"Problem {len(examples) + g.tasks_per_request + 1}"]
                reqs.append(self._batch_request(i, "Problem", examples, template, text, params))
            t0 = time.perf_counter()
            with self._bar(len(reqs), f"problems r{round_no}") as bar:
                for req, resp in client.stream(reqs):
                    bar.update(1)
                    for rec in self._reply_records(
                        req.tag["index"], req, resp, gen_stats, mode="code"
                    ):
                        files.kept("generate").write(rec)
                        d_stats.total += 1
                        reason, detail = deduper.check(rec)
                        if reason:
                            d_stats.drop(rec, reason, **detail)
                            continue
                        d_stats.kept += 1
                        files.kept("dedup").write(rec)
                        for ok in filters.run([rec], self.cfg.filter, f_stats):
                            files.kept("filter").write(ok)
                            problems.append(ok)
            gen_stats.seconds += time.perf_counter() - t0
            # 2. unit tests and k candidate solutions per problem, sampled in separate requests.
            t0 = time.perf_counter()
            prefix = "```python\n" if self.api == "completion" else ""
            sub: list[Request] = []
            for p in problems:
                ex = random.Random(f"{g.seed}:ex:{p['id']}").choice(code_examples)
                for s in range(g.num_test_samples):
                    _, text = generate.code_tests_prompt(p, ex, self.api)
                    sub.append(self._code_request("tests", text, s, p["id"]))
                for s in range(g.num_candidates):
                    _, text = generate.code_solution_prompt(p, ex, self.api)
                    sub.append(self._code_request("solutions", text, s, p["id"]))
            answers: dict[str, dict[str, list[str]]] = {
                p["id"]: {"tests": [], "solutions": []} for p in problems
            }
            with self._bar(len(sub), f"tests+solutions r{round_no}") as bar:
                for req, resp in client.stream(sub):
                    bar.update(1)
                    if isinstance(resp, Failure):
                        continue
                    answers[req.tag][req.kind].append(generate.extract_code(prefix + resp.text))
            gen_stats.seconds += time.perf_counter() - t0
            to_verify = []
            for p in problems:
                rec = generate.attach_code(
                    p, answers[p["id"]]["tests"], answers[p["id"]]["solutions"]
                )
                if not rec["tests"]:
                    v_stats.total += 1
                    v_stats.drop(rec, "no_tests")
                elif not rec["candidates"]:
                    v_stats.total += 1
                    v_stats.drop(rec, "no_candidates")
                else:
                    to_verify.append(rec)
            # 3. execution-verified selection in the sandbox.
            t0 = time.perf_counter()
            with self._bar(len(to_verify), f"verify r{round_no}") as bar:
                for rec in verify.run(to_verify, self.cfg.verify, v_stats):
                    bar.update(1)
                    files.kept("verify").write(rec)
                    kept.append(rec)
                    if len(kept) >= g.num:
                        break
            v_stats.seconds += time.perf_counter() - t0
        if len(kept) < g.num and not client.stop_reason:
            self.stop_reason = "max_rounds"
        return kept[: g.num]

    def _code_request(self, kind: str, text: str, sample: int, problem_id: str) -> Request:
        g = self.cfg.generation
        params = {
            "temperature": g.temperature,
            "top_p": g.top_p,
            "max_tokens": g.max_tokens,
            "seed": (g.seed * 100003 + sample * 7919 + sum(map(ord, problem_id))) % (2**31),
        }
        if self.api == "completion":
            params["stop"] = ["```", "### Problem"]
            req = Request(kind=kind, prompt=text.rstrip("\n") + "\n", params=params, sample=sample)
        else:
            req = Request(
                kind=kind,
                messages=[{"role": "user", "content": text}],
                params=params,
                sample=sample,
            )
        req.tag = problem_id
        return req

    def _export(self, kept: list[dict]) -> None:
        e_stats = StageStats(stage="export")
        t0 = time.perf_counter()
        rows = list(export.run(kept, e_stats))
        train, val = export.split(
            rows, self.cfg.export.validation_fraction, self.cfg.generation.seed
        )
        write_json_atomic(self.dir / "data.json", [export.to_alpaca(r) for r in train])
        write_jsonl_atomic(
            self.dir / "messages.jsonl",
            (export.to_messages(r, self.cfg.export.system_prompt) for r in train),
        )
        if val:
            write_json_atomic(self.dir / "data.validation.json", [export.to_alpaca(r) for r in val])
            write_jsonl_atomic(
                self.dir / "messages.validation.jsonl",
                (export.to_messages(r, self.cfg.export.system_prompt) for r in val),
            )
        if self.cfg.export.save_to_disk:
            import datasets

            splits = {"train": datasets.Dataset.from_list([export.to_alpaca(r) for r in train])}
            if val:
                splits["validation"] = datasets.Dataset.from_list(
                    [export.to_alpaca(r) for r in val]
                )
            datasets.DatasetDict(splits).save_to_disk(str(self.dir / "hf_dataset"))
        e_stats.seconds = time.perf_counter() - t0
        self.stats["export"] = e_stats

    def _write_stats(self, usage: UsageMeter, started: float, n_kept: int) -> None:
        llm = usage.to_dict()
        per = {
            k: (round(llm[k] / n_kept, 6) if n_kept else None)
            for k in ("prompt_tokens", "completion_tokens", "cost")
        }
        self.stats_dict = {
            "run": self.dir.name,
            "mode": self.cfg.generation.mode,
            "model": getattr(self, "model", None),
            "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
            "wall_seconds": round(time.time() - started, 3),
            "stopped_reason": self.stop_reason,
            "kept": n_kept,
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


def make_progress_callback() -> Callable[[str], None]:
    return lambda msg: tqdm.write(msg)
