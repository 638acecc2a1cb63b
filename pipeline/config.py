"""Run configuration: one dataclass per concern, composed under :class:`PipelineConfig`.

Stage-specific configs live next to their stage (``stages/*.py``) and are composed here. Every
field has a default and a help string (``metadata["help"]``); ``__post_init__`` raises a
ValueError naming the field, the value and the fix. YAML files in ``configs/`` set fields,
``--set section.key=value`` overrides them, unknown keys are errors, and the resolved config is
saved into the run directory. No secret is ever a config value: the API key is read from the
environment variable named by ``llm.api_key_env``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.configlib import ConfigError, build, describe, merge, parse_set, read_yaml
from pipeline.configlib import help_field as _help
from stages.dedup import DedupConfig
from stages.filters import FilterConfig
from stages.verify import VerifyConfig


@dataclass
class LLMConfig:
    base_url: str | None = _help(
        "OpenAI-compatible endpoint; default $OPENAI_BASE_URL; unset = start the embedded model server",
        None,
    )
    base_urls: list[str] = _help(
        "several endpoints (vLLM replicas) to spread requests over, round-robin", factory=list
    )
    model: str | None = _help(
        "model name sent to the endpoint; default $OPENAI_MODEL, or the embedded model's", None
    )
    api_key_env: str = _help(
        "name of the environment variable holding the API key (the key itself is never stored)",
        "OPENAI_API_KEY",
    )
    api: str = _help(
        "chat | completion | auto (completion for the embedded base-style few-shot prompts, chat for a configured endpoint)",
        "auto",
    )
    concurrency: int = _help("maximum requests in flight", 8)
    min_concurrency: int = _help("floor the pool shrinks to when the endpoint answers 429", 1)
    timeout: float = _help("seconds before one request is abandoned and retried", 120.0)
    max_retries: int = _help("retries for 429, 5xx, timeouts and dropped connections", 6)
    backoff_max: float = _help("ceiling in seconds for one backoff wait", 60.0)
    requests_per_minute: float = _help("client-side request rate limit; 0 = none", 0.0)
    tokens_per_minute: float = _help(
        "client-side token rate limit (prompt + max completion); 0 = none", 0.0
    )
    max_cost: float = _help(
        "stop the run cleanly once this many dollars are spent; 0 = no limit", 0.0
    )
    max_tokens_total: int = _help(
        "stop the run cleanly once this many tokens are spent; 0 = no limit", 0
    )
    prices: dict[str, dict[str, float]] = _help(
        "dollars per million tokens by model name: {model: {prompt: x, completion: y}}",
        factory=lambda: {
            "gpt-4o-mini": {"prompt": 0.15, "completion": 0.60},
            "gpt-4o": {"prompt": 2.50, "completion": 10.00},
            "gpt-4.1-mini": {"prompt": 0.40, "completion": 1.60},
        },
    )
    cache: bool = _help("cache responses on disk keyed by the full request", True)
    embedded_model: str = _help(
        "embedded server model: 'smollm2' (bundled) or a path to a .gguf file", "smollm2"
    )
    embedded_threads: int = _help(
        "llama.cpp threads for the embedded server; 0 = cores minus one", 0
    )
    embedded_ctx: int = _help("context length of the embedded server", 2048)

    def __post_init__(self) -> None:
        if self.api not in ("chat", "completion", "auto"):
            raise ValueError(f"llm.api={self.api!r}: use 'chat', 'completion' or 'auto'")
        if self.concurrency < 1:
            raise ValueError(f"llm.concurrency={self.concurrency!r}: must be at least 1")
        if not 1 <= self.min_concurrency <= self.concurrency:
            raise ValueError(
                f"llm.min_concurrency={self.min_concurrency!r}: must be between 1 and llm.concurrency ({self.concurrency})"
            )
        if self.timeout <= 0:
            raise ValueError(f"llm.timeout={self.timeout!r}: must be positive seconds")


@dataclass
class GenerationConfig:
    mode: str = _help(
        "general (Alpaca-style tasks) | code (problems + unit tests + candidate solutions)",
        "general",
    )
    num: int = _help("records wanted in data.json", 20)
    seed: int = _help("RNG seed for seed sampling and request order", 42)
    seeds_path: str = _help("seed task file (self-instruct schema, JSONL)", "seed_tasks.jsonl")
    num_prompt_tasks: int = _help("seed tasks shown as examples in each request", 3)
    tasks_per_request: int = _help("new tasks asked for in each general-mode request", 5)
    mix_generated: float = _help(
        "share of prompt examples drawn from already kept generated tasks (self-instruct style); 0 = seeds only",
        0.0,
    )
    temperature: float = _help("sampling temperature", 0.9)
    top_p: float = _help("nucleus sampling", 0.95)
    max_tokens: int = _help("completion tokens per request", 768)
    answer_mode: str = _help(
        "general mode: inline (use the output written in the batch) | chat (ask the chat endpoint to answer each new instruction, Self-Instruct's two-step recipe) | auto (chat for the embedded model, inline otherwise)",
        "auto",
    )
    answer_temperature: float = _help("sampling temperature for answers in answer_mode=chat", 0.3)
    max_requests: int = _help("hard cap on generation requests in one run; 0 = 50 x num", 0)
    num_candidates: int = _help("code mode: candidate solutions sampled per problem", 4)
    num_test_samples: int = _help(
        "code mode: unit-test suites sampled per problem (first usable one is kept)", 1
    )
    code_overgenerate: float = _help(
        "code mode: problems generated per wanted record in a round", 2.0
    )
    code_rounds: int = _help(
        "code mode: rounds of problem generation before giving up on reaching num", 4
    )

    def __post_init__(self) -> None:
        if self.answer_mode not in ("inline", "chat", "auto"):
            raise ValueError(
                f"generation.answer_mode={self.answer_mode!r}: use 'inline', 'chat' or 'auto'"
            )
        if self.mode not in ("general", "code"):
            raise ValueError(f"generation.mode={self.mode!r}: use 'general' or 'code'")
        if self.num < 1:
            raise ValueError(f"generation.num={self.num!r}: must be at least 1")
        if self.num_prompt_tasks < 1:
            raise ValueError(
                f"generation.num_prompt_tasks={self.num_prompt_tasks!r}: must be at least 1"
            )
        if not 0.0 <= self.mix_generated <= 1.0:
            raise ValueError(
                f"generation.mix_generated={self.mix_generated!r}: must be between 0 and 1"
            )
        if self.num_candidates < 1:
            raise ValueError(
                f"generation.num_candidates={self.num_candidates!r}: must be at least 1"
            )


@dataclass
class ExportConfig:
    validation_fraction: float = _help(
        "share of records written to data.validation.json (seeded split); 0 = none", 0.0
    )
    save_to_disk: bool = _help(
        "also write a `datasets` DatasetDict with save_to_disk into <run>/hf_dataset", False
    )
    system_prompt: str = _help("system message put first in messages.jsonl; empty = none", "")

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"export.validation_fraction={self.validation_fraction!r}: must be in [0, 1)"
            )


@dataclass
class PipelineConfig:
    run: str = _help(
        "run name: the directory outputs/<run>; empty = <mode>-n<num>-s<seed>. The same name resumes",
        "",
    )
    output_dir: str = _help("parent directory of run directories", "outputs")
    llm: LLMConfig = _help("the model endpoint", factory=LLMConfig)
    generation: GenerationConfig = _help("seed sampling and generation", factory=GenerationConfig)
    dedup: DedupConfig = _help("ROUGE-L near-duplicate removal", factory=DedupConfig)
    filter: FilterConfig = _help("instruction and output filters", factory=FilterConfig)
    verify: VerifyConfig = _help("sandboxed execution of code candidates", factory=VerifyConfig)
    export: ExportConfig = _help("data.json / messages.jsonl export", factory=ExportConfig)


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    extra: dict | None = None,
) -> PipelineConfig:
    """YAML file (optional) + ``extra`` dict + ``--set`` overrides, validated into a PipelineConfig."""
    data: dict = read_yaml(path) if path else {}
    if extra:
        data = merge(data, extra)
    if overrides:
        data = merge(data, parse_set(overrides))
    cfg = build(PipelineConfig, data)
    # The filter's mode follows the generation mode unless set explicitly.
    if "mode" not in (data.get("filter") or {}):
        cfg.filter.mode = cfg.generation.mode
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: PipelineConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML. Secrets never live in the config (see module doc)."""
    Path(path).write_text(
        yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8"
    )


__all__ = [
    "ConfigError",
    "PipelineConfig",
    "build",
    "describe",
    "load_config",
    "merge",
    "parse_set",
    "save_config",
]
