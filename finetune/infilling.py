"""HumanEval infilling (Bavarian et al., 2022) without a model: the problems, the middle a
model's reply stands for, and the program that is tested.

The benchmark files are OpenAI's (``HumanEval-SingleLineInfilling.jsonl.gz``,
``HumanEval-MultiLineInfilling.jsonl.gz``, ``HumanEval-RandomSpanInfillingLight.jsonl.gz``, MIT);
the user names the directory that holds them. Each problem is a HumanEval function with a span
cut out: ``prompt`` (the code before it), ``suffix`` (after it), ``canonical_solution`` (the span)
and the original ``test`` and ``entry_point``. A sample's program is
``prompt + middle + suffix``; it passes when HumanEval's tests pass in the sandbox. The
canonical middles score 1.0 on all three splits. Empty middles score 0.0 on random-span-light,
but not quite on the other two: 27 single-line and 55 multi-line spans are lines HumanEval's
tests cannot miss (one comment, and statements such as a ``break`` after which the loop ends
anyway), so an empty middle passes there. That is the data, not the harness (BENCHMARKS.md).

The model is prompted in fill-in-the-middle form with the sentinels it was trained with
(:mod:`finetune.fim`); its middle ends at END. A single-line problem's span is one line by
construction, so its middle is also cut after its first newline: a model that runs on past the
line would otherwise be scored on code that the benchmark never asked for.
"""

from __future__ import annotations

import random
from pathlib import Path

from finetune.humaneval import read_problem_file

SPLITS = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}
FIELDS = ("task_id", "prompt", "suffix", "canonical_solution", "test", "entry_point")


def split_path(data_dir: str | Path, split: str) -> Path:
    """The file of ``split`` in ``data_dir`` (``.jsonl.gz``, or the same name unzipped)."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    d = Path(data_dir)
    for name in (SPLITS[split], SPLITS[split].removesuffix(".gz")):
        if (d / name).exists():
            return d / name
    raise FileNotFoundError(
        f"{d}: no {SPLITS[split]} (HumanEval infilling, github.com/openai/human-eval-infilling)"
    )


def load_problems(
    data_dir: str | Path,
    split: str = "single-line",
    *,
    limit: int | None = None,
    subset: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """The problems of one split in file order; ``subset`` keeps N drawn with ``seed`` (in file
    order), ``limit`` the first N. A malformed line is a RecordError naming file, line, field."""
    path = split_path(data_dir, split)
    problems = read_problem_file(path, FIELDS)
    if subset is not None:
        if subset < 1:
            raise ValueError(f"--subset {subset}: must be at least 1")
        keep = set(random.Random(seed).sample(range(len(problems)), min(subset, len(problems))))
        problems = [p for i, p in enumerate(problems) if i in keep]
    if limit is not None:
        problems = problems[:limit]
    return problems


def middle_from_reply(reply: str, split: str, end: str | None = None) -> str:
    """The middle a generated reply stands for: up to END (when the text still holds it), and
    for a single-line problem up to and including its first newline."""
    if end:
        i = reply.find(end)
        if i != -1:
            reply = reply[:i]
    if split == "single-line":
        i = reply.find("\n")
        if i != -1:
            reply = reply[: i + 1]
    return reply


def samples(problems: list[dict], middles: list[list[str]], replies: list[list[str]]) -> list[dict]:
    """Scoring samples (kind ``infill``: tested as ``prompt + code + suffix``)."""
    out = []
    for p, ms, rs in zip(problems, middles, replies, strict=True):
        for i, (m, r) in enumerate(zip(ms, rs, strict=True)):
            out.append(
                {"task_id": p["task_id"], "sample": i, "reply": r, "code": m, "kind": "infill"}
            )
    return out


def canonical_samples(problems: list[dict]) -> list[dict]:
    """The benchmark's own middles: every one must pass."""
    middles = [[p["canonical_solution"]] for p in problems]
    return samples(problems, middles, middles)


def empty_samples(problems: list[dict]) -> list[dict]:
    """Nothing filled in: fails, except where the span is a line the tests cannot miss."""
    empty = [[""] for _ in problems]
    return samples(problems, empty, empty)
