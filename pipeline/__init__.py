"""Orchestration for the self-instruct pipeline: CLI, config, run directory, record I/O,
the LLM client, progress and stats. The stages themselves live in ``stages/``."""

__version__ = "0.1.0"
