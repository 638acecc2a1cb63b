"""Evol-Instruct (WizardLM / WizardCoder): a task rewritten into a harder one (in depth) or into a
new one of the same field (in breadth), from seeds and from records kept in earlier rounds, up
to ``generation.evol.rounds`` evolutions deep.

Request ``i`` picks its parent and its operation with an RNG seeded by ``(seed, i)`` over the
seeds plus the evolvable records kept before the round (depth below ``rounds``), so the requests
are a function of the answers. Operations (one prompt each, ``prompts/evol_<op>.txt``): in
depth ``constraints``, ``deepen``, ``concretise``, ``reasoning``, ``complicate_input``; in
breadth ``breadth``.

Writes records with ``id`` ``g<request>-0``, ``instruction`` (the evolved task), ``input`` (""),
``output`` ("": answered later in chat, or in code mode solved and verified like any problem),
``meta``: ``strategy: evol``, ``parent`` (the id evolved), ``operation``, ``depth``, ``round``.

Reject reasons (WizardLM's elimination rules, stage ``generate``), decided by :func:`check`:
``evol_refusal`` (the model apologised or refused), ``evol_copied_prompt`` (the reply copies the
evolving prompt's wording: "rewritten task", "given prompt"...), ``evol_punctuation_only``
(only punctuation and stop words), ``evol_too_short`` (fewer than ``min_words`` words),
``evol_no_new_information`` (every word of the reply is already in the parent); plus
``request_failed`` and ``truncated_generation`` (the reply was cut by the length limit).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from stages.base import Failure, Render, Request, Response, StageStats, help_field

DEPTH = ("constraints", "deepen", "concretise", "reasoning", "complicate_input")
BREADTH = ("breadth",)
OPERATIONS = DEPTH + BREADTH

# Apology and refusal openers of small chat models (WizardLM's rule: the reply says "sorry").
_REFUSAL = re.compile(
    r"\b(?:sorry|i apologi[sz]e|i can(?:no|')t|i am unable|i'm unable|as an ai\b|"
    r"as a language model|i do not have the ability)",
    re.I,
)
# The evolving prompt's own words, echoed instead of a task (WizardLM's rule 4).
_COPIED = re.compile(
    r"rewritten (?:task|prompt|version)|given (?:task|prompt)|#\s*(?:given|rewritten|created)|"
    r"new task:|original task|the task below|harder version",
    re.I,
)
_STOP = frozenset(
    "a an the and or of to in on for with is are be this that it as by at from".split()
)
_WORD = re.compile(r"[A-Za-z0-9]+")
# "Rewritten task:", "New task:", "**Task:**" labels in front of the reply's task.
_LABEL = re.compile(r"^\s*[*#>\s]*(?:rewritten|new|evolved|harder)?\s*task\s*\**\s*:\s*\**", re.I)


@dataclass
class EvolConfig:
    rounds: int = help_field(
        "most evolutions from a seed: a record evolved this many times is not evolved again", 3
    )
    breadth_share: float = help_field(
        "share of evol requests that ask for a new task of the same field (in breadth) rather than a harder one (in depth)",
        0.25,
    )
    min_words: int = help_field("evol_too_short: fewer words than this in the evolved task", 4)
    max_tokens: int = help_field("completion tokens per evolution request", 160)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"generation.evol.rounds={self.rounds!r}: must be at least 1")
        if not 0.0 <= self.breadth_share <= 1.0:
            raise ValueError(
                f"generation.evol.breadth_share={self.breadth_share!r}: must be between 0 and 1"
            )
        if self.min_words < 1:
            raise ValueError(f"generation.evol.min_words={self.min_words!r}: must be at least 1")
        if self.max_tokens < 16:
            raise ValueError(f"generation.evol.max_tokens={self.max_tokens!r}: use at least 16")


def depth_of(record: dict) -> int:
    meta = record.get("meta") or {}
    return int(meta.get("depth", 0)) if meta.get("strategy") == "evol" else 0


def request(
    i: int,
    seed: int,
    cfg: EvolConfig,
    parents: list[dict],
    render: Render,
    *,
    temperature: float,
    top_p: float,
) -> Request:
    """Evolution request ``i``: a seeded parent (from ``parents``, already limited to those
    below ``rounds``) and a seeded operation."""
    rng = random.Random(f"{seed}:evol:{i}")
    parent = rng.choice(parents)
    op = rng.choice(BREADTH) if rng.random() < cfg.breadth_share else rng.choice(DEPTH)
    inp = parent.get("input") or ""
    text = render(
        f"evol_{op}",
        instruction=parent["instruction"],
        input_line=f"\nInput: {inp}" if inp else "",
    ).strip()
    params = {
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": cfg.max_tokens,
        "seed": seed * 100003 + i,
    }
    req = Request(
        kind="evol",
        messages=[{"role": "user", "content": text}],
        params=params,
        sample=i,
        api="chat",
    )
    req.tag = {
        "index": i,
        "strategy": "evol",
        "template": f"evol_{op}",
        "parent": parent,
        "operation": op,
        "cfg": cfg,
    }
    return req


def clean(text: str) -> str:
    """The task in a reply: its first paragraph, without a "Rewritten task:" label or quotes."""
    text = text.strip()
    text = _LABEL.sub("", text, count=1).strip()
    first = re.split(r"\n\s*\n", text, maxsplit=1)[0].strip()
    return first.strip('"“”*` ').strip()


def check(evolved: str, parent: str, cfg: EvolConfig) -> str | None:
    """WizardLM's elimination rules over one evolved task (None keeps)."""
    words = _WORD.findall(evolved.lower())
    if _REFUSAL.search(evolved):
        return "evol_refusal"
    if _COPIED.search(evolved):
        return "evol_copied_prompt"
    if not [w for w in words if w not in _STOP]:
        return "evol_punctuation_only"
    if len(words) < cfg.min_words:
        return "evol_too_short"
    if set(words) <= set(_WORD.findall(parent.lower())):
        return "evol_no_new_information"
    return None


def parse(req: Request, resp: Response | Failure, stats: StageStats, meta: dict) -> Iterator[dict]:
    """One evolution reply into a record (or a reject naming the rule it broke)."""
    i, parent = req.tag["index"], req.tag["parent"]
    prov = {
        **meta,
        "strategy": "evol",
        "parent": parent["id"],
        "operation": req.tag["operation"],
        "depth": depth_of(parent) + 1,
        "template": req.tag["template"],
    }
    if isinstance(resp, Failure):
        stats.drop({"id": f"g{i}", "meta": {**prov, "request": i, "error": resp.error}}, resp.kind)
        return
    evolved = clean(resp.text)
    rec = {
        "id": f"g{i}-0",
        "instruction": evolved,
        "input": "",
        "output": "",
        "meta": {**prov, "request": i, "finish_reason": resp.finish_reason},
    }
    if resp.finish_reason == "length":
        stats.drop({**rec, "raw": resp.text}, "truncated_generation")
        return
    reason = check(evolved, parent["instruction"], req.tag["cfg"])
    if reason:
        stats.drop({**rec, "raw": resp.text}, reason)
        return
    yield stats.keep(rec)
