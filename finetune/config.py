"""Trainer configuration: our own ``model:`` / ``data:`` / ``lora:`` sections plus a ``training:``
mapping handed unchanged to TRL's :class:`trl.SFTConfig` (so every TrainingArguments/SFTConfig
field works there, and is validated by TRL itself, not restated here).

A YAML file in ``configs/train-*.yaml`` sets fields; ``--set section.key=value`` overrides them
(``--set training.learning_rate=1e-4``); unknown keys are errors naming the key and the known ones.
The sequence length lives in ``data.max_length`` because our tokenizer does the truncation (so EOS
survives it); ``training.max_length`` is therefore refused with a pointer to ``data.max_length``.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DTYPES = ("auto", "bf16", "fp16", "fp32")
QUANTIZATIONS = ("none", "4bit", "8bit")
PROMPT_FORMATS = ("alpaca", "chat_template")


class ConfigError(ValueError):
    """A bad config value; the message names the key, the value and the fix."""


def _f(help: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    name_or_path: str | None = _f(
        "HF model directory, or a directory holding gguf_file; empty = the embedded SmolLM2-135M",
        None,
    )
    gguf_file: str | None = _f(
        "GGUF file name inside name_or_path (or a path to a .gguf file)", None
    )
    dtype: str = _f("weights and compute dtype: auto | bf16 | fp16 | fp32", "auto")
    quantization: str = _f("none | 4bit (QLoRA: NF4, double quant, bf16 compute) | 8bit", "none")
    attn_implementation: str | None = _f(
        "sdpa | flash_attention_2 | eager | ...; empty = transformers' default", None
    )
    trust_remote_code: bool = _f("allow model code from the model directory", False)
    compile: bool = _f(
        "torch.compile each decoder block (GPU: +40% tokens/s on a 7B, benchmarks/results/train.md)",
        False,
    )

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"model.quantization={self.quantization!r}: use one of {', '.join(QUANTIZATIONS)}"
            )


@dataclass
class DataConfig:
    path: str | None = _f(
        "data.json (Alpaca array) or messages.jsonl; empty = latest outputs/<run>/data.json", None
    )
    validation_path: str | None = _f(
        "separate validation file; empty = split off the training data", None
    )
    validation_fraction: float = _f(
        "share of examples held out for evaluation (seeded); 0 = none", 0.1
    )
    seed: int = _f("seed of the validation split", 42)
    prompt_format: str = _f(
        "alpaca (prompts/alpaca_*.txt) | chat_template (the tokenizer's own template)", "alpaca"
    )
    system_prompt: str = _f("chat_template only: system message put first; empty = none", "")
    max_length: int = _f("tokens per example; longer responses are cut and still end with EOS", 512)
    train_on_inputs: bool = _f("also compute the loss on the prompt tokens", False)
    max_examples: int = _f("use at most this many examples (after shuffling); 0 = all", 0)
    raw_text: str | None = _f(
        "raw_text.jsonl from `pipeline ingest` ({text, source} per line) mixed into training: "
        "loss on every token, EOS appended, cut into data.max_length windows; empty = none",
        None,
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"data.validation_fraction={self.validation_fraction!r}: must be in [0, 1)"
            )
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(
                f"data.prompt_format={self.prompt_format!r}: use one of {', '.join(PROMPT_FORMATS)}"
            )
        if self.max_length < 8:
            raise ValueError(f"data.max_length={self.max_length!r}: must be at least 8 tokens")
        if self.max_examples < 0:
            raise ValueError(f"data.max_examples={self.max_examples!r}: must be 0 (all) or more")


@dataclass
class LoraSection:
    r: int = _f("LoRA rank", 8)
    alpha: int = _f("LoRA alpha (scale = alpha / r)", 16)
    dropout: float = _f("dropout on the LoRA input", 0.05)
    target_modules: list[str] | str = _f(
        "module names to adapt (e.g. [q_proj, v_proj]) or 'all-linear'", "all-linear"
    )
    bias: str = _f("none | all | lora_only", "none")
    use_rslora: bool = _f("rank-stabilized scaling alpha / sqrt(r)", False)

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r={self.r!r}: must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout={self.dropout!r}: must be in [0, 1)")
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            raise ValueError(
                f"lora.target_modules={self.target_modules!r}: give a list of module names or 'all-linear'"
            )
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"lora.bias={self.bias!r}: use none, all or lora_only")


@dataclass
class TrainConfig:
    model: ModelConfig = _f("the base model", factory=ModelConfig)
    data: DataConfig = _f("the training data and how examples are built", factory=DataConfig)
    lora: LoraSection = _f("the LoRA adapter", factory=LoraSection)
    training: dict[str, Any] = _f(
        "passed through to trl.SFTConfig (TrainingArguments fields)", factory=dict
    )

    def __post_init__(self) -> None:
        if "max_length" in self.training:
            raise ValueError(
                "training.max_length: set data.max_length instead (our tokenizer truncates so EOS survives)"
            )


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, where)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if origin in (list, dict):
        if not isinstance(value, origin):
            raise ConfigError(f"{where}: expected a {origin.__name__}, got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if (tp is not bool and isinstance(value, bool)) or not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def build(cls: type, data: dict | None, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are ConfigErrors."""
    data = data or {}
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - fields)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s): {', '.join(prefix + k for k in unknown)} "
            f"(known: {', '.join(sorted(fields))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def parse_set(pairs: list[str]) -> dict:
    """``["training.learning_rate=1e-4", "lora.r=16"]`` -> nested dict with YAML-typed values."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected section.key=value")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return out


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_train_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """YAML file (optional) + ``--set`` overrides, validated into a :class:`TrainConfig`."""
    data: dict = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
    if overrides:
        data = merge(data, parse_set(overrides))
    return build(TrainConfig, data)


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)
