"""Export stage: kept records to Alpaca/CodeAlpaca JSON (``instruction``, ``input`` ("" when
none), ``output``) and to chat messages (``{"messages": [...]}``, which tokenizers'
``apply_chat_template`` take), with an optional seeded train/validation split.

Reads ``instruction``, ``input``, ``output``. Reject reasons: ``empty_output`` (a record that
reaches export without an output, e.g. a code problem that was never verified),
``empty_instruction``, ``over_target`` (kept by every stage, but past the number asked for).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from stages.base import StageStats


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


def run(records: Iterable[dict], stats: StageStats, *, limit: int | None = None) -> Iterator[dict]:
    """Exportable records in order; past ``limit`` kept ones the rest are ``over_target``
    (records a run made beyond what it was asked for: written with their reason, not lost)."""
    for rec in stats.admit(records):
        reason = check(rec)
        if reason is None and limit is not None and stats.kept >= limit:
            reason = "over_target"
        if reason:
            stats.drop(rec, reason)
        else:
            yield stats.keep(rec)


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
