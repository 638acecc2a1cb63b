"""The reply parser on chat-style replies: real Qwen2.5-Coder-0.5B-Instruct answers to the
generation prompts (``tests/data/qwen2.5-coder-0.5b_replies.jsonl``, collected from the embedded
server, unedited), each showing one chat habit the parser must see through. The completion-style
(SmolLM2) cases are in ``tests/test_generate.py``."""

from __future__ import annotations

import json
from pathlib import Path

from stages import prompting, verify
from stages.parsing import extract_code, extract_solution, extract_tests, is_chatter, parse_tasks

DATA = Path(__file__).parent / "data" / "qwen2.5-coder-0.5b_replies.jsonl"
REPLIES = {r["name"]: r for r in map(json.loads, DATA.read_text(encoding="utf-8").splitlines())}


def problems(name: str) -> list[str]:
    """The code problems generation would keep from a reply (first paragraph, as it does)."""
    items = parse_tasks(REPLIES[name]["text"], need_output=False)
    return [i.instruction.split("\n\n")[0] for i in items if i.instruction]


def no_fence_title_or_chatter(instructions: list[str]) -> None:
    for ins in instructions:
        assert "```" not in ins and not ins.lstrip().startswith(("#", "*", "def ", "class "))
        assert not is_chatter(ins), ins


def test_numbered_bold_list_of_functions():
    got = problems("problems_numbered_bold_list")
    assert [g.split(".")[0] for g in got] == [
        "Write a Python function `count_paths(grid)`",
        "Write a Python function `prime_factors(n)`",
        "Write a Python function `shortest_path(graph, start, goal)`",
    ]
    # The bullets under each title are its text; the closing remark is no problem of its own.
    assert "If the start or end is blocked, return 0." in got[0]
    assert not any("self-contained and include all necessary imports" in g for g in got)
    no_fence_title_or_chatter(got)


def test_heading_and_repeated_header_are_one_problem_and_its_example_code_is_cut():
    # "# Problem 4: Title" then a bare fence, "Problem 4", "Instruction: ...", "Example:" + code.
    got = problems("problems_heading_then_repeated_header")
    assert [g.split(" that ")[0] for g in got] == [
        "Write a Python function `count_paths(grid)`",
        "Write a Python function `prime_factors(n)`",
        "Write a Python function `shortest_path(graph, start, goal)`",
    ]
    assert got[0].endswith("Return 0 if the start or end is blocked.")
    no_fence_title_or_chatter(got)


def test_solutions_instead_of_problems_give_no_problem():
    # The model answered with code: "# Problem 1: ..." comments inside a ```python fence are not
    # headers, and neither the code nor a bare heading over it is a problem statement.
    assert problems("problems_all_code_in_one_fence") == []
    assert problems("problems_heading_over_solution_code") == []


def test_labels_written_on_one_line():
    items = parse_tasks(REPLIES["general_labels_inline_on_one_line"]["text"])
    assert items[0].instruction == 'Replace every word in the text with "Hello, World!".'
    assert items[0].input == "I'm learning how to write code and understand basic concepts."
    assert items[0].output == "Hello, World!"
    assert items[1].instruction == "Summarise the passage in no more than 25 words."
    assert items[1].input.startswith("The sky is blue") and items[1].output is None


def test_numbered_items_that_carry_their_instruction():
    items = parse_tasks(REPLIES["general_numbered_items_without_instruction_label"]["text"])
    assert len(items) == 3
    assert items[0].instruction.startswith("Rewrite the piece of feedback")
    assert items[0].input.startswith("This presentation was a mess.")
    assert items[0].output.endswith("that would make your argument much clearer.")
    assert items[1].instruction.startswith("Four friends have a restaurant bill of $240.")
    assert items[1].input == "" and items[1].output.endswith("Each person pays $276 ÷ 4 = $69.")
    assert not any(i.instruction[:2] in ("4.", "5.", "6.") for i in items)


def test_a_bare_title_is_not_an_instruction():
    items = parse_tasks(REPLIES["general_title_only_task"]["text"])
    assert [i.instruction for i in items][:2] == [
        "Explain gravity to a six-year-old.",
        "A jacket costs $80. It is on sale for 25% off, and then 8% sales tax is added to the "
        "sale price. What is the final price? Show your working.",
    ]
    # "Task 6: Classification" has a header and fields but no task: a reject, not a record.
    assert items[2].instruction is None


def test_tests_reply_loses_its_own_copy_of_the_function():
    text = REPLIES["tests_with_own_copy_of_the_function"]["text"]
    record = {"candidates": ["def run_length_decode(s):\n    return s\n"]}
    # Taken whole, the tests test their own copy of the function: verify rejects them.
    assert verify.check_tests({**record, "tests": extract_code(text)}) == "tests_call_nothing"
    tests = extract_tests(text, "run_length_decode")
    assert "def run_length_decode" not in tests
    assert tests.count("assert run_length_decode(") == 3
    assert "from typing import List" in tests
    assert verify.check_tests({**record, "tests": tests}) is None


def test_solution_reply_loses_its_demo_tail():
    text = REPLIES["solution_with_broken_demo_tail"]["text"]
    assert '# Test cases\nprint(evaluate("1 + 2 * 3"))' in extract_code(text)
    code = extract_solution(text)
    assert code.startswith("import re\n\ndef evaluate(expression):")
    assert code.endswith("    return result") and "print(" not in code


def test_solution_without_demo_is_unchanged():
    text = "```python\ndef f(x):\n    print('debug')\n    return x\n\nLIMIT = 3\n```"
    assert extract_solution(text) == "def f(x):\n    print('debug')\n    return x\n\nLIMIT = 3"
    assert extract_tests("```python\nassert f(1) == 1\n```", "f") == "assert f(1) == 1"


def test_tests_reply_that_is_only_its_own_class_gives_no_tests():
    # Asked for asserts on `TwoStackQueue` (seed_task_277), the model fenced its own class.
    reply = REPLIES["tests_with_own_copy_of_the_class"]
    instruction = (
        "Write a Python class `TwoStackQueue` that implements a first-in, first-out queue using "
        "two Python lists as stacks, with methods `enqueue(item)` and `dequeue()` and support for "
        "`len()`."
    )
    names = prompting.names_under_test(instruction)
    assert names == ["enqueue", "TwoStackQueue", "dequeue"]
    record = {"candidates": ["class TwoStackQueue:\n    pass\n"]}
    assert verify.check_tests({**record, "tests": extract_code(reply["text"])}) in (
        "tests_call_nothing",
    )
    tests = extract_tests(reply["text"], names)
    assert "class TwoStackQueue" not in tests
    assert verify.check_tests({**record, "tests": tests}) == "no_tests"


def test_prose_that_names_problem_numbers_is_no_header():
    # A completion-style reply whose closing prose begins "Problem 1 and Problem 2 are provided
    # to ...": a number followed by running lowercase text is a sentence, not a task header.
    r = REPLIES["problems_closing_prose_names_problem_numbers"]
    items = parse_tasks(r["prefix"] + r["text"], need_output=False)
    got = [i.instruction.split("\n\n")[0] for i in items if i.instruction]
    assert [g.split(" that ")[0] for g in got] == [
        "Write a Python function `is_in_pascals_triangle(n, m)`",
        "Write a Python function `count_odd_and_even_numbers_in_pascals_triangle(n)`",
    ]
    assert not any(g.startswith("and Problem") or "are provided" in g for g in got)
    no_fence_title_or_chatter(got)
