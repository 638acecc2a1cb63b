"""Self-Instruct's classification branch (stage ``classify``, between dedup and answer).

Self-Instruct asks, for each new instruction, whether it is a classification task; for those it
generates instances output-first (the labels, then an input for each), because input-first
generation of a classification task skews towards one label. Here:

- a record of the ``classification`` strategy whose ``meta.is_classification`` is unknown (a
  generated instruction) gets a model query (``prompts/classify_decide.txt``: Yes/No); a seed
  carries the flag and needs none;
- a classification task gets an output-first request (``prompts/classify_instances.txt``), its
  ``Label:`` / ``Input:`` pairs parsed by :func:`parse_instances`; the record takes the pair
  picked by an RNG seeded by its id (uniform over the labels: the label balance follows), and
  keeps every label in ``meta.labels``;
- a task decided not a classification one passes with ``meta.is_classification: false``, to be
  answered input-first by the ``answer`` stage; records of other strategies pass untouched.

Writes ``input``, ``output`` (the label), ``meta``: ``is_classification``, ``label``,
``labels``, ``decision`` (the raw Yes/No reply), ``instances_usage``.

Reject reasons, decided by :func:`check_decision` and :func:`check_instances`:
``unparseable_decision`` (the Yes/No reply is neither), ``unparseable_instances`` (no complete
``Label:`` / ``Input:`` pair), ``single_label`` (one label only: not a fixed set of classes to
balance), plus ``request_failed``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from stages.base import Failure, Render, Request, StageStats, Stream, help_field

_YES = re.compile(r"^\W*(yes|no)\b", re.I)
_PAIR = re.compile(
    r"^[ \t*#>\-\d.]*(?:class\s+)?label\s*\**\s*[:：]\s*\**(?P<label>[^\n]*?)\**\s*\n"
    r"(?:[ \t]*\n)*[ \t*#>\-]*input\s*\**\s*[:：]\s*\**(?P<input>.+?)(?=\n[ \t*#>\-\d.]*(?:class\s+)?label\s*\**\s*[:：]|\n\s*\n|\Z)",
    re.I | re.M | re.S,
)


@dataclass
class ClassifyConfig:
    max_tokens: int = help_field("completion tokens for the output-first instances request", 256)
    temperature: float = help_field("sampling temperature of the instances request", 0.7)

    def __post_init__(self) -> None:
        if self.max_tokens < 32:
            raise ValueError(
                f"generation.classification.max_tokens={self.max_tokens!r}: use at least 32"
            )


def check_decision(text: str) -> tuple[bool | None, str | None]:
    """(is_classification, reject reason) from a Yes/No reply."""
    m = _YES.match(text.strip())
    if not m:
        return None, "unparseable_decision"
    return m.group(1).lower() == "yes", None


def parse_instances(text: str) -> list[tuple[str, str]]:
    """``Label:`` / ``Input:`` pairs of an output-first reply, labels and inputs stripped."""
    pairs = []
    for m in _PAIR.finditer(text):
        label = m.group("label").strip().strip("*\"'<>`").strip()
        inp = m.group("input").strip().strip('*"`').strip()
        if label and inp:
            pairs.append((label, inp))
    return pairs


def check_instances(pairs: list[tuple[str, str]]) -> str | None:
    if not pairs:
        return "unparseable_instances"
    if len({label.lower() for label, _ in pairs}) < 2:
        return "single_label"
    return None


def _chat(kind: str, text: str, params: dict, tag: object) -> Request:
    return Request(
        kind=kind, messages=[{"role": "user", "content": text}], params=params, tag=tag, api="chat"
    )


def run(
    records: Iterable[dict],
    llm: Stream,
    render: Render,
    cfg: ClassifyConfig,
    seed: int,
    top_p: float,
    stats: StageStats,
) -> Iterator[dict]:
    """The ``classify`` stage over one round's records (read whole: two dependent requests per
    record, in record order, so the output order never depends on timing)."""
    recs = list(stats.admit(records))
    todo = [r for r in recs if (r.get("meta") or {}).get("strategy") == "classification"]
    todo_ids = {r["id"] for r in todo}
    decided: dict[str, bool] = {}
    dropped: set[str] = set()

    def decision_requests() -> Iterator[Request]:
        for r in todo:
            flag = r["meta"].get("is_classification")
            if isinstance(flag, bool):
                decided[r["id"]] = flag
                continue
            # Greedy: a yes/no decision, not a sample.
            params = {"temperature": 0.0, "max_tokens": 4, "seed": seed}
            text = render("classify_decide", instruction=r["instruction"]).strip()
            yield _chat("classify", text, params, r)

    for req, resp in llm(decision_requests()):
        r = req.tag
        if isinstance(resp, Failure):
            stats.drop({**r, "meta": {**r["meta"], "error": resp.error}}, resp.kind)
            dropped.add(r["id"])
            continue
        r["meta"] = {**r["meta"], "decision": resp.text}
        flag, reason = check_decision(resp.text)
        if reason:
            stats.drop({**r, "raw": resp.text}, reason)
            dropped.add(r["id"])
        else:
            decided[r["id"]] = flag

    def instance_requests() -> Iterator[Request]:
        for r in todo:
            if decided.get(r["id"]):
                params = {
                    "temperature": cfg.temperature,
                    "top_p": top_p,
                    "max_tokens": cfg.max_tokens,
                    "seed": (seed * 100003 + sum(map(ord, r["id"]))) % (2**31),
                }
                text = render("classify_instances", instruction=r["instruction"]).strip()
                yield _chat("classify_instances", text, params, r)

    filled: dict[str, dict] = {}
    for req, resp in llm(instance_requests()):
        r = req.tag
        if isinstance(resp, Failure):
            stats.drop({**r, "meta": {**r["meta"], "error": resp.error}}, resp.kind)
            dropped.add(r["id"])
            continue
        pairs = parse_instances(resp.text)
        reason = check_instances(pairs)
        if reason:
            stats.drop({**r, "raw": resp.text}, reason)
            dropped.add(r["id"])
            continue
        label, inp = random.Random(f"{seed}:label:{r['id']}").choice(pairs)
        filled[r["id"]] = {
            **r,
            "input": inp,
            "output": label,
            "meta": {
                **r["meta"],
                "is_classification": True,
                "label": label,
                "labels": sorted({lab for lab, _ in pairs}),
                "instances_usage": {
                    "prompt_tokens": resp.prompt_tokens,
                    "completion_tokens": resp.completion_tokens,
                },
            },
        }
    for r in recs:
        if r["id"] in dropped:
            continue
        if r["id"] in filled:
            yield stats.keep(filled[r["id"]])
        elif r["id"] in todo_ids:
            yield stats.keep({**r, "meta": {**r["meta"], "is_classification": False}})
        else:
            yield stats.keep(r)


def label_balance(records: Iterable[dict]) -> dict[str, int]:
    """Kept classification records per label (lower-cased), most common first."""
    counts = Counter(
        str(r["meta"]["label"]).lower()
        for r in records
        if (r.get("meta") or {}).get("label") is not None
    )
    return dict(counts.most_common())
