"""Seed stage: validate seed tasks (self-instruct schema) and sample prompt examples.

Reads the self-instruct schema (``id``, ``name``, ``instruction``, ``instances: [{input,
output}]``, ``is_classification``; code seeds add ``language`` and ``tests``), so Alpaca's and
CodeAlpaca's seed files work unchanged. Writes pipeline records: ``id``, ``instruction``,
``input``, ``output``, ``meta`` (``source: seed``, ``name``, ``is_classification``), plus
``language``/``tests`` for code seeds. A malformed seed raises a RecordError naming the file,
the line and the field; there are no silent drops here.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from stages.base import RecordError
from stages.parsing import normalize_input


def seed_to_record(obj: dict, path: str = "<seeds>", line: int = 0) -> dict:
    """Validate one seed task and turn it into a pipeline record."""

    def need(field: str, kind: type | tuple[type, ...]) -> object:
        if field not in obj:
            raise RecordError(path, line, field, "missing")
        if not isinstance(obj[field], kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise RecordError(
                path, line, field, f"expected {names}, got {type(obj[field]).__name__}"
            )
        return obj[field]

    sid = need("id", (str, int))
    instruction = need("instruction", str)
    if not instruction.strip():
        raise RecordError(path, line, "instruction", "empty")
    instances = need("instances", list)
    if not instances:
        raise RecordError(
            path, line, "instances", "empty list: a seed needs at least one {input, output}"
        )
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise RecordError(
                path, line, f"instances[{i}]", "expected an object with input and output"
            )
        for f in ("input", "output"):
            if f not in inst:
                raise RecordError(path, line, f"instances[{i}].{f}", "missing")
            if not isinstance(inst[f], str):
                raise RecordError(
                    path, line, f"instances[{i}].{f}", f"expected str, got {type(inst[f]).__name__}"
                )
    is_cls = obj.get("is_classification", False)
    if not isinstance(is_cls, bool):
        raise RecordError(
            path, line, "is_classification", f"expected true or false, got {is_cls!r}"
        )
    first = instances[0]
    inp = first["input"]
    rec = {
        "id": str(sid),
        "instruction": instruction.strip(),
        "input": normalize_input(inp),
        "output": first["output"],
        "meta": {"source": "seed", "name": obj.get("name", ""), "is_classification": is_cls},
    }
    if "language" in obj:
        rec["language"] = need("language", str)
    if "tests" in obj:
        rec["tests"] = need("tests", str)
        rec.setdefault("language", "python")
    return rec


def load_seed_records(numbered: Iterable[tuple[int, dict]], path: str) -> list[dict]:
    """Validate ``(line, object)`` pairs; duplicate ids are an error naming both lines."""
    records, seen = [], {}
    for line, obj in numbered:
        rec = seed_to_record(obj, path, line)
        if rec["id"] in seen:
            raise RecordError(
                path, line, "id", f"duplicate id {rec['id']!r} (first on line {seen[rec['id']]})"
            )
        seen[rec["id"]] = line
        records.append(rec)
    if not records:
        raise RecordError(path, 1, None, "the seed file holds no tasks")
    return records


def is_code(record: dict) -> bool:
    return bool(record.get("language")) or bool(record.get("tests"))


def pool_for_mode(seeds: list[dict], mode: str) -> list[dict]:
    """Code mode samples code seeds and general mode the others; a file holding only one kind
    (Alpaca's general seeds, CodeAlpaca's code seeds) is used whole."""
    wanted = [s for s in seeds if is_code(s) == (mode == "code")]
    return wanted or list(seeds)


def sample_seeds(
    pool: list[dict],
    k: int,
    rng: random.Random,
    generated: list[dict] | None = None,
    mix: float = 0.0,
) -> list[dict]:
    """k prompt examples: seeds, with a ``mix`` share drawn from already kept generated records
    (self-instruct's recipe) once there are enough of them."""
    n_gen = 0
    if generated and mix > 0:
        n_gen = min(len(generated), round(k * mix))
    picks = rng.sample(generated, n_gen) if n_gen else []
    picks += rng.sample(pool, min(k - n_gen, len(pool)))
    rng.shuffle(picks)
    return picks
