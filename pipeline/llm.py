"""The only place that talks to a model: an async client over the ``openai`` package for any
OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp's server, TGI, Ollama).

What it does beyond one call:

- keeps a bounded, semaphore-style stream of requests in flight (no batch barriers), and yields
  answers in request order so that a run is deterministic whatever the timing;
- retries 429, 5xx, timeouts, dropped connections and garbage bodies with exponential backoff and
  jitter (``tenacity``), honouring ``Retry-After``; 400/401/403/404 end the run with a
  :class:`LLMFatalError` whose message never contains the key;
- shrinks the whole pool's concurrency when the endpoint answers 429 and grows it back while it
  recovers (additive increase, multiplicative decrease);
- optional requests-per-minute and tokens-per-minute limits for hosted APIs;
- an on-disk response cache keyed by the full request (model, messages/prompt, sampling params,
  sample index), journaled the moment each answer arrives, so a rerun pays nothing twice;
- token usage and cost per request kind, and a budget (``max_cost`` / ``max_tokens_total``) that
  stops issuing new requests cleanly;
- embeddings (:meth:`LLMClient.embed`, for the semdedup stage) through ``/v1/embeddings`` under
  the same retry policy, one cache entry per text; an endpoint without embeddings is a
  :class:`LLMFatalError` that names ``semdedup.enabled``.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
import queue
import random
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from pipeline.cache import read_journal
from pipeline.config import LLMConfig
from pipeline.errors import LLMFatalError
from pipeline.records import repair_tail
from stages.base import Failure, Request, Response

__all__ = ["Failure", "LLMClient", "Request", "Response", "ResponseCache", "UsageMeter"]


class BudgetExhausted(RuntimeError):
    """The configured cost or token budget is spent."""


class GarbageReply(RuntimeError):
    """The endpoint answered 200 with a body that holds no usable completion."""


class ResponseCache:
    """JSONL journal of answers keyed by request hash; loaded on open, appended (and flushed) the
    moment each answer arrives. A torn last line from a kill is cut off on open."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(self.path)
        self._data: dict[str, dict] = read_journal(self.path)
        self._f = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def get(self, key: str) -> Response | None:
        row = self._data.get(key)
        return None if row is None else Response.from_row(row, key)

    def put(self, resp: Response) -> None:
        row = resp.to_row(time.time())
        with self._lock:
            self._data[resp.key] = row
            self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._f.flush()

    def __len__(self) -> int:
        return len(self._data)

    def close(self) -> None:
        self._f.close()


@dataclass
class UsageMeter:
    """Tokens, cost and request counts by request kind; cost from a $/1M-token price table."""

    prices: dict[str, dict[str, float]] = field(default_factory=dict)
    by_kind: dict[str, dict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def price(self, model: str) -> dict[str, float]:
        if model in self.prices:
            return self.prices[model]
        # Hosted APIs answer with dated names (gpt-4o-mini-2024-07-18): match the longest prefix.
        best = max((m for m in self.prices if model.startswith(m)), key=len, default=None)
        return self.prices[best] if best else {"prompt": 0.0, "completion": 0.0}

    def add(self, kind: str, resp: Response) -> None:
        p = self.price(resp.model)
        cost = (
            resp.prompt_tokens * p.get("prompt", 0.0)
            + resp.completion_tokens * p.get("completion", 0.0)
        ) / 1e6
        with self.lock:
            k = self.by_kind[kind]
            k["requests"] += 1
            k["cached"] += int(resp.cached)
            k["prompt_tokens"] += resp.prompt_tokens
            k["completion_tokens"] += resp.completion_tokens
            k["cost"] += cost

    def fail(self, kind: str) -> None:
        with self.lock:
            self.by_kind[kind]["failed"] += 1

    def total(self, name: str) -> float:
        with self.lock:
            return sum(k.get(name, 0.0) for k in self.by_kind.values())

    def to_dict(self) -> dict:
        names = ("requests", "cached", "failed", "prompt_tokens", "completion_tokens", "cost")
        with self.lock:
            by = {
                kind: {
                    n: (round(v.get(n, 0.0), 6) if n == "cost" else int(v.get(n, 0))) for n in names
                }
                for kind, v in self.by_kind.items()
            }
        out = {
            n: (
                round(sum(b[n] for b in by.values()), 6)
                if n == "cost"
                else sum(b[n] for b in by.values())
            )
            for n in names
        }
        out["by_stage"] = by
        return out


class AdaptiveLimiter:
    """At most ``limit`` calls in flight; ``limit`` halves on a 429 (not below ``floor``) and
    grows by one after ``grow_after`` successes in a row (not above ``ceiling``)."""

    def __init__(self, ceiling: int, floor: int = 1, grow_after: int = 8):
        self.ceiling, self.floor, self.grow_after = ceiling, floor, grow_after
        self.limit = ceiling
        self.in_flight = 0
        self._ok_streak = 0
        self._cond = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1

    async def release(self) -> None:
        async with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()

    def throttled(self) -> None:
        self.limit = max(self.floor, self.limit // 2)
        self._ok_streak = 0

    async def succeeded(self) -> None:
        self._ok_streak += 1
        if self._ok_streak >= self.grow_after and self.limit < self.ceiling:
            self.limit += 1
            self._ok_streak = 0
            async with self._cond:
                self._cond.notify_all()


class RateLimiter:
    """Token bucket: ``per_minute`` units a minute, bursting to ``burst_seconds`` worth, so a
    run starts at once but never exceeds the rate a hosted API enforces per minute."""

    def __init__(self, per_minute: float, burst_seconds: float = 5.0):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, amount: float = 1.0) -> None:
        if self.rate <= 0:
            return
        amount = min(amount, self.capacity)
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= amount:
                    self.tokens -= amount
                    return
                await asyncio.sleep((amount - self.tokens) / self.rate)


def _retry_after(exc: BaseException) -> float | None:
    """Seconds from a ``Retry-After`` (seconds or HTTP date) or ``retry-after-ms`` header."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(
        exc,
        (
            openai.RateLimitError,
            openai.InternalServerError,
            openai.APITimeoutError,
            openai.APIConnectionError,
            GarbageReply,
            openai.APIResponseValidationError,
        ),
    ):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 425, 429) or exc.status_code >= 500
    return isinstance(exc, (asyncio.TimeoutError, json.JSONDecodeError))


def _redact(text: str, secret: str | None) -> str:
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return text


class LLMClient:
    """Async OpenAI-compatible client with retries, adaptive concurrency, rate limits, a response
    cache and a budget. Use :meth:`stream` from synchronous code."""

    def __init__(
        self,
        cfg: LLMConfig,
        *,
        base_urls: list[str],
        model: str,
        api_key: str | None,
        cache: ResponseCache | None = None,
        usage: UsageMeter | None = None,
        api: str | None = None,
    ):
        self.cfg = cfg
        self.base_urls = base_urls
        self.model = model
        self.api = api or ("completion" if cfg.api == "completion" else "chat")
        self._api_key = api_key or "not-needed"
        self.cache = cache
        self.usage = usage or UsageMeter(prices=cfg.prices)
        self.stop_reason: str | None = None
        self._abort = threading.Event()
        self._embed_one_by_one = False

    # -- budget -------------------------------------------------------------------------------
    def budget_left(self) -> bool:
        if self.cfg.max_cost and self.usage.total("cost") >= self.cfg.max_cost:
            self.stop_reason = "budget"
            return False
        if (
            self.cfg.max_tokens_total
            and self.usage.total("prompt_tokens") + self.usage.total("completion_tokens")
            >= self.cfg.max_tokens_total
        ):
            self.stop_reason = "budget"
            return False
        return True

    # -- one call -----------------------------------------------------------------------------
    def _clients(self) -> list[openai.AsyncOpenAI]:
        # max_retries=0: tenacity owns retrying, so backoff and Retry-After follow one policy.
        return [
            openai.AsyncOpenAI(
                base_url=u, api_key=self._api_key, timeout=self.cfg.timeout, max_retries=0
            )
            for u in self.base_urls
        ]

    async def _call(self, client: openai.AsyncOpenAI, req: Request) -> Response:
        # The raw response keeps openai's request building, status errors and headers, but skips
        # building pydantic models of the body: a tenth of the client's CPU per request, which
        # is what limits the request rate at high concurrency.
        params = dict(req.params)
        if (req.api or self.api) == "chat":
            if req.messages is None:
                raise ValueError("chat API needs messages")
            raw = await client.chat.completions.with_raw_response.create(
                model=self.model, messages=req.messages, **params
            )
        else:
            prompt = (
                req.prompt if req.prompt is not None else _messages_to_prompt(req.messages or [])
            )
            raw = await client.completions.with_raw_response.create(
                model=self.model, prompt=prompt, **params
            )
        try:
            body = json.loads(raw.http_response.content)
            choice = body["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise GarbageReply("the endpoint returned no completion text") from None
        if not isinstance(text, str):
            raise GarbageReply("the endpoint returned no completion text")
        usage = body.get("usage") or {}
        return Response(
            text=text,
            finish_reason=str(choice.get("finish_reason") or "unknown"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            model=str(body.get("model") or self.model),
            request_id=str(body.get("id") or ""),
        )

    async def _attempts(
        self,
        clients: list[openai.AsyncOpenAI],
        index: int,
        call,
        limiter: AdaptiveLimiter,
        rpm: RateLimiter,
        tpm: RateLimiter,
        *,
        est_tokens: float = 0.0,
        retryable=_is_retryable,
    ):
        """``await call(client)`` under the one retry policy: backoff with jitter or the
        server's Retry-After, the rate limits, the adaptive limiter, a whole-call timeout, the
        endpoints in turn. Returns its result; raises what ``retryable`` does not absorb."""

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            hinted = _retry_after(exc) if exc else None
            if hinted is not None:
                return min(hinted, self.cfg.backoff_max) + random.uniform(0, 0.1)
            # Exponential backoff with full jitter: spreads retries of many parallel requests.
            return random.uniform(
                0, min(self.cfg.backoff_max, 0.5 * 2 ** (state.attempt_number - 1))
            )

        attempt_no = 0
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(retryable),
            wait=wait,
            stop=stop_after_attempt(self.cfg.max_retries + 1),
            reraise=True,
        ):
            with attempt:
                attempt_no += 1
                await rpm.take(1)
                await tpm.take(est_tokens)
                await limiter.acquire()
                try:
                    client = clients[(index + attempt_no - 1) % len(clients)]
                    try:
                        # httpx's timeouts are per read; this bounds the whole call (a server
                        # trickling bytes), without a task per request.
                        async with asyncio.timeout(self.cfg.timeout + 5):
                            result = await call(client)
                    except openai.RateLimitError:
                        limiter.throttled()
                        raise
                finally:
                    await limiter.release()
        await limiter.succeeded()
        return result

    def _key_refused(self, e: openai.APIStatusError) -> LLMFatalError:
        return LLMFatalError(
            f"the endpoint refused the API key (HTTP {e.status_code}); check ${self.cfg.api_key_env}"
        )

    async def _complete(
        self,
        clients: list[openai.AsyncOpenAI],
        index: int,
        req: Request,
        limiter: AdaptiveLimiter,
        rpm: RateLimiter,
        tpm: RateLimiter,
    ) -> Response | Failure:
        key = req.key(self.model, self.api)
        if self.cache is not None and self.cfg.cache:
            hit = self.cache.get(key)
            if hit is not None:
                self.usage.add(req.kind, hit)
                return hit
        est_tokens = 0.0
        if self.cfg.tokens_per_minute:
            prompt = json.dumps(req.messages or req.prompt or "")
            est_tokens = len(prompt) / 4 + req.params.get("max_tokens", 256)
        try:
            resp = await self._attempts(
                clients,
                index,
                lambda client: self._call(client, req),
                limiter,
                rpm,
                tpm,
                est_tokens=est_tokens,
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise self._key_refused(e) from None
        except (openai.BadRequestError, openai.NotFoundError, openai.UnprocessableEntityError) as e:
            detail = _redact(str(getattr(e, "message", "")) or type(e).__name__, self._api_key)
            raise LLMFatalError(
                f"the endpoint rejected the request (HTTP {e.status_code}): {detail[:300]}"
            ) from None
        except Exception as e:  # retries exhausted: becomes a rejected request, not a crash
            self.usage.fail(req.kind)
            return Failure(error=_redact(f"{type(e).__name__}: {e}", self._api_key)[:300])
        resp.key = key
        if self.cache is not None and self.cfg.cache:
            self.cache.put(resp)
        self.usage.add(req.kind, resp)
        return resp

    # -- embeddings ---------------------------------------------------------------------------
    def embed(
        self,
        texts: list[str],
        model: str | None = None,
        *,
        batch: int = 32,
        kind: str = "semdedup",
    ) -> list[list[float] | None]:
        """One vector per text from the endpoint's ``/v1/embeddings`` route (``model``, default
        the generation model), ``batch`` texts a request, ``llm.concurrency`` requests in
        flight, each retried like a completion. Each text's vector is cached on its own (key:
        model, text, "embeddings"), so a rerun sends nothing. A text whose request still fails,
        an empty text, or a missing vector is ``None`` (counted as failed under ``kind``). A
        route the endpoint does not serve is an :class:`LLMFatalError` naming
        ``semdedup.enabled``."""
        model = model or self.model
        where: dict[str, list[int]] = {}  # a text repeated in the call is embedded once
        for i, text in enumerate(texts):
            where.setdefault(text, []).append(i)
        found: dict[str, list[float] | None] = {}
        for text in where:
            if not text.strip():
                found[text] = None
                self.usage.fail(kind)
            elif (hit := self._cached(embedding_key(model, text))) is not None:
                found[text] = json.loads(hit.text)
                self.usage.add(kind, hit)
        todo = [t for t in where if t not in found]
        if todo:
            vectors = asyncio.run(self._embed_all(todo, model, batch, kind))
            found.update(zip(todo, vectors, strict=True))
        out: list[list[float] | None] = [None] * len(texts)
        for text, places in where.items():
            for i in places:
                out[i] = found[text]
        return out

    def _cached(self, key: str) -> Response | None:
        if self.cache is None or not self.cfg.cache:
            return None
        return self.cache.get(key)

    async def _embed_all(
        self, texts: list[str], model: str, batch: int, kind: str
    ) -> list[list[float] | None]:
        clients = self._clients()
        limits = (
            AdaptiveLimiter(self.cfg.concurrency, self.cfg.min_concurrency),
            RateLimiter(self.cfg.requests_per_minute),
            RateLimiter(self.cfg.tokens_per_minute),
        )
        if self._embed_one_by_one:
            batch = 1
        chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
        try:
            parts = await asyncio.gather(
                *(
                    self._embed_chunk(clients, i, model, chunk, kind, limits)
                    for i, chunk in enumerate(chunks)
                )
            )
        finally:
            for c in clients:
                await c.close()
        return [v for part in parts for v in part]

    async def _embed_chunk(
        self,
        clients: list[openai.AsyncOpenAI],
        index: int,
        model: str,
        texts: list[str],
        kind: str,
        limits: tuple[AdaptiveLimiter, RateLimiter, RateLimiter],
    ) -> list[list[float] | None]:
        try:
            body = await self._attempts(
                clients,
                index,
                lambda client: self._embed_call(client, model, texts),
                *limits,
                est_tokens=sum(len(t) for t in texts) / 4,
                retryable=lambda e: _is_retryable(e) and not _no_embeddings(e),
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise self._key_refused(e) from None
        except Exception as e:
            if not _no_embeddings(e):  # retries exhausted: these texts are embedding_failed
                for _ in texts:
                    self.usage.fail(kind)
                return [None] * len(texts)
            detail = _redact(str(getattr(e, "message", "")) or type(e).__name__, self._api_key)
            raise LLMFatalError(
                f"semdedup.enabled=true needs embeddings, and {_safe_url(str(e.request.url))} "
                f"refused them for model {model!r} (HTTP {e.status_code}: {detail[:200]}): "
                "point llm.base_url at an endpoint that serves "
                "/v1/embeddings (vLLM, OpenAI, llama.cpp started with embeddings on), set "
                "semdedup.model, or set semdedup.enabled=false"
            ) from None
        vectors = _embedding_vectors(body, len(texts))
        if len(texts) > 1 and any(per_token for _, per_token in vectors):
            # llama-cpp-python's server with a generative model (no pooling) answers a vector
            # per token, and misreads those of every input after a request's first (it offsets
            # by tokens, not floats): ask one text a request from here on.
            self._embed_one_by_one = True
            parts = await asyncio.gather(
                *(
                    self._embed_chunk(clients, index + k, model, [t], kind, limits)
                    for k, t in enumerate(texts)
                )
            )
            return [p[0] for p in parts]
        usage = body.get("usage") or {}
        tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
        out: list[list[float] | None] = []
        for k, (text, (vec, _)) in enumerate(zip(texts, vectors, strict=True)):
            if vec is None:
                self.usage.fail(kind)
                out.append(None)
                continue
            resp = Response(
                text=json.dumps(vec),
                finish_reason="embedding",
                # The request's tokens, shared out over its texts (the remainder on the first).
                prompt_tokens=tokens // len(texts) + (tokens % len(texts) if k == 0 else 0),
                completion_tokens=0,
                model=str(body.get("model") or model),
                request_id=str(body.get("id") or ""),
                key=embedding_key(model, text),
            )
            if self.cache is not None and self.cfg.cache:
                self.cache.put(resp)
            self.usage.add(kind, resp)
            out.append(vec)
        return out

    async def _embed_call(self, client: openai.AsyncOpenAI, model: str, texts: list[str]) -> dict:
        # Floats asked for explicitly: the openai package otherwise asks for base64, which not
        # every OpenAI-compatible server speaks. The raw body, as in _call.
        raw = await client.embeddings.with_raw_response.create(
            model=model, input=texts, encoding_format="float"
        )
        try:
            body = json.loads(raw.http_response.content)
        except ValueError:
            raise GarbageReply("the endpoint returned no embeddings") from None
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise GarbageReply("the endpoint returned no embeddings")
        return body

    # -- the stream ---------------------------------------------------------------------------
    def stream(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Response | Failure]]:
        """Answer ``requests`` (a lazy, finite iterable) keeping up to ``cfg.concurrency`` in
        flight, and yield ``(request, answer)`` in request order: one answer per request, a
        :class:`Failure` for one that could not be answered.

        Stop early by closing the generator (``break`` out of the loop): in-flight requests are
        cancelled. Once the budget is spent (``stop_reason = "budget"``) nothing more is sent:
        each request still in the iterable is answered ``Failure(kind="budget_exhausted")`` so
        that the records behind them are accounted for. A fatal error (bad key...) is raised
        from the iteration.
        """
        out: queue.Queue = queue.Queue()
        stop = threading.Event()
        done = object()
        backlog_cap = 2 * self.cfg.concurrency

        async def produce() -> None:
            clients = self._clients()
            limiter = AdaptiveLimiter(self.cfg.concurrency, self.cfg.min_concurrency)
            rpm = RateLimiter(self.cfg.requests_per_minute)
            tpm = RateLimiter(self.cfg.tokens_per_minute)
            results: dict[int, tuple[Request, Response | Failure]] = {}
            next_out = 0
            tasks: set[asyncio.Task] = set()
            slots = asyncio.Semaphore(self.cfg.concurrency)
            fatal: list[BaseException] = []

            def flush() -> None:
                nonlocal next_out
                while next_out in results:
                    out.put(results.pop(next_out))
                    next_out += 1

            async def one(i: int, req: Request) -> None:
                try:
                    results[i] = (req, await self._complete(clients, i, req, limiter, rpm, tpm))
                except LLMFatalError as e:
                    fatal.append(e)
                    stop.set()
                finally:
                    slots.release()
                flush()

            loop = asyncio.get_running_loop()
            source = iter(requests)
            end = object()
            # The request iterable may itself wait on another stream (a stage that answers the
            # records of an upstream generation stage): pull it off the event loop so that the
            # requests in flight here keep moving meanwhile.
            pull_inline = isinstance(requests, list | tuple)
            i = -1
            try:
                while True:
                    req = (
                        next(source, end)
                        if pull_inline
                        else await loop.run_in_executor(None, next, source, end)
                    )
                    if req is end:
                        break
                    i += 1
                    # Back-pressure: wait while the consumer is far behind (bounded memory).
                    while not stop.is_set() and (out.qsize() + len(results)) > backlog_cap:
                        await asyncio.sleep(0.005)
                    if stop.is_set():
                        break
                    if not self.budget_left():
                        # Every request still asked for is answered with a reject, so that each
                        # record waiting on one is accounted for (budget_exhausted), not lost.
                        results[i] = (req, Failure("budget exhausted", kind="budget_exhausted"))
                        flush()
                        continue
                    await slots.acquire()
                    if stop.is_set():
                        slots.release()
                        break
                    t = asyncio.create_task(one(i, req))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                while tasks and not stop.is_set():
                    await asyncio.wait(set(tasks), timeout=0.05)
                if tasks and not fatal:
                    # Stopped early: requests already sent are paid for, so let them land in the
                    # cache (a resumed or larger run reuses them) within a grace period, unless
                    # the user interrupted the run.
                    deadline = time.monotonic() + min(self.cfg.timeout, 30.0)
                    while tasks and not self._abort.is_set() and time.monotonic() < deadline:
                        await asyncio.wait(set(tasks), timeout=0.1)
            finally:
                for t in list(tasks):
                    t.cancel()
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
                for c in clients:
                    await c.close()
                out.put(fatal[0] if fatal else done)

        def runner() -> None:
            try:
                asyncio.run(produce())
            except BaseException as e:  # surface producer crashes to the consumer
                out.put(e)

        thread = threading.Thread(target=runner, name="llm-stream", daemon=True)
        thread.start()
        try:
            while True:
                item = out.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        except GeneratorExit:
            raise
        except BaseException:  # Ctrl-C or an error while waiting: no grace period
            self.abort()
            raise
        finally:
            stop.set()
            thread.join(timeout=30)

    def abort(self) -> None:
        """Stop at once: requests in flight are cancelled rather than awaited (Ctrl-C)."""
        self._abort.set()

    def complete_all(self, requests: Iterable[Request]) -> list[tuple[Request, Response | Failure]]:
        return list(self.stream(requests))


def embedding_key(model: str, text: str) -> str:
    """Cache key of one text's embedding: a different key space from any completion's."""
    body = {"model": model, "api": "embeddings", "input": text}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _embedding_vectors(body: dict, n: int) -> list[tuple[list[float] | None, bool]]:
    """``(vector, per_token)`` for each of the ``n`` inputs of an embeddings reply, by its
    ``index``; ``None`` where the reply holds no usable vector. A per-token answer (a list of
    vectors: llama.cpp with no pooling) is mean-pooled."""
    out: list[tuple[list[float] | None, bool]] = [(None, False)] * n
    for pos, item in enumerate(body["data"]):
        if not isinstance(item, dict):
            continue
        i = item.get("index", pos)
        vec = item.get("embedding")
        if not isinstance(i, int) or not 0 <= i < n or not isinstance(vec, list) or not vec:
            continue
        per_token = isinstance(vec[0], list)
        if per_token:
            rows = [r for r in vec if isinstance(r, list) and len(r) == len(vec[0])]
            vec = [sum(col) / len(rows) for col in zip(*rows, strict=True)] if rows else []
        if vec and all(isinstance(x, int | float) for x in vec):
            out[i] = ([float(x) for x in vec], per_token)
    return out


def _no_embeddings(exc: BaseException) -> bool:
    """The endpoint does not serve embeddings (for this model): no route (404, 405), not
    implemented (501: llama.cpp's server started without ``--embeddings``), the model is not an
    embedding model (400, 422: vLLM), or llama-cpp-python's server started without
    ``embedding=True`` (a 500 saying so)."""
    if not isinstance(exc, openai.APIStatusError):
        return False
    if exc.status_code in (400, 404, 405, 422, 501):
        return True
    return exc.status_code == 500 and "embedding=true" in str(exc).lower()


def _safe_url(url: str) -> str:
    """``url`` without credentials or query string (either may hold a key)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _messages_to_prompt(messages: list[dict]) -> str:
    """Plain transcript for completion-only endpoints given chat messages."""
    return "\n\n".join(m.get("content", "") for m in messages)


def resolve_api_key(cfg: LLMConfig) -> str | None:
    return os.environ.get(cfg.api_key_env) or None
