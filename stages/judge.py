"""Judge and select (AlpaGasus / Deita-style data selection).

Stage ``judge`` (after filter; in code mode after verify): an LLM rates each record from 1 to
10 against the rubric in ``prompts/judge_rubric.txt`` (helpfulness, correctness, clarity; for a
code record, whose output is its verified solution, also whether that solution is idiomatic:
``prompts/judge_code_rubric.txt``). The score and the one-line reason are stored in
``meta.judge`` (``score``, ``reason``, ``model``). The judge may be another endpoint than
generation's (``judge.base_url`` / ``judge.model``); the orchestrator hands in its stream.

Stage ``select`` (once, over everything the judge kept): with ``judge.top_k``, the k best by
score (ties in input order), with a diversity guard: a record whose ROUGE-L F against an
already selected one is above ``judge.diversity_threshold`` is not selected.

Reject reasons: ``judge``: ``unparseable_rating`` (no 1-10 score in the reply; raw text kept),
``below_min_score`` (score under ``judge.min_score``), ``request_failed``; ``select``:
``too_similar`` (``nearest_id``, ``score``), ``below_top_k``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from stages.base import Failure, Render, Request, StageStats, Stream, help_field
from stages.rouge import rouge_l

# "Score: 7", "**Score:** 9/10", "Rating = 6" at a line start: the rubric's own answer format.
_LABELLED = re.compile(
    r"^[ \t*#>]*(?:score|rating)[ \t*]*[:=][ \t*]*(\d{1,2}(?:\.\d+)?)", re.I | re.M
)
# A bare number opening the reply ("8/10 - ...", "5\nReason: ...").
_BARE = re.compile(
    r"\A\s*\**(\d{1,2}(?:\.\d+)?)\**\s*(?:/\s*10|out of 10)?\**\s*(?:[-\u2013\u2014:.,]|$)",
    re.I | re.M,
)
# A score mentioned in prose ("a score of 5 out of 10", "7/10").
_INLINE = re.compile(
    r"\bscore (?:of|is) (\d{1,2}(?:\.\d+)?)|\b(\d{1,2}(?:\.\d+)?)\s*(?:/\s*10|out of 10)\b", re.I
)
_REASON = re.compile(
    r"^\s*\**\s*(?:reason|explanation|because)\s*\**\s*[:：]\s*\**\s*(.+)$", re.I | re.M
)


@dataclass
class JudgeConfig:
    enabled: bool = help_field(
        "rate every record with an LLM judge after filter (and verify)", False
    )
    model: str | None = help_field("judge model name; unset = the generation model", None)
    base_url: str | None = help_field(
        "judge endpoint (OpenAI-compatible); unset = the generation endpoint", None
    )
    min_score: float = help_field(
        "below_min_score: drop records rated under this; 0 = keep all", 0.0
    )
    top_k: int = help_field(
        "select: keep only the k best-rated records (with the diversity guard); 0 = no selection",
        0,
    )
    diversity_threshold: float = help_field(
        "select: a record whose ROUGE-L F against an already selected one is above this is not selected",
        0.7,
    )
    max_tokens: int = help_field("completion tokens for a rating", 64)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score <= 10.0:
            raise ValueError(f"judge.min_score={self.min_score!r}: use a score from 0 to 10")
        if self.top_k < 0:
            raise ValueError(f"judge.top_k={self.top_k!r}: use 0 (no selection) or a count")
        if not 0.0 < self.diversity_threshold <= 1.0:
            raise ValueError(
                f"judge.diversity_threshold={self.diversity_threshold!r}: must be in (0, 1]"
            )
        if self.max_tokens < 8:
            raise ValueError(f"judge.max_tokens={self.max_tokens!r}: use at least 8")


def parse_rating(text: str) -> tuple[float | None, str]:
    """(score, reason) from a rating reply. The labelled ``Score:`` line wins; otherwise a bare
    opening number and scores mentioned in prose must agree (a reply opening with "1" that
    later speaks of "a score of 5 out of 10" says no one score: None). A score outside 1-10 is
    None too."""
    m = _LABELLED.search(text)
    if m:
        values, end = {float(m.group(1))}, m.end()
    else:
        bare = _BARE.search(text)
        inline = [float(a or b) for a, b in _INLINE.findall(text)]
        values = ({float(bare.group(1))} if bare else set()) | set(inline)
        end = bare.end(1) if bare else 0
    score = values.pop() if len(values) == 1 else None
    if score is not None and not 1.0 <= score <= 10.0:
        score = None
    r = _REASON.search(text)
    reason = r.group(1).strip() if r else ""
    if not reason and score is not None:
        # "8/10 - the haiku keeps 5-7-5.": the reason follows the score on its line.
        tail = text[end:].lstrip(" /10\u2013\u2014-:.,*\n").rstrip()
        reason = tail.splitlines()[0].strip() if tail else ""
    if not reason:
        rest = [ln.strip() for ln in text.splitlines() if ln.strip() and not _LABELLED.search(ln)]
        reason = rest[0] if rest else ""
    return score, reason[:300]


def check(score: float | None, cfg: JudgeConfig) -> str | None:
    if score is None:
        return "unparseable_rating"
    if score < cfg.min_score:
        return "below_min_score"
    return None


def rating_request(rec: dict, render: Render, cfg: JudgeConfig, code: bool) -> Request:
    inp = rec.get("input") or ""
    output = rec.get("output") or ""
    text = render(
        "judge_rubric",
        instruction=rec.get("instruction", ""),
        input_line=f"\nInput: {inp}" if inp else "",
        output=output,
        code_rubric=render("judge_code_rubric").rstrip("\n") if code else "",
    ).strip()
    # Greedy: a rating is a measurement, so the same record gets the same score on a rerun.
    params = {"temperature": 0.0, "max_tokens": cfg.max_tokens, "seed": 0}
    return Request(
        kind="judge",
        messages=[{"role": "user", "content": text}],
        params=params,
        tag=rec,
        api="chat",
    )


def run(
    records: Iterable[dict], llm: Stream, render: Render, cfg: JudgeConfig, stats: StageStats
) -> Iterator[dict]:
    """The ``judge`` stage: one rating request per record."""

    def requests() -> Iterator[Request]:
        for rec in stats.admit(records):
            yield rating_request(rec, render, cfg, code=bool(rec.get("language")))

    for req, resp in llm(requests()):
        rec = req.tag
        if isinstance(resp, Failure):
            stats.drop(
                {**rec, "meta": {**rec.get("meta", {}), "judge_error": resp.error}}, resp.kind
            )
            continue
        score, reason = parse_rating(resp.text)
        judged = {
            **rec,
            "meta": {
                **rec.get("meta", {}),
                "judge": {"score": score, "reason": reason, "model": resp.model},
            },
        }
        why = check(score, cfg)
        if why:
            stats.drop({**judged, "raw": resp.text}, why)
        else:
            yield stats.keep(judged)


def select(records: Iterable[dict], cfg: JudgeConfig, stats: StageStats) -> list[dict]:
    """The ``select`` stage: the ``top_k`` best-scored records, no two above the ROUGE-L
    ``diversity_threshold``; returned in their input order."""
    recs = list(stats.admit(records))
    order = sorted(range(len(recs)), key=lambda i: -(recs[i]["meta"]["judge"]["score"] or 0.0))
    chosen: list[int] = []
    for i in order:
        rec = recs[i]
        if len(chosen) >= cfg.top_k:
            stats.drop(rec, "below_top_k")
            continue
        best, nearest = 0.0, None
        for j in chosen:
            f = rouge_l(recs[j]["instruction"], rec["instruction"])
            if f > best:
                best, nearest = f, recs[j]["id"]
        if best > cfg.diversity_threshold:
            stats.drop(rec, "too_similar", nearest_id=nearest, score=round(best, 4))
        else:
            chosen.append(i)
    return [stats.keep(recs[i]) for i in sorted(chosen)]


def score_histogram(records: Iterable[dict]) -> dict[int, int]:
    """Judged records per whole score 1..10."""
    counts = Counter(
        int(r["meta"]["judge"]["score"])
        for r in records
        if ((r.get("meta") or {}).get("judge") or {}).get("score") is not None
    )
    return {s: counts.get(s, 0) for s in range(1, 11)}
