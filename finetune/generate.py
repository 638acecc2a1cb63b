"""Answer one instruction with a trained adapter (``python -m finetune generate``).

The prompt is rebuilt from the adapter's ``prompt_format.json`` with
:func:`finetune.data.format_prompt`, the same function training used, and tokenized the same way
(BOS for the Alpaca prompt, none added to a chat template's own). Decoding is greedy unless a
temperature is given, and stops at the tokenizer's EOS.
"""

from __future__ import annotations

from typing import Any


def generate(
    model: Any,
    tokenizer: Any,
    instruction: str,
    input: str = "",
    *,
    prompt_format: str | dict = "alpaca",
    max_new_tokens: int = 256,
    temperature: float = 0.0,
) -> str:
    """The model's response (special tokens stripped) to one instruction."""
    import torch

    from finetune.data import format_prompt, prompt_add_special_tokens

    prompt = format_prompt(instruction, input, tokenizer, prompt_format)
    enc = tokenizer(
        prompt, return_tensors="pt", add_special_tokens=prompt_add_special_tokens(prompt_format)
    )
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(**enc, **kwargs)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
