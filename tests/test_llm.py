"""The LLM client against the fake OpenAI-compatible server: retries, Retry-After, timeouts,
garbage, fatal errors that never print the key, the cache, ordering, budget, adaptive limits."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from pipeline.config import LLMConfig
from pipeline.llm import (
    AdaptiveLimiter,
    Failure,
    LLMClient,
    LLMFatalError,
    Request,
    Response,
    ResponseCache,
    _safe_url,
    embedding_key,
)
from tests.fake_openai import (
    FakeOpenAI,
    Reply,
    bow_embeddings,
    bow_vector,
    completion_body,
    embeddings_body,
)

SECRET = "sk-test-SECRET-0123456789abcdefghij"


def make_client(url: str, tmp_path=None, **over) -> LLMClient:
    cfg = LLMConfig(
        base_url=url,
        api="chat",
        max_retries=over.pop("max_retries", 4),
        backoff_max=over.pop("backoff_max", 0.2),
        timeout=over.pop("timeout", 5.0),
        concurrency=over.pop("concurrency", 4),
        **over,
    )
    cache = ResponseCache(tmp_path / "cache.jsonl") if tmp_path else None
    return LLMClient(cfg, base_urls=[url], model="fake-model", api_key=SECRET, cache=cache)


def req(i: int, kind: str = "generate") -> Request:
    return Request(
        kind=kind,
        messages=[{"role": "user", "content": f"question {i}"}],
        params={"max_tokens": 16},
        sample=i,
    )


def scripted(*replies: Reply, then: Reply | None = None):
    queue = list(replies)

    def script(body: dict, n: int) -> Reply:
        if queue:
            return queue.pop(0)
        return then or Reply(
            body=completion_body(f"answer to {body['messages'][0]['content']}", chat=True)
        )

    return script


def test_429_with_retry_after_is_honoured_then_succeeds():
    with FakeOpenAI(
        scripted(
            Reply(
                status=429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "1"}
            )
        )
    ) as srv:
        client = make_client(srv.base_url, backoff_max=5)
        t0 = time.monotonic()
        [(r, resp)] = client.complete_all([req(0)])
        elapsed = time.monotonic() - t0
    assert isinstance(resp, Response) and resp.text == "answer to question 0"
    assert len(srv.requests) == 2
    assert elapsed >= 0.95, "the client must wait the Retry-After seconds before retrying"


def test_server_errors_are_retried():
    with FakeOpenAI(
        scripted(
            Reply(status=500, body={"error": {"message": "boom"}}),
            Reply(status=503, body={}),
            Reply(status=502, body=b"bad gateway"),
        )
    ) as srv:
        client = make_client(srv.base_url)
        [(_, resp)] = client.complete_all([req(0)])
    assert isinstance(resp, Response) and resp.text == "answer to question 0"
    assert len(srv.requests) == 4


def test_timeout_is_retried():
    with FakeOpenAI(scripted(Reply(delay=5, body=completion_body("late", chat=True)))) as srv:
        client = make_client(srv.base_url, timeout=0.5)
        t0 = time.monotonic()
        [(_, resp)] = client.complete_all([req(0)])
    assert isinstance(resp, Response) and resp.text == "answer to question 0"
    assert time.monotonic() - t0 < 4.5


def test_garbage_bodies_are_retried_then_become_a_failure_not_a_crash():
    garbage = Reply(body=b"<html>not json</html>")
    with FakeOpenAI(scripted(garbage, Reply(body={"choices": []}))) as srv:
        client = make_client(srv.base_url)
        [(_, resp)] = client.complete_all([req(0)])
        assert isinstance(resp, Response)
    with FakeOpenAI(scripted(then=garbage)) as srv:
        client = make_client(srv.base_url, max_retries=2)
        [(_, resp)] = client.complete_all([req(0)])
    assert isinstance(resp, Failure)
    assert len(srv.requests) == 3
    assert client.usage.to_dict()["failed"] == 1


@pytest.mark.parametrize("status", [401, 403])
def test_bad_key_is_fatal_and_never_printed(status):
    body = {
        "error": {
            "message": f"Incorrect API key provided: {SECRET}",
            "type": "invalid_request_error",
        }
    }
    with FakeOpenAI(scripted(then=Reply(status=status, body=body))) as srv:
        client = make_client(srv.base_url)
        with pytest.raises(LLMFatalError) as e:
            client.complete_all([req(0), req(1)])
    assert SECRET not in str(e.value)
    assert "OPENAI_API_KEY" in str(e.value)
    assert len(srv.requests) <= 2, "401 must not be retried"


@pytest.mark.parametrize("status", [400, 404])
def test_bad_request_is_fatal_without_retry(status):
    body = {"error": {"message": f"model not found (key {SECRET})"}}
    with FakeOpenAI(scripted(then=Reply(status=status, body=body))) as srv:
        client = make_client(srv.base_url, concurrency=1)
        with pytest.raises(LLMFatalError) as e:
            client.complete_all([req(0)])
    assert SECRET not in str(e.value) and str(status) in str(e.value)
    assert len(srv.requests) == 1


def test_answers_come_in_request_order_whatever_the_timing():
    def script(body: dict, n: int) -> Reply:
        i = int(body["messages"][0]["content"].split()[-1])
        return Reply(delay=0.05 * ((7 * i) % 5), body=completion_body(f"a{i}", chat=True))

    with FakeOpenAI(script) as srv:
        client = make_client(srv.base_url, concurrency=8)
        out = client.complete_all(req(i) for i in range(20))
    assert [resp.text for _, resp in out] == [f"a{i}" for i in range(20)]
    assert srv.max_concurrent > 1, "requests must overlap"
    assert srv.max_concurrent <= 8


def test_cache_makes_a_rerun_free(tmp_path):
    with FakeOpenAI() as srv:
        c1 = make_client(srv.base_url, tmp_path)
        first = [resp.text for _, resp in c1.complete_all(req(i) for i in range(5))]
        c1.cache.close()
        n_first = len(srv.requests)
        c2 = make_client(srv.base_url, tmp_path)
        second = c2.complete_all(req(i) for i in range(5))
    assert n_first == 5 and len(srv.requests) == 5, "a rerun must not send cached requests"
    assert [r.text for _, r in second] == first
    assert all(r.cached for _, r in second)
    # The sample index is part of the key: another sample of the same prompt is a new request.
    r = req(0)
    assert r.key("m", "chat") != Request(
        kind="generate", messages=r.messages, params=r.params, sample=1
    ).key("m", "chat")


def test_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    good = {
        "key": "k1",
        "text": "t",
        "finish_reason": "stop",
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "model": "m",
        "request_id": "r",
    }
    path.write_text(json.dumps(good) + "\n" + '{"key": "k2", "text": "cut off', encoding="utf-8")
    cache = ResponseCache(path)
    assert cache.get("k1").text == "t" and cache.get("k2") is None
    cache.close()
    assert path.read_text(encoding="utf-8").endswith("\n")


def test_token_budget_stops_the_stream_cleanly():
    with FakeOpenAI() as srv:
        client = make_client(srv.base_url, concurrency=1, max_tokens_total=100)
        out = client.complete_all(req(i) for i in range(50))
    # Each answer costs 30 tokens (10 prompt + 20 completion): the 4th crosses the budget.
    # Nothing more is sent, and every request still asked for is answered with a reject, so
    # that the records behind them are accounted for.
    answered = [r for _, r in out if not isinstance(r, Failure)]
    assert 4 <= len(answered) <= 5 and len(srv.requests) == len(answered)
    assert len(out) == 50
    assert all(r.kind == "budget_exhausted" for _, r in out[len(answered) :])
    assert client.stop_reason == "budget"


def test_cost_uses_the_price_table():
    with FakeOpenAI() as srv:
        client = make_client(
            srv.base_url, prices={"fake-model": {"prompt": 1.0, "completion": 2.0}}
        )
        client.complete_all(req(i) for i in range(3))
    usage = client.usage.to_dict()
    assert usage["cost"] == pytest.approx(3 * (10 * 1.0 + 20 * 2.0) / 1e6)
    assert usage["by_stage"]["generate"]["requests"] == 3


def test_adaptive_limiter_halves_on_429_and_grows_back():
    async def go() -> list[int]:
        lim = AdaptiveLimiter(ceiling=16, floor=2, grow_after=2)
        seen = [lim.limit]
        lim.throttled()
        seen.append(lim.limit)
        lim.throttled()
        lim.throttled()
        lim.throttled()
        seen.append(lim.limit)
        for _ in range(4):
            await lim.succeeded()
        seen.append(lim.limit)
        return seen

    assert asyncio.run(go()) == [16, 8, 2, 4]


def test_rate_of_429s_shrinks_concurrency_against_a_real_server():
    # The server refuses whenever more than 3 requests are in flight at once.
    def script(body: dict, n: int) -> Reply:
        return Reply(delay=0.05, body=completion_body("ok", chat=True))

    with FakeOpenAI() as srv:

        def limited(body: dict, n: int) -> Reply:
            if srv._concurrent > 3:
                return Reply(
                    status=429,
                    body={"error": {"message": "busy"}},
                    headers={"retry-after-ms": "20"},
                )
            return script(body, n)

        srv.script = limited
        client = make_client(srv.base_url, concurrency=16, max_retries=20)
        out = client.complete_all(req(i) for i in range(40))
    assert all(isinstance(r, Response) for _, r in out)
    print("requests sent for 40 answers:", len(srv.requests))
    # Without shrinking, 16 in flight against a limit of 3 would be refused ~13 times a round.
    assert len(srv.requests) < 40 * 3


def test_requests_per_minute_limit_paces_the_stream():
    with FakeOpenAI() as srv:
        # 600/minute = 10/s with a 5 s burst (50): 80 requests need at least ~3 s.
        client = make_client(srv.base_url, concurrency=16, requests_per_minute=600)
        t0 = time.monotonic()
        out = client.complete_all(req(i) for i in range(80))
        elapsed = time.monotonic() - t0
    assert len(out) == 80
    assert elapsed >= 2.8, elapsed


def test_tokens_per_minute_limit_paces_the_stream():
    with FakeOpenAI() as srv:
        # Each request is estimated at its prompt size / 4 + max_tokens (16) ~ 26 tokens;
        # 6,000 tokens/minute = 100/s, burst 500: 40 requests (~1,040 tokens) need ~5 s.
        client = make_client(srv.base_url, concurrency=16, tokens_per_minute=6000)
        t0 = time.monotonic()
        client.complete_all(req(i) for i in range(40))
        elapsed = time.monotonic() - t0
    assert elapsed >= 4.0, elapsed


def test_several_endpoints_share_the_load_and_a_dead_one_is_retried_elsewhere():
    with FakeOpenAI() as a, FakeOpenAI() as b:
        cfg = LLMConfig(api="chat", concurrency=4, max_retries=3, backoff_max=0.05, timeout=5)
        dead = "http://127.0.0.1:9/v1"  # nothing listens there: connection refused
        client = LLMClient(
            cfg, base_urls=[a.base_url, b.base_url, dead], model="fake-model", api_key=None
        )
        out = client.complete_all(req(i) for i in range(30))
    assert all(isinstance(r, Response) for _, r in out)
    assert len(a.requests) >= 10 and len(b.requests) >= 10


def test_stopping_early_lets_paid_requests_land_in_the_cache_but_abort_does_not_wait(tmp_path):
    slow = Reply(delay=1.0, body=completion_body("late answer", chat=True))
    with FakeOpenAI(
        lambda b, n: slow if n > 0 else Reply(body=completion_body("first", chat=True))
    ) as srv:
        client = make_client(srv.base_url, tmp_path, concurrency=4)
        stream = client.stream(req(i) for i in range(4))
        assert next(stream)[1].text == "first"
        t0 = time.monotonic()
        stream.close()  # enough: the three requests in flight are still awaited and cached
        assert time.monotonic() - t0 >= 0.5
        assert len(client.cache) == 4
        client.cache.close()

        client = make_client(srv.base_url, concurrency=4)
        stream = client.stream(req(i) for i in range(10, 14))
        next(stream)
        client.abort()  # what Ctrl-C does: no grace period
        t0 = time.monotonic()
        stream.close()
        assert time.monotonic() - t0 < 0.5


# -- embeddings (the semdedup stage's /v1/embeddings) -----------------------------------------
TEXTS = ["Name three rivers in Africa.", "List three African rivers.", "Write a haiku about rain."]


def embed_paths(srv: FakeOpenAI) -> list[dict]:
    return [body for path, _, body in srv.requests if path.endswith("/embeddings")]


def test_embed_batches_the_texts_and_a_rerun_sends_nothing(tmp_path):
    texts = [*TEXTS, "Explain tides.", TEXTS[0]]  # the repeat is embedded once
    with FakeOpenAI(embeddings=bow_embeddings) as srv:
        c1 = make_client(srv.base_url, tmp_path)
        first = c1.embed(texts, "embed-model", batch=2)
        c1.cache.close()
        sent = embed_paths(srv)
        c2 = make_client(srv.base_url, tmp_path)
        second = c2.embed(texts, "embed-model", batch=2)
        c2.cache.close()
    assert first == [bow_vector(t) for t in texts]
    # Concurrent requests arrive in any order.
    assert sorted(b["input"] for b in sent) == sorted([TEXTS[:2], [TEXTS[2], "Explain tides."]])
    assert all(b["model"] == "embed-model" and b["encoding_format"] == "float" for b in sent)
    assert len(srv.requests) == 2, "a second call for cached texts must send no request"
    assert second == first
    u = c2.usage.to_dict()["by_stage"]["semdedup"]
    assert u["requests"] == u["cached"] == 4
    # The key is the model's and the text's: another model is another entry.
    c3 = make_client(srv.base_url, tmp_path)
    assert c3.cache.get(embedding_key("embed-model", TEXTS[0])) is not None
    assert c3.cache.get(embedding_key("other-model", TEXTS[0])) is None
    assert c3.cache.get(req(0).key("embed-model", "chat")) is None


def test_embed_failures_are_none_and_counted_and_transient_ones_retried():
    def script(body: dict, n: int) -> Reply:
        text = body["input"][0]
        if "storm" in text:  # fails on every try: retries exhausted
            return Reply(status=503, body={"error": {"message": "overloaded"}})
        if "rain" in text and n == 0:  # fails once, then answers
            return Reply(status=500, body={"error": {"message": "try again"}})
        if "garbage" in text:
            return Reply(body=b"{not json")
        return bow_embeddings(body, n)

    texts = ["Write a haiku about rain.", "Describe a storm.", "garbage in", "", "Explain tides."]
    with FakeOpenAI(embeddings=script) as srv:
        client = make_client(srv.base_url, max_retries=2, concurrency=1)
        out = client.embed(texts, batch=1)
    assert out[0] == bow_vector(texts[0]), "a transient 500 is retried, not a failure"
    assert out[1] is None and out[2] is None and out[3] is None
    assert out[4] == bow_vector(texts[4])
    u = client.usage.to_dict()["by_stage"]["semdedup"]
    assert (u["requests"], u["failed"]) == (2, 3)
    storm = [b for b in embed_paths(srv) if "storm" in b["input"][0]]
    assert len(storm) == 3, "a 503 is retried max_retries times"
    assert all("" not in b["input"] for b in embed_paths(srv)), "an empty text is never sent"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(status=404, body={"error": {"message": f"Not Found (key {SECRET})"}}),
        # llama-cpp-python's server started without embedding=True
        Reply(
            status=500,
            body={
                "error": {
                    "message": "Llama model must be created with embedding=True to call this method"
                }
            },
        ),
        Reply(status=501, body={"error": {"message": "This server does not support embeddings"}}),
    ],
)
def test_an_endpoint_without_embeddings_is_a_clear_fatal_error(reply):
    with FakeOpenAI(embeddings=lambda b, n: reply) as srv:
        client = make_client(srv.base_url)
        with pytest.raises(LLMFatalError) as e:
            client.embed(TEXTS)
    msg = str(e.value)
    assert "semdedup.enabled" in msg and f"{srv.base_url}/embeddings" in msg
    assert str(reply.status) in msg and SECRET not in msg
    assert len(srv.requests) == 1, "a missing route is not retried"


def test_a_fake_endpoint_without_the_route_answers_404():
    with FakeOpenAI() as srv:
        with pytest.raises(LLMFatalError, match="HTTP 404"):
            make_client(srv.base_url).embed(TEXTS)


def test_safe_url_drops_credentials_and_query():
    url = "https://user:hunter2@api.example.com:8443/v1/embeddings?api-key=abc"
    assert _safe_url(url) == "https://api.example.com:8443/v1/embeddings"


def test_per_token_vectors_are_mean_pooled_one_text_a_request():
    """As llama-cpp-python's server answers for a generative model (no pooling): a vector per
    token, right only for a request's first input (it misreads the others)."""

    def tokens(text: str) -> list[list[float]]:
        return [bow_vector(w, dim=8) for w in text.split()]

    def script(body: dict, n: int) -> Reply:
        vecs = [tokens(t) if i == 0 else [[9.0] * 8] for i, t in enumerate(body["input"])]
        return Reply(body=embeddings_body(vecs))

    def mean(rows):
        return [sum(c) / len(rows) for c in zip(*rows, strict=True)]

    with FakeOpenAI(embeddings=script) as srv:
        client = make_client(srv.base_url)
        out = client.embed(TEXTS, batch=3)
        more = client.embed(["Explain tides.", "Name a river."], batch=3)
    assert out == [mean(tokens(t)) for t in TEXTS]
    assert more == [mean(tokens(t)) for t in ["Explain tides.", "Name a river."]]
    sizes = [len(b["input"]) for b in embed_paths(srv)]
    assert sizes == [3, 1, 1, 1, 1, 1], "after one per-token reply, one text a request"
