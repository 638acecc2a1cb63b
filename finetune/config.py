"""Trainer configuration: ``method`` (lora | full), our own ``model:`` / ``data:`` (with its
``fim:`` subsection) / ``lora:`` sections plus a ``training:`` mapping handed unchanged to TRL's
:class:`trl.SFTConfig` (so every TrainingArguments/SFTConfig field works there, and is validated
by TRL itself, not restated here).

A YAML file in ``configs/train-*.yaml`` sets fields; ``--set section.key=value`` overrides them
(``--set training.learning_rate=1e-4``); unknown keys are errors naming the key and the known ones.
The sequence length lives in ``data.max_length`` because our tokenizer does the truncation (so EOS
survives it); ``training.max_length`` is therefore refused with a pointer to ``data.max_length``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from pipeline.configlib import ConfigError, build, merge, parse_set, read_yaml
from pipeline.configlib import help_field as _f

DTYPES = ("auto", "bf16", "fp16", "fp32")
METHODS = ("lora", "full")
# transformers' RoPE types beyond "default" (transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS)
ROPE_TYPES = ("linear", "dynamic", "yarn", "longrope", "llama3")
CODE_SUFFIXES = (
    ".py",
    ".pyi",
    ".js",
    ".jsx",
    ".ts",
    ".tsx",
    ".go",
    ".rs",
    ".c",
    ".h",
    ".cc",
    ".cpp",
    ".hpp",
    ".java",
    ".kt",
    ".scala",
    ".rb",
    ".php",
    ".cs",
    ".swift",
    ".sh",
    ".bash",
    ".lua",
    ".r",
    ".jl",
    ".sql",
    ".m",
    ".hs",
    ".ml",
    ".ex",
    ".exs",
    ".clj",
    ".dart",
    ".zig",
    ".pl",
)
QUANTIZATIONS = ("none", "4bit", "8bit")
PROMPT_FORMATS = ("alpaca", "chat_template")


@dataclass
class ModelConfig:
    name_or_path: str | None = _f(
        "HF model directory, a hub id, a registered embedded model (qwen2.5-coder-0.5b, see `python -m pipeline models`), or a directory holding gguf_file; empty = the embedded SmolLM2-135M",
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
        "torch.compile each decoder block (GPU: +40% tokens/s on a 7B, BENCHMARKS.md)",
        False,
    )
    rope_theta: float | None = _f(
        "RoPE base period set on the base model's config before training (Code Llama's long-"
        "context fine-tune: 1000000); saved with the adapter and restored when it is loaded; "
        "empty = the model's own",
        None,
    )
    rope_scaling: dict[str, Any] | None = _f(
        "RoPE scaling merged into the config's rope parameters, e.g. {rope_type: yarn, factor: 4, "
        "original_max_position_embeddings: 4096} (types: linear, dynamic, yarn, longrope, llama3); "
        "saved with the adapter like rope_theta; empty = none",
        None,
    )

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"model.quantization={self.quantization!r}: use one of {', '.join(QUANTIZATIONS)}"
            )
        if self.rope_theta is not None and not self.rope_theta > 0:
            raise ValueError(
                f"model.rope_theta={self.rope_theta!r}: must be a positive base period "
                "(e.g. 1000000), or empty for the model's own"
            )
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in ROPE_TYPES:
                raise ValueError(
                    f"model.rope_scaling.rope_type={kind!r}: use one of {', '.join(ROPE_TYPES)}"
                )
            factor = self.rope_scaling.get("factor")
            if not isinstance(factor, int | float) or isinstance(factor, bool) or factor <= 0:
                raise ValueError(
                    f"model.rope_scaling.factor={factor!r}: must be a positive number "
                    "(the context length multiple)"
                )


@dataclass
class FimConfig:
    rate: float = _f(
        "share of code examples turned into fill-in-the-middle examples (Code Llama: 0.9); code "
        "= records with `language` set (or every record with assume_code) and raw-text chunks "
        "of code files; 0 = off",
        0.0,
    )
    spm_rate: float = _f("share of the FIM examples in SPM order (the rest PSM)", 0.5)
    seed: int = _f("seed of the FIM choices and split points", 0)
    prefix_token: str = _f(
        "prefix sentinel (one token of the vocabulary); empty = detected from the tokenizer "
        "(<fim_prefix>, <|fim_prefix|>, ▁<PRE>, ...)",
        "",
    )
    suffix_token: str = _f("suffix sentinel; empty = detected with prefix_token", "")
    middle_token: str = _f("middle sentinel; empty = detected with prefix_token", "")
    end_token: str = _f(
        "token that ends the middle; empty = the family's own (Code Llama's ▁<EOT>) or EOS", ""
    )
    loss_on_context: bool = _f(
        "also learn the prefix, suffix and sentinel tokens (default: only the middle and END)",
        False,
    )
    assume_code: bool = _f(
        "treat every instruction record as code (a CodeAlpaca data.json, whose export keeps no "
        "`language`); its output is the document",
        False,
    )
    code_suffixes: list[str] = _f(
        "file suffixes whose raw-text chunks count as code", factory=lambda: list(CODE_SUFFIXES)
    )

    def __post_init__(self) -> None:
        for name in ("rate", "spm_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"data.fim.{name}={value!r}: must be in [0, 1]")
        given = [n for n in ("prefix_token", "suffix_token", "middle_token") if getattr(self, n)]
        if given and len(given) < 3:
            missing = sorted({"prefix_token", "suffix_token", "middle_token"} - set(given))
            raise ValueError(
                f"data.fim.{missing[0]}: empty while {', '.join('data.fim.' + g for g in given)} "
                "is set; name all three sentinels or none"
            )
        bad = [s for s in self.code_suffixes if not (isinstance(s, str) and s.startswith("."))]
        if bad:
            raise ValueError(f"data.fim.code_suffixes: {bad!r} must be suffixes like '.py'")

    def overrides(self) -> dict[str, str]:
        return {
            "prefix": self.prefix_token,
            "suffix": self.suffix_token,
            "middle": self.middle_token,
            "end": self.end_token,
        }


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
        "loss on every token, EOS appended, cut into data.max_length windows; with no data.path "
        "(and no --data) training is on the raw text alone; empty = none",
        None,
    )
    fim: FimConfig = _f("fill-in-the-middle examples from code", factory=FimConfig)

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
    method: str = _f(
        "lora (peft adapter; the lora: section) | full (every weight trained, e.g. Alpaca's "
        "FSDP run; no adapter, the output directory is a whole model)",
        "lora",
    )
    model: ModelConfig = _f("the base model", factory=ModelConfig)
    data: DataConfig = _f("the training data and how examples are built", factory=DataConfig)
    lora: LoraSection = _f("the LoRA adapter", factory=LoraSection)
    training: dict[str, Any] = _f(
        "passed through to trl.SFTConfig (TrainingArguments fields)", factory=dict
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: use one of {', '.join(METHODS)}")
        if self.method == "full" and self.model.quantization != "none":
            raise ValueError(
                f"model.quantization={self.model.quantization!r}: quantized weights cannot be "
                "fully fine-tuned; use method: lora (QLoRA) or quantization: none"
            )
        if "max_length" in self.training:
            raise ValueError(
                "training.max_length: set data.max_length instead (our tokenizer truncates so EOS survives)"
            )


def load_train_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """YAML file (optional) + ``--set`` overrides, validated into a :class:`TrainConfig`."""
    data: dict = read_yaml(path) if path else {}
    if overrides:
        data = merge(data, parse_set(overrides))
    return build(TrainConfig, data)


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


__all__ = ["ConfigError", "TrainConfig", "load_train_config"]
