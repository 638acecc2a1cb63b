"""Where the stages run: :class:`LocalEngine` (this process; the reference) or :class:`RayEngine`
(a Ray cluster), chosen by ``engine.kind``. Both run the same stage operators of :mod:`stages`;
the Ray engine wraps them, it does not restate them.

What each engine provides to the run (:mod:`pipeline.run`) and to the stage commands
(:mod:`pipeline.cli`):

- ``open_client(cfg, cache, usage)``: the LLM as a stage sees it (``stream``, in request order);
- ``response_cache(run_dir)``: where answers are kept;
- ``filter`` / ``verify`` / ``dedup``: the stages, same signatures as the stage modules' ``run``.

On Ray (and why each piece is what it is):

- **Prompts, ids and the order of everything** stay on the driver: requests are built from the
  seeded RNG there, answers come back in request order, and every kept or rejected record is
  written by the driver, in input order, through the stage's :class:`StageStats`. A remote
  stage returns its decisions and the driver replays them (``keep`` / ``drop``), so the stage
  files, the books and ``data.json`` are the local engine's, byte for byte.
- **Generation: a pool of async client actors** (state that outlives a batch: HTTP clients, the
  adaptive concurrency limiter that backs off on 429, rate limiters). Each actor owns an
  :class:`pipeline.llm.LLMClient` over its share of ``llm.base_urls`` with ``llm.concurrency``
  requests in flight; the driver sends chunks of ``engine.request_chunk`` requests to actor
  ``chunk % n``. Every actor reads and writes the one :class:`pipeline.cache.DirCache`, so a
  request is keyed exactly as on the local engine and is never paid twice.
- **Filters (and the decontamination inside them): stateless Ray tasks** over ordered batches;
  there is nothing to keep between batches but compiled regexes and the n-gram index, which a
  worker process keeps in its module caches.
- **Verify: a pool of sandbox actors**, each running ``verify.run`` over a long-lived feed, so
  its :class:`stages.execution.Sandbox` workers stay warm from batch to batch; an actor asks Ray
  for as many CPUs as it runs sandbox workers. When an actor or its node dies, its batch is
  resubmitted to a fresh actor, which Ray places on a node that is still alive.
- **Dedup (``pipeline dedup``): the phases of :mod:`stages.dedup_pairs` as Ray tasks**:
  tokenize/count and encode per partition, candidate pairs and their scores per slice of each
  block against replicas of the prefix index; tasks merge the counts, fix the token order and
  concatenate the encoded corpus in the object store; the driver resolves the greedy order in
  one pass over each block's edges and reads the input twice (texts out, then the write-back)
  rather than hold its records. Inside ``generate`` the dedup pool is a stream that outlives
  every round, and stays on the driver.

Ray is optional (``pip install -e '.[ray]'``) and imported only when the Ray engine starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline.llm import LLMClient, ResponseCache, UsageMeter, resolve_api_key
from stages.base import Failure, Request, Response, StageStats

log = logging.getLogger("pipeline.engine")

RAY_MISSING = "engine.kind=ray needs Ray: pip install -e '.[ray]' (installs ray[data]); or use engine.kind=local"


def engine_for(cfg) -> LocalEngine | RayEngine:
    """The engine ``cfg.engine.kind`` names (``cfg`` a :class:`PipelineConfig`)."""
    return RayEngine(cfg.engine) if cfg.engine.kind == "ray" else LocalEngine()


# -- the local engine ------------------------------------------------------------------------
class LocalEngine:
    """Everything in this process: the stage modules called directly."""

    kind = "local"

    def response_cache(self, run_dir: Path) -> ResponseCache:
        return ResponseCache(Path(run_dir) / "cache" / "responses.jsonl")

    @contextlib.contextmanager
    def open_client(self, cfg, *, cache=None, usage: UsageMeter | None = None):
        from pipeline.run import open_client

        with open_client(cfg, cache=cache, usage=usage) as client:
            yield client

    def filter(self, records: Iterable[dict], cfg, stats: StageStats) -> Iterator[dict]:
        from stages import filters

        return filters.run(records, cfg, stats)

    def verify(self, records: Iterable[dict], cfg, stats: StageStats) -> Iterator[dict]:
        from stages import verify

        return verify.run(records, cfg, stats)

    def dedup(
        self, records: Iterable[dict], cfg, stats: StageStats, against: Iterable[dict] = ()
    ) -> Iterator[dict]:
        from stages import dedup

        return dedup.run(records, cfg, stats, against=against)

    def close(self) -> None:
        pass


# -- decisions made remotely, replayed on the driver -----------------------------------------
class _Collect:
    """Sinks that record a stage's decisions in order: ("keep", record) or ("drop", record with
    its ``reject``)."""

    def __init__(self, stage: str):
        self.out: list[tuple[str, dict]] = []
        self.stats = StageStats(
            stage=stage,
            sink=lambda r: self.out.append(("drop", r)),
            kept_sink=lambda r: self.out.append(("keep", r)),
        )


def _replay(
    decisions: list[tuple[str, dict]], batch: list[dict], stats: StageStats
) -> Iterator[dict]:
    """Enter ``batch`` into the driver's books and write each decision through its sinks, in
    order (the records a remote stage decided on are exactly ``batch``)."""
    for _ in stats.admit(batch):
        pass
    for verb, rec in decisions:
        if verb == "keep":
            yield stats.keep(rec)
        else:
            detail = dict(rec["reject"])
            detail.pop("stage", None)
            reason = detail.pop("reason")
            stats.drop({k: v for k, v in rec.items() if k != "reject"}, reason, **detail)


def _batches(records: Iterable[dict], size: int) -> Iterator[list[dict]]:
    it = iter(records)
    while batch := list(itertools.islice(it, size)):
        yield batch


# -- the Ray engine --------------------------------------------------------------------------
def _ray():
    try:
        import ray
    except ImportError as e:
        from pipeline.configlib import ConfigError

        raise ConfigError(RAY_MISSING) from e
    return ray


class _Pool:
    """A fixed number of actor slots; a call whose actor (or node) died is resubmitted to a
    fresh actor in that slot, up to ``retries`` times. Results are taken in submission order."""

    def __init__(self, make: Callable[[int], Any], size: int, retries: int):
        self.make, self.retries = make, retries
        self.actors = [make(i) for i in range(size)]

    def submit(self, slot: int, method: str, *args) -> tuple:
        actor = self.actors[slot]
        return (slot, method, args, actor, getattr(actor, method).remote(*args))

    def get(self, call: tuple):
        ray = _ray()
        slot, method, args, actor, ref = call
        lost = (
            ray.exceptions.RayActorError,
            ray.exceptions.ObjectLostError,
            ray.exceptions.ActorUnavailableError,
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
        )
        for attempt in range(self.retries + 1):
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if isinstance(e.cause, BaseException) else None
                if cause is not None and not isinstance(cause, lost):
                    raise cause from None
                err: BaseException = e
            except lost as e:
                err = e
            if attempt == self.retries:
                raise RuntimeError(f"a Ray actor died {attempt + 1} times on one batch: {err}")
            log.warning("actor %d lost (%s); resubmitting its batch to a fresh actor", slot, err)
            if self.actors[slot] is actor:  # not yet replaced by an earlier batch's failure
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
                self.actors[slot] = self.make(slot)
            actor = self.actors[slot]
            ref = getattr(actor, method).remote(*args)
        raise AssertionError("unreachable")

    def close(self) -> None:
        ray = _ray()
        for a in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)


def _ordered(calls: Iterable[Any], get: Callable[[Any], Any], window: int) -> Iterator[Any]:
    """Keep up to ``window`` submitted calls in flight; yield their results in submission order."""
    pending: deque = deque()
    for call in calls:
        pending.append(call)
        if len(pending) >= window:
            yield get(pending.popleft())
    while pending:
        yield get(pending.popleft())


class _ClientActor:
    """One share of the endpoints: an :class:`LLMClient` with its own bounded concurrency,
    backoff on 429 and rate limits, writing to the shared cache."""

    def __init__(self, llm_cfg, base_urls, model, api, api_key, cache):
        from pipeline.llm import AdaptiveLimiter, RateLimiter

        self.client = LLMClient(
            llm_cfg, base_urls=base_urls, model=model, api_key=api_key, cache=cache, api=api
        )
        self._limits = lambda: (
            self.client._clients(),
            AdaptiveLimiter(llm_cfg.concurrency, llm_cfg.min_concurrency),
            RateLimiter(llm_cfg.requests_per_minute),
            RateLimiter(llm_cfg.tokens_per_minute),
        )
        self._state = None

    async def answer(self, start: int, requests: list[Request]) -> list[Response | Failure]:
        import asyncio

        if self._state is None:
            self._state = self._limits()
        clients, limiter, rpm, tpm = self._state
        return list(
            await asyncio.gather(
                *(
                    self.client._complete(clients, start + k, r, limiter, rpm, tpm)
                    for k, r in enumerate(requests)
                )
            )
        )

    def node(self) -> str:
        return _ray().get_runtime_context().get_node_id()


class RayClient:
    """The LLM over a pool of client actors, as the run sees a client: ``stream`` (answers in
    request order), ``usage`` (counted on the driver), ``stop_reason``, ``abort``."""

    def __init__(self, engine: RayEngine, cfg, base_urls, model, api, embedded, cache, usage):
        ray = _ray()
        self.cfg, self.engine = cfg.llm, engine
        self.model, self.api, self.embedded = model, api, embedded
        self.usage = usage or UsageMeter(prices=cfg.llm.prices)
        # Budget checks on the driver, where every answer is counted (none is sent from here).
        self._budget = LLMClient(
            cfg.llm, base_urls=base_urls, model=model, api_key=None, usage=self.usage, api=api
        )
        n = engine.cfg.client_actors or len(base_urls)
        key = None if embedded else resolve_api_key(cfg.llm)
        share = (
            cfg.llm
            if n == 1
            else dataclasses.replace(
                cfg.llm,
                requests_per_minute=cfg.llm.requests_per_minute / n,
                tokens_per_minute=cfg.llm.tokens_per_minute / n,
            )
        )
        opts: dict = {"num_cpus": 0, "max_concurrency": max(4, 2 * cfg.llm.concurrency)}
        if embedded:
            # The embedded server listens on this machine's loopback only.
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = ray.get_runtime_context().get_node_id()
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(here, soft=False)
        Actor = ray.remote(_ClientActor)

        def make(i: int):
            urls = base_urls[i::n] if n <= len(base_urls) else [base_urls[i % len(base_urls)]]
            return Actor.options(**opts).remote(share, urls, model, api, key, cache)

        self.pool = _Pool(make, n, engine.cfg.retries)
        self.stop_reason: str | None = None
        self._abort = threading.Event()
        # Embeddings (the semdedup stage, whose pool stays on the driver like dedup's) are sent
        # from the driver, through the same cache.
        self._embedder = LLMClient(
            cfg.llm, base_urls=base_urls, model=model, api_key=key, cache=cache,
            usage=self.usage, api=api,
        )  # fmt: skip

    def budget_left(self) -> bool:
        ok = self._budget.budget_left()
        if not ok:
            self.stop_reason = "budget"
        return ok

    def stream(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Response | Failure]]:
        """Answer ``requests`` in chunks over the actor pool; yield ``(request, answer)`` in
        request order, one answer per request (see :meth:`LLMClient.stream`)."""
        chunk = self.engine.cfg.request_chunk
        n = len(self.pool.actors)
        # Enough chunks in flight to keep every actor's concurrency busy, and no more.
        window = n * max(2, math.ceil(2 * self.cfg.concurrency / chunk))
        start = 0

        def calls() -> Iterator[tuple]:
            nonlocal start
            for c, reqs in enumerate(_batches(requests, chunk)):
                if self._abort.is_set():
                    return
                if not self.budget_left():
                    yield (reqs, None)
                else:
                    bare = [dataclasses.replace(r, tag=None) for r in reqs]
                    yield (reqs, self.pool.submit(c % n, "answer", start, bare))
                start += len(reqs)

        def get(item):
            reqs, call = item
            if call is None:
                return reqs, [Failure("budget exhausted", kind="budget_exhausted")] * len(reqs)
            return reqs, self.pool.get(call)

        for reqs, answers in _ordered(calls(), get, window):
            for req, ans in zip(reqs, answers, strict=True):
                if isinstance(ans, Response):
                    self.usage.add(req.kind, ans)
                elif ans.kind == "request_failed":
                    self.usage.fail(req.kind)
                yield req, ans

    def embed(self, texts: list[str], model: str | None = None, **kw) -> list[list[float] | None]:
        return self._embedder.embed(texts, model, **kw)

    def abort(self) -> None:
        self._abort.set()

    def complete_all(self, requests: Iterable[Request]) -> list[tuple[Request, Response | Failure]]:
        return list(self.stream(requests))

    def close(self) -> None:
        self.pool.close()


def _filter_batch(batch: list[dict], cfg) -> list[tuple[str, dict]]:
    from stages import filters

    col = _Collect("filter")
    for _ in filters.run(batch, cfg, col.stats):
        pass
    return col.out


class _SandboxActor:
    """One ``verify.run`` kept open over a feed of batches, so that its sandbox workers stay
    warm from one batch to the next. Batches arrive one at a time (``max_concurrency=1``)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.feed: queue.Queue = queue.Queue()
        self.col = _Collect("verify")
        self.done = threading.Condition()
        for name in ("sink", "kept_sink"):
            setattr(self.col.stats, name, self._notifying(getattr(self.col.stats, name)))
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def _notifying(self, sink: Callable[[dict], None]) -> Callable[[dict], None]:
        def write(rec: dict) -> None:
            with self.done:
                sink(rec)
                self.done.notify_all()

        return write

    def _records(self) -> Iterator[dict]:
        while (rec := self.feed.get()) is not None:
            yield rec

    def _drive(self) -> None:
        from stages import verify

        try:
            for _ in verify.run(self._records(), self.cfg, self.col.stats):
                pass
        except BaseException as e:  # handed to the caller of run()
            self.error = e
        with self.done:
            self.done.notify_all()

    def run(self, batch: list[dict]) -> tuple[list[tuple[str, dict]], Counter]:
        from stages import verify

        if len(batch) < self.cfg.batch:
            # A short (last) batch would wait in the open run for records that never come.
            col = _Collect("verify")
            for _ in verify.run(batch, self.cfg, col.stats):
                pass
            return col.out, col.stats.extra
        if self.thread is None:
            self.thread = threading.Thread(target=self._drive, daemon=True)
            self.thread.start()
        extra_before = Counter(self.col.stats.extra)
        self.col.out = []
        for rec in batch:
            self.feed.put(rec)
        with self.done:
            while len(self.col.out) < len(batch):
                if self.error is not None:
                    raise self.error
                self.done.wait(timeout=1.0)
        out, self.col.out = self.col.out, []
        return out, self.col.stats.extra - extra_before

    def node(self) -> str:
        return _ray().get_runtime_context().get_node_id()


class RayEngine:
    """The stages as Ray operators over a cluster (see the module doc)."""

    kind = "ray"

    def __init__(self, cfg):
        self.cfg = cfg
        ray = _ray()
        if not ray.is_initialized():
            if cfg.address == "auto":
                try:
                    ray.init(address="auto", log_to_driver=False)
                except ConnectionError:
                    ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=cfg.address, log_to_driver=False)
        self._verify_pool: _Pool | None = None
        self._verify_cfg = None
        self._clients: list[RayClient] = []

    # -- the LLM and its cache ----------------------------------------------------------------
    def response_cache(self, run_dir: Path):
        from pipeline.cache import DirCache

        run_dir = Path(run_dir).resolve()
        root = self.cfg.cache_dir or str(run_dir / "cache" / "responses")
        return DirCache(root, journal=run_dir / "cache" / "responses.jsonl")

    @contextlib.contextmanager
    def open_client(self, cfg, *, cache=None, usage: UsageMeter | None = None):
        from pipeline.run import open_endpoint

        with open_endpoint(cfg) as (base_urls, model, api, embedded):
            client = RayClient(self, cfg, base_urls, model, api, embedded, cache, usage)
            self._clients.append(client)
            try:
                yield client
            finally:
                client.close()

    # -- stateless stages ---------------------------------------------------------------------
    def filter(self, records: Iterable[dict], cfg, stats: StageStats) -> Iterator[dict]:
        ray = _ray()
        task = ray.remote(_filter_batch)
        cfg_ref = ray.put(cfg)
        window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        calls = ((b, task.remote(b, cfg_ref)) for b in _batches(records, self.cfg.map_batch))
        for batch, decisions in _ordered(calls, lambda c: (c[0], ray.get(c[1])), window):
            yield from _replay(decisions, batch, stats)

    # -- verify -------------------------------------------------------------------------------
    def _verify_actors(self, cfg) -> _Pool:
        if self._verify_pool is None or self._verify_cfg != cfg:
            if self._verify_pool is not None:
                self._verify_pool.close()
            ray = _ray()
            workers = cfg.workers or 1
            Actor = ray.remote(_SandboxActor).options(
                num_cpus=workers, max_restarts=0, scheduling_strategy="SPREAD"
            )
            self._verify_pool = _Pool(
                lambda _i: Actor.remote(dataclasses.replace(cfg, workers=workers)),
                max(1, self.cfg.verify_actors),
                self.cfg.retries,
            )
            self._verify_cfg = cfg
        return self._verify_pool

    def verify_nodes(self) -> list[str]:
        """The node of each sandbox actor (for operators and the node-loss test)."""
        if self._verify_pool is None:
            return []
        ray = _ray()
        return ray.get([a.node.remote() for a in self._verify_pool.actors])

    def verify(self, records: Iterable[dict], cfg, stats: StageStats) -> Iterator[dict]:
        pool = self._verify_actors(cfg)
        n = len(pool.actors)
        calls = (
            (b, pool.submit(k % n, "run", b)) for k, b in enumerate(_batches(records, cfg.batch))
        )
        for batch, (decisions, extra) in _ordered(calls, lambda c: (c[0], pool.get(c[1])), 2 * n):
            stats.extra.update(extra)
            yield from _replay(decisions, batch, stats)

    # -- dedup --------------------------------------------------------------------------------
    def dedup(
        self, records: Iterable[dict], cfg, stats: StageStats, against: Iterable[dict] = ()
    ) -> Iterator[dict]:
        from stages import dedup

        if cfg.method != "exact":
            log.warning("dedup.method=%s runs on the driver on the Ray engine", cfg.method)
            yield from dedup.run(records, cfg, stats, against=against)
            return
        from pipeline import ray_dedup

        yield from ray_dedup.run(self, records, cfg, stats, against)

    def close(self) -> None:
        if self._verify_pool is not None:
            self._verify_pool.close()
            self._verify_pool = None


@contextlib.contextmanager
def opened(cfg):
    """The engine of ``cfg``, closed (its actors released) on exit."""
    engine = engine_for(cfg)
    try:
        yield engine
    finally:
        engine.close()


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (tests and benchmarks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
