"""OSS-Instruct (Magicoder): code problems grounded in real code. Request ``i`` draws 1 to
``max_lines`` consecutive lines from one of the source files (its file and first line picked by
an RNG seeded by ``(seed, i)``), asks for a new self-contained problem inspired by them
(``prompts/oss_problem.txt``), and the problem then goes through tests, candidates and verify
like any other (the filter stage's HumanEval decontamination covers the problem).

The source files come in as ``(path, text)`` pairs: the orchestrator lists them with the ingest
walker (its secret, vendored and generated-file skipping), from the current git checkout or
``generation.oss.source``; this module opens nothing.

Writes records with ``id`` ``g<request>-0``, ``instruction`` (the problem), ``input`` (""),
``language: python``, ``meta``: ``strategy: oss``, ``snippet`` (``path``, ``start``, ``end``
line numbers, ``text``), ``round``.

Reject reasons (stage ``generate``): decided by :func:`check_snippet` before any request,
``snippet_contaminated`` (the snippet shares a 13-gram with a HumanEval problem; ``task_id``
kept) and ``snippet_blank`` (only blank lines and comments were drawn); decided by
:func:`check_problem`, ``oss_no_problem`` (the reply holds no problem text: empty, a question back, or
"here is an example" before a solution), ``oss_code_only``
(the reply is code, not a problem statement), ``truncated_generation``; plus
``request_failed``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from stages.base import Failure, Render, Request, Response, StageStats, help_field
from stages.parsing import fenced_blocks

# Openers of replies that write no problem: the model offers help, or presents its own solution.
_NO_PROBLEM = re.compile(
    r"^\W*(?:i'?m ready|i am ready|sure[,!.]|how can i help|what kind of|here is an example|"
    r"here'?s an example|a well-known code snippet)",
    re.I,
)
_CODE_LINE = re.compile(r"^\s*(?:def |class |import |from \S+ import |return\b|for |if |\S+\s*=)")


@dataclass
class OssConfig:
    source: str = help_field(
        "where snippets come from: empty = the current git checkout; a folder (walked like `pipeline ingest`), or a file (each of its line ranges a snippet source)",
        "",
    )
    min_lines: int = help_field("fewest consecutive lines in a snippet", 1)
    max_lines: int = help_field("most consecutive lines in a snippet (Magicoder: 1 to 15)", 15)
    suffixes: list[str] = help_field(
        "file name endings snippets are drawn from", factory=lambda: [".py"]
    )
    max_tokens: int = help_field("completion tokens for the problem request", 256)

    def __post_init__(self) -> None:
        if not 1 <= self.min_lines <= self.max_lines:
            raise ValueError(
                f"generation.oss.min_lines={self.min_lines!r}, max_lines={self.max_lines!r}: need 1 <= min_lines <= max_lines"
            )
        if not self.suffixes:
            raise ValueError("generation.oss.suffixes=[]: name at least one ending, e.g. .py")


def usable_sources(files: list[tuple[str, str]], cfg: OssConfig) -> list[tuple[str, list[str]]]:
    """``(path, lines)`` of the files snippets may come from, in path order (so a draw is a
    function of the seed, not of the walk's order)."""
    out = []
    for path, text in sorted(files):
        if any(path.endswith(s) for s in cfg.suffixes):
            lines = text.splitlines()
            if any(ln.strip() for ln in lines):
                out.append((path, lines))
    return out


def draw_snippet(i: int, seed: int, sources: list[tuple[str, list[str]]], cfg: OssConfig) -> dict:
    rng = random.Random(f"{seed}:oss:{i}")
    path, lines = rng.choice(sources)
    n = rng.randint(cfg.min_lines, min(cfg.max_lines, len(lines)))
    start = rng.randint(0, len(lines) - n)
    text = "\n".join(lines[start : start + n])
    return {"path": path, "start": start + 1, "end": start + n, "text": text}


def check_snippet(
    snippet: dict, contaminated: Callable[[str], str | None]
) -> tuple[str | None, dict]:
    body = [
        ln for ln in snippet["text"].splitlines() if ln.strip() and not ln.strip().startswith("#")
    ]
    if not body:
        return "snippet_blank", {}
    task = contaminated(snippet["text"])
    if task:
        return "snippet_contaminated", {"task_id": task}
    return None, {}


def request(
    i: int,
    seed: int,
    cfg: OssConfig,
    snippet: dict,
    render: Render,
    *,
    temperature: float,
    top_p: float,
) -> Request:
    text = render("oss_problem", language="python", snippet=snippet["text"]).strip()
    params = {
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": cfg.max_tokens,
        "seed": seed * 100003 + i,
    }
    req = Request(
        kind="oss",
        messages=[{"role": "user", "content": text}],
        params=params,
        sample=i,
        api="chat",
    )
    req.tag = {"index": i, "strategy": "oss", "template": "oss_problem", "snippet": snippet}
    return req


def clean(text: str) -> str:
    """The problem statement: the reply's first paragraph of prose, without a label."""
    text = re.sub(r"```.*?(```|\Z)", "", text, flags=re.S).strip()
    text = re.sub(
        r"^\s*[*#>\s]*(?:new\s+)?(?:programming\s+)?problem\s*\d*\s*\**\s*:\s*\**",
        "",
        text,
        flags=re.I,
    )
    return re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0].strip()


def check_problem(reply: str, problem: str) -> str | None:
    if not problem:
        return "oss_code_only" if fenced_blocks(reply, None) else "oss_no_problem"
    if _NO_PROBLEM.match(problem):
        return "oss_no_problem"
    lines = [ln for ln in problem.splitlines() if ln.strip()]
    if lines and sum(bool(_CODE_LINE.match(ln)) for ln in lines) * 2 > len(lines):
        return "oss_code_only"
    return None


def parse(req: Request, resp: Response | Failure, stats: StageStats, meta: dict) -> Iterator[dict]:
    i = req.tag["index"]
    prov = {
        **meta,
        "strategy": "oss",
        "template": req.tag["template"],
        "snippet": req.tag["snippet"],
        "request": i,
    }
    if isinstance(resp, Failure):
        stats.drop({"id": f"g{i}", "meta": {**prov, "error": resp.error}}, resp.kind)
        return
    problem = clean(resp.text)
    rec = {
        "id": f"g{i}-0",
        "instruction": problem,
        "input": "",
        "language": "python",
        "meta": {**prov, "finish_reason": resp.finish_reason},
    }
    if resp.finish_reason == "length" and not problem:
        stats.drop({**rec, "raw": resp.text}, "truncated_generation")
        return
    reason = check_problem(resp.text, problem)
    if reason:
        stats.drop({**rec, "raw": resp.text}, reason)
        return
    yield stats.keep(rec)
