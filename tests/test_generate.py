"""Prompt rendering and the tolerant reply parser, on real messy replies of small models."""

from __future__ import annotations

from pipeline.prompts import render
from pipeline.stats import StageStats
from stages import generate, parsing, prompting

EXAMPLES = [
    {
        "instruction": "Give three tips for keeping houseplants alive.",
        "input": "",
        "output": "1. Water when dry. 2. Light. 3. Drainage.",
    },
    {
        "instruction": "Classify the sentiment of the review.",
        "input": "The battery died after two days.",
        "output": "negative",
    },
]


def test_task_block_renders_exactly():
    assert prompting.format_task(render, 2, EXAMPLES[1]) == (
        "Task 2\nInstruction: Classify the sentiment of the review.\nInput: The battery died after two days.\nOutput: negative"
    )
    assert prompting.format_task(render, 1, EXAMPLES[0]).splitlines()[2] == "Input: <none>"


def test_completion_prompt_ends_where_the_model_continues():
    name, text = prompting.general_prompt(render, EXAMPLES, 3, "completion")
    assert name == "general_completion"
    assert text.endswith("\n\nTask 3\nInstruction:")
    assert text.count("Task ") == 3


def test_chat_prompt_asks_for_the_numbered_batch():
    name, text = prompting.general_prompt(render, EXAMPLES, 4, "chat")
    assert name == "general_chat"
    assert "numbered Task 3 to Task 6" in text
    assert text == render(
        "general_chat",
        examples="\n\n".join(
            prompting.format_task(render, i + 1, r) for i, r in enumerate(EXAMPLES)
        ),
        count=4,
        next=3,
        last=6,
    )


def test_code_problem_chat_prompt_renders_exactly():
    # The closing sentence exists because Qwen2.5-Coder-0.5B, asked for problems, answered
    # with solutions (tests/data/qwen2.5-coder-0.5b_replies.jsonl: problems_all_code_in_one_fence).
    seeds_ = [{"instruction": "Write a Python function `add(a, b)` that returns a + b."}]
    name, text = prompting.code_problem_prompt(render, seeds_, 2, "chat")
    assert name == "code_problem_chat"
    assert text.endswith(
        "Here are some existing problems:\n\n"
        "Problem 1\nInstruction: Write a Python function `add(a, b)` that returns a + b.\n\n"
        'Write 2 new problems, numbered Problem 2 to Problem 3, in the same format: a line "Problem N", '
        'then a line starting with "Instruction:" that states the whole problem in one paragraph. '
        "Make each differ from the examples and from the others in topic. Write only the problems: "
        "no solutions, no code, no tests, nothing before or after them.\n"
    )
    _, tests = prompting.code_tests_prompt(
        render, {"instruction": "Write `f(x)`."}, {"instruction": "e", "tests": "assert 1"}, "chat"
    )
    assert "Do not write the function itself (`f` already exists)" in tests


# Real SmolLM2-135M replies (completion mode: the prompt ended at "Task 4\nInstruction:").
REPLY_RAMBLING = """ How to make a homemade cat-alligator
Input: <none>
Output: no answer

You've been given a set of tasks, and you need to create them into one task."""

REPLY_INLINE_HEADER = """Task 4: Rewrite the sentence in passive voice
Output: The committee approved the new budget, and it was not recommended by the new team.
Your answer must be a numbered task with a specific length (3-5 sentences)."""


def test_parser_takes_the_prefix_and_a_rambling_tail():
    items = parsing.parse_tasks("Task 4\nInstruction:" + REPLY_RAMBLING)
    assert len(items) == 1
    assert items[0].instruction == "How to make a homemade cat-alligator"
    assert items[0].input == ""
    assert items[0].output.startswith("no answer")


def test_parser_reads_an_instruction_inline_in_the_header():
    [item] = parsing.parse_tasks(REPLY_INLINE_HEADER)
    assert item.instruction == "Rewrite the sentence in passive voice"
    assert item.output.startswith("The committee approved")


def test_parser_splits_misnumbered_merged_and_markdown_items():
    text = """Task 5: Classify the word as noun or verb.
Input: run
Output: verb
Instruction: Name three primes.
Output: 2, 3, 5

**Task 9**
**Instruction:** Summarize the text.
**Input:** The cat sat on the mat all day.
**Output:** A cat sat on a mat.

### Task 7.
Instructions: Give an antonym of "cold".
Response: hot"""
    items = parsing.parse_tasks(text)
    assert [i.instruction for i in items] == [
        "Classify the word as noun or verb.",
        "Name three primes.",
        "Summarize the text.",
        'Give an antonym of "cold".',
    ]
    assert [i.input for i in items] == ["run", "", "The cat sat on the mat all day.", ""]
    assert [i.output for i in items] == ["verb", "2, 3, 5", "A cat sat on a mat.", "hot"]


def test_records_from_reply_rejects_the_truncated_last_item_and_missing_fields():
    text = "Task 4\nInstruction: Name a colour.\nInput: <none>\nOutput: Blue.\n\nTask 5\nInstruction: Write a limerick.\nInput:\nOutput:\n\nTask 6\nInstruction: Describe the ocean in one"
    stats = StageStats(stage="generate")
    dropped: list[dict] = []
    stats.sink = dropped.append
    recs = list(
        generate.records_from_reply(
            text, request_index=7, finish_reason="length", meta={"model": "m"}, stats=stats
        )
    )
    assert [r["id"] for r in recs] == ["g7-0"]
    # The items before the cut are complete: only the reply as a whole was cut.
    assert (
        recs[0]["meta"]["finish_reason"] == "stop"
        and recs[0]["meta"]["reply_finish_reason"] == "length"
    )
    assert recs[0]["meta"]["request"] == 7
    assert [d["reject"]["reason"] for d in dropped] == ["missing_output", "truncated_generation"]
    assert stats.total == 3 and stats.kept == 1
    assert dropped[1]["raw"].endswith("Describe the ocean in one")


def test_unparseable_reply_keeps_the_raw_text():
    stats = StageStats(stage="generate")
    dropped: list[dict] = []
    stats.sink = dropped.append
    assert (
        list(
            generate.records_from_reply(
                "", request_index=3, finish_reason="stop", meta={}, stats=stats
            )
        )
        == []
    )
    assert dropped[0]["reject"]["reason"] == "unparseable_reply" and dropped[0]["raw"] == ""


def test_code_helpers():
    assert (
        prompting.function_name("Write a Python function `merge_intervals(intervals)` that merges.")
        == "merge_intervals"
    )
    assert (
        prompting.function_name("Write a function called is_leap that checks years.") == "is_leap"
    )
    assert (
        parsing.extract_code("Here:\n```python\ndef f(x):\n    return x\n```\nDone")
        == "def f(x):\n    return x"
    )
    # Completion prompts open the fence themselves; the model's text ends at the closing one.
    assert (
        parsing.extract_code("```python\n" + "def g():\n    return 1\n") == "def g():\n    return 1"
    )
    rec = generate.attach_code(
        {"id": "p"}, ["", "assert f(1) == 1"], ["def f(x):\n    return x", "  "]
    )
    assert rec["tests"] == "assert f(1) == 1" and rec["candidates"] == ["def f(x):\n    return x"]
