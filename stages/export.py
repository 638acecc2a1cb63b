"""Export stage: kept records to Alpaca/CodeAlpaca JSON (``instruction``, ``input`` ("" when
none), ``output``) and to chat messages (``{"messages": [...]}``, which tokenizers'
``apply_chat_template`` take), with an optional seeded train/validation split.

Reads ``instruction``, ``input``, ``output``. Reject reason: ``empty_output`` (a record that
reaches export without an output, e.g. a code problem that was never verified).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from pipeline.stats import StageStats


def check(record: dict) -> str | None:
    if not str(record.get("output", "")).strip():
        return "empty_output"
    if not str(record.get("instruction", "")).strip():
        return "empty_instruction"
    return None


def to_alpaca(record: dict) -> dict:
    return {
        "instruction": record["instruction"],
        "input": record.get("input", "") or "",
        "output": record["output"],
    }


def to_messages(record: dict, system_prompt: str = "") -> dict:
    user = record["instruction"]
    if record.get("input"):
        user = f"{user}\n\n{record['input']}"
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [
        {"role": "user", "content": user},
        {"role": "assistant", "content": record["output"]},
    ]
    return {"id": record.get("id"), "messages": messages}


def run(records: Iterable[dict], stats: StageStats) -> Iterator[dict]:
    for rec in records:
        stats.total += 1
        reason = check(rec)
        if reason:
            stats.drop(rec, reason)
            continue
        stats.kept += 1
        yield rec


def split(
    records: list[dict], validation_fraction: float, seed: int
) -> tuple[list[dict], list[dict]]:
    """Seeded split; the validation part gets round(n * fraction) records (at least one when the
    fraction is positive and there are two or more records)."""
    if validation_fraction <= 0 or len(records) < 2:
        return list(records), []
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    n_val = max(1, round(len(records) * validation_fraction))
    val_idx = set(idx[:n_val])
    return [r for i, r in enumerate(records) if i not in val_idx], [
        r for i, r in enumerate(records) if i in val_idx
    ]
