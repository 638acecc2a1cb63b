"""A small OpenAI-compatible HTTP server on loopback for what a real server cannot be made to do
on demand: 429 with Retry-After, 500s, hangs, garbage or truncated bodies, a bad key.

Plain asyncio (HTTP/1.1 with keep-alive) in a background thread, so it also serves the client
benchmark at high concurrency. A ``script(body, n)`` callable decides each answer: it gets the
parsed request JSON and the 0-based request count, and returns a :class:`Reply`.
``/v1/embeddings`` is answered by a second callable of the same shape, ``embeddings`` (for
instance :func:`bow_embeddings`); without one that route is a 404, as on a server that has none.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Reply:
    status: int = 200
    body: bytes | dict | None = None
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (a hang is a long delay)


def completion_body(
    text: str,
    *,
    chat: bool,
    finish_reason: str = "stop",
    prompt_tokens: int = 10,
    completion_tokens: int = 20,
    model: str = "fake-model",
) -> dict:
    choice = {"index": 0, "finish_reason": finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": f"fake-{time.monotonic_ns()}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def bow_vector(text: str, dim: int = 256) -> list[float]:
    """A bag-of-words vector: each lower-cased word counted in a bucket picked by its hash. The
    same words in any order give the same vector (cosine 1), which ROUGE-L, an in-order
    measure, does not see as a duplicate."""
    vec = [0.0] * dim
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        vec[h % dim] += 1.0
    return vec


def embeddings_body(vectors: list[list[float]], model: str = "fake-embed") -> dict:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": 3 * len(vectors), "total_tokens": 3 * len(vectors)},
    }


def bow_embeddings(body: dict, n: int) -> Reply:
    """An ``embeddings`` script: :func:`bow_vector` of each input."""
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    return Reply(body=embeddings_body([bow_vector(t) for t in texts]))


def echo_script(
    text: str = "Task 4\nInstruction: Say hi.\nInput: <none>\nOutput: Hi.",
) -> Callable[[dict, int], Reply]:
    def script(body: dict, n: int) -> Reply:
        return Reply(body=completion_body(text, chat="messages" in body))

    return script


class FakeOpenAI:
    """``with FakeOpenAI(script) as srv: srv.base_url``; ``srv.requests`` holds every request
    (path, headers, json) in arrival order."""

    def __init__(
        self,
        script: Callable[[dict, int], Reply] | None = None,
        embeddings: Callable[[dict, int], Reply] | None = None,
    ):
        self.script = script or echo_script()
        self.embeddings = embeddings
        self.requests: list[tuple[str, dict, dict]] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.max_concurrent = 0
        self._concurrent = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, v = h.decode("latin-1").split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                raw = await reader.readexactly(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except json.JSONDecodeError:
                    body = {}
                with self._lock:
                    n = len(self.requests)
                    self.requests.append((path, headers, body))
                    self._concurrent += 1
                    self.max_concurrent = max(self.max_concurrent, self._concurrent)
                try:
                    if method == "GET" and path.endswith("/models"):
                        reply = Reply(
                            body={
                                "object": "list",
                                "data": [{"id": "fake-model", "object": "model"}],
                            }
                        )
                    elif path.endswith("/embeddings"):
                        reply = (
                            self.embeddings(body, n)
                            if self.embeddings
                            else Reply(status=404, body={"error": {"message": "Not Found"}})
                        )
                    else:
                        reply = self.script(body, n)
                    if reply.delay:
                        await asyncio.sleep(reply.delay)
                finally:
                    with self._lock:
                        self._concurrent -= 1
                payload = (
                    reply.body
                    if isinstance(reply.body, bytes)
                    else json.dumps(reply.body if reply.body is not None else {}).encode()
                )
                head = [
                    f"HTTP/1.1 {reply.status} X",
                    "Content-Type: application/json",
                    f"Content-Length: {len(payload)}",
                    "Connection: keep-alive",
                ]
                head += [f"{k}: {v}" for k, v in reply.headers.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()

    def __enter__(self) -> FakeOpenAI:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)

            async def start() -> None:
                self._server = await asyncio.start_server(
                    self._handle, "127.0.0.1", 0, backlog=1024
                )
                self.port = self._server.sockets[0].getsockname()[1]
                ready.set()

            self._loop.run_until_complete(start())
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop:

            async def shutdown() -> None:
                if self._server:
                    self._server.close()
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            try:
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)


def main() -> None:
    """``python -m tests.fake_openai --delay 0.5``: serve fixed-delay answers in a process of its
    own (so a benchmark's client does not share an interpreter with it); prints the port."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--delay", type=float, default=0.5)
    args = ap.parse_args()
    body = completion_body("ok", chat=True)
    with FakeOpenAI(lambda b, n: Reply(delay=args.delay, body=body)) as srv:
        print(srv.port, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
