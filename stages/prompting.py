"""Request text for every generation step, rendered from ``prompts/`` templates through the
``render`` callable the orchestrator hands in (stages read no files)."""

from __future__ import annotations

import builtins
import re

from stages.base import Render


def format_task(render: Render, number: int, rec: dict) -> str:
    inp = rec.get("input", "") or "<none>"
    return render(
        "task_block",
        number=number,
        instruction=rec["instruction"],
        input=inp,
        output=rec.get("output", ""),
    ).rstrip()


def general_prompt(render: Render, examples: list[dict], count: int, api: str) -> tuple[str, str]:
    """(template name, text) of a general-mode request."""
    blocks = "\n\n".join(format_task(render, i + 1, r) for i, r in enumerate(examples))
    nxt = len(examples) + 1
    if api == "completion":
        # Ends right after "Instruction:" so the model continues the next task.
        return "general_completion", render(
            "general_completion", examples=blocks, next=nxt
        ).rstrip()
    return "general_chat", render(
        "general_chat", examples=blocks, count=count, next=nxt, last=nxt + count - 1
    )


def code_problem_prompt(
    render: Render, examples: list[dict], count: int, api: str
) -> tuple[str, str]:
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


def answer_prompt(render: Render, record: dict) -> str:
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


_BUILTINS = frozenset(dir(builtins))


def names_under_test(instruction: str) -> list[str]:
    """Every function or class a code problem names in backticks (`f(x)`, `Stack`), the one
    :func:`function_name` finds first: what a test suite must call and must not define."""
    names = [function_name(instruction)]
    for span in re.findall(r"`([^`\n]+)`", instruction):
        m = re.match(r"\s*(?:def\s+|class\s+)?([A-Za-z_]\w*)\s*(\()?", span)
        if not m:
            continue
        name, call = m.groups()
        whole = m.end() == len(span.rstrip()) or call
        # `True`, `None`, `ValueError`: Python's own names, not the code under test.
        if whole and (call or name[0].isupper()) and name not in names and name not in _BUILTINS:
            names.append(name)
    return [n for n in names if n != "solution"]


def code_tests_prompt(render: Render, problem: dict, example: dict, api: str) -> tuple[str, str]:
    name = "code_tests_completion" if api == "completion" else "code_tests_chat"
    return name, render(
        name,
        instruction=problem["instruction"],
        function=function_name(problem["instruction"]),
        example_instruction=example["instruction"],
        example_tests=example.get("tests", "").strip(),
    )


def code_solution_prompt(render: Render, problem: dict, example: dict, api: str) -> tuple[str, str]:
    name = "code_solution_completion" if api == "completion" else "code_solution_chat"
    return name, render(
        name,
        instruction=problem["instruction"],
        function=function_name(problem["instruction"]),
        example_instruction=example["instruction"],
        example_solution=example.get("output", "").strip(),
    )
