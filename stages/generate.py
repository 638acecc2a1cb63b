"""Generation stage: build requests from sampled seeds and parse the model's replies.

General mode (Alpaca-style): one request shows k example tasks and asks for a batch of new ones
as ``Task N / Instruction: / Input: / Output:`` blocks; :func:`parse_tasks` splits the reply
tolerantly (misnumbered, merged, markdown-decorated or truncated items). Code mode (CodeAlpaca +
Code Llama's recipe): problems first, then for each kept problem separate sampled requests for
unit tests and for k candidate solutions, stored on the record for the verify stage.

Reads seed records (``instruction``, ``input``, ``output``, code seeds ``tests``). Writes records
with ``id`` (``g<request>-<item>``, stable across reruns), ``instruction``, ``input``, ``output``,
``meta`` (``request``, ``seeds``, ``template``, ``model``, ``request_id``, ``finish_reason``,
``usage``); code records add ``language``, ``tests``, ``candidates``.

Reject reasons: ``unparseable_reply`` (no task found; raw text kept), ``missing_instruction``,
``missing_output``, ``truncated_generation`` (the last item of a reply cut by
``finish_reason=length``), ``request_failed`` (retries exhausted), ``no_tests`` and
``no_candidates`` (code mode: nothing usable came back).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pipeline.prompts import render
from pipeline.stats import StageStats

NO_INPUT = {
    "",
    "<none>",
    "<noinput>",
    "<no input>",
    "none",
    "none.",
    "n/a",
    "no input",
    "no input.",
    "null",
    "-",
    "(none)",
    "empty",
    "(empty)",
}

# A task header: "Task 4", "### Task 4:", "**Task 4.**", "4. " at a line start, "Problem 4".
_HEADER = re.compile(
    r"^[ \t>*#]*(?:task|problem|example)\s*#?\s*(\d+)\s*[:.)\-]*\**[ \t]*(.*)$", re.I | re.M
)
_FIELD = re.compile(
    r"^[ \t>*#\-]*(instructions?|input|output|response|answer)\s*\**\s*[:：]\s*\**[ \t]*",
    re.I | re.M,
)
_CANON = {
    "instruction": "instruction",
    "instructions": "instruction",
    "input": "input",
    "output": "output",
    "response": "output",
    "answer": "output",
}


@dataclass
class Parsed:
    instruction: str | None
    input: str
    output: str | None
    raw: str


def format_task(number: int, rec: dict) -> str:
    inp = rec.get("input", "") or "<none>"
    return render(
        "task_block",
        number=number,
        instruction=rec["instruction"],
        input=inp,
        output=rec.get("output", ""),
    ).rstrip()


def general_prompt(examples: list[dict], count: int, api: str) -> tuple[str, str]:
    """(template name, text) of a general-mode request."""
    blocks = "\n\n".join(format_task(i + 1, r) for i, r in enumerate(examples))
    nxt = len(examples) + 1
    if api == "completion":
        # Ends right after "Instruction:" so the model continues the next task.
        return "general_completion", render(
            "general_completion", examples=blocks, next=nxt
        ).rstrip()
    return "general_chat", render(
        "general_chat", examples=blocks, count=count, next=nxt, last=nxt + count - 1
    )


def code_problem_prompt(examples: list[dict], count: int, api: str) -> tuple[str, str]:
    blocks = "\n\n".join(
        render("code_problem_block", number=i + 1, instruction=r["instruction"]).rstrip()
        for i, r in enumerate(examples)
    )
    nxt = len(examples) + 1
    if api == "completion":
        return "code_problem_completion", render(
            "code_problem_completion", examples=blocks, next=nxt
        ).rstrip()
    return "code_problem_chat", render(
        "code_problem_chat", examples=blocks, count=count, next=nxt, last=nxt + count - 1
    )


def answer_prompt(record: dict) -> str:
    """The user message that asks a chat model to carry out a generated task."""
    if record.get("input"):
        return render(
            "answer_with_input", instruction=record["instruction"], input=record["input"]
        ).strip()
    return render("answer", instruction=record["instruction"]).strip()


def function_name(instruction: str) -> str:
    """The function a code problem asks for: `name(` in backticks, else 'function name'."""
    m = re.search(r"`\s*(?:def\s+)?([A-Za-z_]\w*)\s*\(", instruction) or re.search(
        r"\bfunction\s+(?:called\s+|named\s+)?`?([A-Za-z_]\w*)`?", instruction
    )
    return m.group(1) if m else "solution"


def code_tests_prompt(problem: dict, example: dict, api: str) -> tuple[str, str]:
    name = "code_tests_completion" if api == "completion" else "code_tests_chat"
    return name, render(
        name,
        instruction=problem["instruction"],
        function=function_name(problem["instruction"]),
        example_instruction=example["instruction"],
        example_tests=example.get("tests", "").strip(),
    )


def code_solution_prompt(problem: dict, example: dict, api: str) -> tuple[str, str]:
    name = "code_solution_completion" if api == "completion" else "code_solution_chat"
    return name, render(
        name,
        instruction=problem["instruction"],
        function=function_name(problem["instruction"]),
        example_instruction=example["instruction"],
        example_solution=example.get("output", "").strip(),
    )


def _clean(text: str) -> str:
    text = text.strip()
    # Markdown emphasis the model wraps around whole fields.
    text = re.sub(r"^\*\*\s*|\s*\*\*$", "", text).strip()
    return text


def _split_fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    marks = list(_FIELD.finditer(block))
    if not marks:
        return fields
    head = block[: marks[0].start()].strip()
    if head:
        fields["_head"] = head
    for j, m in enumerate(marks):
        name = _CANON[m.group(1).lower()]
        end = marks[j + 1].start() if j + 1 < len(marks) else len(block)
        value = block[m.end() : end]
        # An "Instruction:" after other fields starts a merged next task: cut there.
        if name == "instruction" and any(k in fields for k in ("instruction", "input", "output")):
            fields["_merged_rest"] = block[m.start() :]
            break
        if name in fields:
            continue
        fields[name] = value
    return fields


def split_blocks(text: str) -> list[str]:
    """Cut a reply into task blocks at "Task N" headers, and at a repeated "Instruction:" when
    the model merged two tasks without a header."""
    heads = list(_HEADER.finditer(text))
    blocks = []
    if not heads:
        blocks = [text]
    else:
        if text[: heads[0].start()].strip():
            blocks.append(text[: heads[0].start()])
        for j, h in enumerate(heads):
            end = heads[j + 1].start() if j + 1 < len(heads) else len(text)
            # Keep the header's trailing text: "Task 4: Rewrite ..." has the instruction inline.
            blocks.append(h.group(2) + "\n" + text[h.end() : end])
    out = []
    for b in blocks:
        while True:
            f = _split_fields(b)
            if "_merged_rest" in f:
                idx = b.find(f["_merged_rest"])
                out.append(b[:idx])
                b = f["_merged_rest"]
                continue
            out.append(b)
            break
    return [b for b in out if b.strip()]


def parse_tasks(text: str, *, need_output: bool = True) -> list[Parsed]:
    """Tolerant parse of a batch reply into tasks (fields may be missing; the caller decides)."""
    items = []
    for block in split_blocks(text):
        f = _split_fields(block)
        instruction = f.get("instruction")
        if instruction is None and f.get("_head"):
            instruction = f["_head"]  # "Task 4: Rewrite the sentence..." with no Instruction: label
        if instruction is None and not f:
            instruction = block if not need_output else None
        inp = _clean(f.get("input", ""))
        items.append(
            Parsed(
                instruction=_clean(instruction) if instruction and _clean(instruction) else None,
                input=""
                if inp.lower().strip("<>[]() ") in {m.strip("<>[]() ") for m in NO_INPUT}
                else inp,
                output=_clean(f["output"])
                if f.get("output") is not None and _clean(f["output"])
                else None,
                raw=block.strip(),
            )
        )
    return items


def extract_code(text: str) -> str:
    """Python source from a reply: the first fenced block, else an unterminated fence's body
    (completion prompts open the fence themselves), else the text as it is."""
    m = re.search(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", text, re.S | re.I)
    if m:
        return m.group(1).strip("\n")
    m = re.search(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*)$", text, re.S | re.I)
    if m:
        return m.group(1).strip("\n")
    return text.strip("\n").split("```")[0].rstrip()


def records_from_reply(
    text: str,
    *,
    request_index: int,
    finish_reason: str,
    meta: dict,
    stats: StageStats,
    mode: str = "general",
    prefix: str = "",
    require_output: bool = True,
) -> Iterator[dict]:
    """Parse one reply into records; drops go to ``stats`` with the raw text kept."""
    full = prefix + text
    items = parse_tasks(full, need_output=(mode == "general"))
    base = {"meta": {**meta, "request": request_index, "reply_finish_reason": finish_reason}}
    if not items:
        stats.total += 1
        meta_all = {**base["meta"], "finish_reason": finish_reason}
        stats.drop({"id": f"g{request_index}", "meta": meta_all, "raw": text}, "unparseable_reply")
        return
    for j, item in enumerate(items):
        stats.total += 1
        last = j == len(items) - 1
        # Only the last item of a reply cut by the length limit is cut; the ones before it were
        # followed by another item, so they are complete.
        rec = {
            "id": f"g{request_index}-{j}",
            "instruction": item.instruction or "",
            "input": item.input,
            "meta": {**base["meta"], "finish_reason": finish_reason if last else "stop"},
        }
        if mode == "general":
            rec["output"] = item.output or ""
        # A cut-off last item is truncated even when only its output would be lost, unless the
        # output is re-asked anyway and the instruction itself is complete (it has a next field).
        if (
            last
            and finish_reason == "length"
            and (require_output or not (item.input or item.output))
        ):
            stats.drop({**rec, "raw": item.raw}, "truncated_generation")
            continue
        if not item.instruction:
            stats.drop({**rec, "raw": item.raw}, "missing_instruction")
            continue
        if mode == "general" and require_output and not item.output:
            stats.drop({**rec, "raw": item.raw}, "missing_output")
            continue
        if mode == "code":
            # A problem is its first paragraph: small models append rambling "rules" after a
            # blank line that contradict the problem and poison the tests and solutions prompts.
            rec["instruction"] = rec["instruction"].split("\n\n")[0].strip()
            rec["language"] = "python"
        stats.kept += 1
        yield rec


def attach_code(problem: dict, tests: Iterable[str], candidates: Iterable[str]) -> dict:
    """The problem record with its first non-empty test suite and its non-empty candidates."""
    tests = [t for t in (t.strip() for t in tests) if t]
    return {
        **problem,
        "tests": tests[0] if tests else "",
        "candidates": [c for c in candidates if c.strip()],
        "output": "",
    }
