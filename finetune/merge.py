"""Merge a LoRA adapter into its base model and save a full HF model (``python -m finetune merge``).

The base is loaded unquantized (in ``dtype``; default: the adapter's training dtype is not
recorded, so fp32 on the CPU and bf16 on a GPU) because LoRA deltas cannot be folded into 4-bit or
8-bit weights without a lossy re-quantization. The tokenizer and ``prompt_format.json`` are copied
next to the merged weights, so the merged directory is also a valid ``--model`` for evaluation.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def merge(
    adapter: str | Path, output: str | Path, *, model: str | None = None, dtype: str = "auto"
) -> Path:
    """Write ``base + adapter`` as a plain causal-LM directory at ``output``."""
    from finetune.model import PROMPT_FORMAT_FILE, load_model

    peft_model, tokenizer = load_model(model, str(adapter), dtype=dtype, device="cpu")
    merged = peft_model.merge_and_unload()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(out)
    pf = Path(adapter) / PROMPT_FORMAT_FILE
    if pf.exists():
        shutil.copy(pf, out / PROMPT_FORMAT_FILE)
    return out
