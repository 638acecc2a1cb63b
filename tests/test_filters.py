"""Every filter rule, each with an example of the defect it removes, plus keep cases.

The examples are written for this project in the shape of defects seen in real self-instruct
data (Alpaca-style generations, GSM8K text with a Cyrillic homoglyph, replies that run on into
the next task, refusals, ANSI escapes pasted from a terminal).
"""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.stats import StageStats
from stages.filters import FilterConfig, check, normalize, python_source, run

GOOD = {
    "id": "g1-0",
    "instruction": "Give three tips for keeping a sourdough starter healthy.",
    "input": "",
    "output": "Feed it on a schedule, keep it at a steady room temperature, and discard part "
    "of it before each feeding so the yeast does not run out of food.",
    "meta": {"finish_reason": "stop"},
}
GENERAL = FilterConfig()
CODE = FilterConfig(mode="code")


def rec(**fields):
    return {**GOOD, **fields}


@pytest.mark.parametrize(
    ("record", "cfg", "reason"),
    [
        pytest.param(rec(instruction="Summarize."), GENERAL, "too_short", id="too_short"),
        pytest.param(
            rec(instruction="Explain " + "the causes of the war and " * 40),
            GENERAL,
            "too_long",
            id="too_long",
        ),
        pytest.param(
            rec(instruction='"Describe the water cycle in simple terms."'),
            GENERAL,
            "starts_with_punctuation",
            id="quoted_instruction",
        ),
        pytest.param(
            # Cyrillic "А" (U+0410) looks like Latin "A": a homoglyph seen in word problems.
            rec(
                instruction="\u0410 baker sells 24 muffins a day. How many does she sell in a week?"
            ),
            GENERAL,
            "non_ascii_start",
            id="homoglyph_start",
        ),
        pytest.param(
            rec(instruction="Draw a diagram of the human heart and label its chambers."),
            GENERAL,
            "blocklisted_word",
            id="draw_diagram",
        ),
        pytest.param(
            rec(instruction="Generate a graph showing the growth of smartphone sales since 2010."),
            GENERAL,
            "blocklisted_word",
            id="graph",
        ),
        pytest.param(
            rec(instruction="Write a program that prints the first ten prime numbers."),
            GENERAL,
            "program_request",
            id="write_a_program",
        ),
        pytest.param(
            rec(instruction="Summarize the news story at https://www.example.com/2023/05/story."),
            GENERAL,
            "unseen_reference",
            id="url",
        ),
        pytest.param(
            rec(instruction="Describe what is happening in the scene.", input="[image: beach.jpg]"),
            GENERAL,
            "unseen_reference",
            id="image_input",
        ),
        pytest.param(
            rec(instruction="Proofread the attached essay and list the mistakes you find."),
            GENERAL,
            "unseen_reference",
            id="attachment",
        ),
        pytest.param(
            rec(output="The build failed with \x1b[31merror: missing semicolon\x1b[0m on line 4."),
            GENERAL,
            "control_characters",
            id="ansi_escape",
        ),
        pytest.param(
            rec(meta={"finish_reason": "length"}), GENERAL, "truncated_generation", id="length"
        ),
        pytest.param(rec(output="  \n "), GENERAL, "empty_output", id="blank_output"),
        pytest.param(rec(output="N/A"), GENERAL, "non_answer", id="na"),
        pytest.param(
            rec(output="I'm sorry, but as an AI language model I cannot browse the internet."),
            GENERAL,
            "non_answer",
            id="refusal",
        ),
        pytest.param(
            rec(
                instruction="Correct the grammar of the sentence below.",
                input="She don't like going to the dentist.",
                output="She don't like going to the dentist.\n",
            ),
            GENERAL,
            "output_copies_input",
            id="copies_input",
        ),
        pytest.param(
            rec(
                instruction="Explain why the sky looks blue during the day.",
                output="Explain why the sky looks blue during the day.",
            ),
            GENERAL,
            "output_restates_instruction",
            id="restates",
        ),
        pytest.param(
            rec(
                instruction="Name the capital of Australia.",
                output="The capital of Australia is Canberra.\n\n3. Instruction: Name the "
                "largest desert in the world.",
            ),
            GENERAL,
            "template_leak",
            id="next_task_merged",
        ),
        pytest.param(
            rec(output="Canberra is the capital.\n### Response:\nCanberra"),
            GENERAL,
            "template_leak",
            id="hash_response",
        ),
        pytest.param(
            rec(output="Canberra is the capital of Australia.<|im_end|>"),
            GENERAL,
            "template_leak",
            id="chatml_token",
        ),
        pytest.param(
            rec(output="The three primary colors of paint are red, yellow, and"),
            GENERAL,
            "truncated_output",
            id="mid_sentence",
        ),
        pytest.param(
            rec(output="Here is the function:\n```python\ndef area(r):\n    return 3.14159 * r"),
            GENERAL,
            "truncated_output",
            id="unclosed_fence",
        ),
        pytest.param(
            rec(
                instruction="Write a function that adds two numbers.",
                output="```python\ndef add(a, b)\n    return a + b\n```",
                language="python",
            ),
            CODE,
            "python_syntax_error",
            id="missing_colon",
        ),
        pytest.param(
            {"id": "x", "input": "", "output": "Yes."},
            GENERAL,
            "missing_instruction",
            id="no_instruction",
        ),
        pytest.param(rec(output=["a", "list"]), GENERAL, "invalid_output", id="list_output"),
    ],
)
def test_each_rule_rejects_its_defect(record, cfg, reason):
    assert check(normalize(record, cfg), cfg) == reason


def test_good_records_are_kept():
    assert check(GOOD, GENERAL) is None
    code = {
        "id": "c1",
        "instruction": "Write a function that returns the largest of three numbers.",
        "input": "",
        "output": "Here it is:\n```python\ndef largest(a, b, c):\n    return max(a, b, c)\n```",
        "language": "python",
        "meta": {},
    }
    assert check(code, CODE) is None
    # "file" and "map" are ordinary words in programming tasks; a URL in the instruction too.
    code2 = {
        **code,
        "instruction": "Write a function that reads a CSV file and maps each row to a dict, "
        "given a URL such as https://example.com/data.csv to download it from.",
    }
    assert check(code2, CODE) is None
    # A multiple-choice answer is short, not truncated.
    assert check(rec(instruction="Which letter comes first, a or b?", output="a"), GENERAL) is None


def test_near_misses_of_the_heuristics_are_kept():
    """Each of these once tripped a rule in this project's own seed tasks."""
    keep = [
        # A letter's sign-off ends with a comma; that is not a cut-off sentence.
        rec(output="Dear Ms Carter,\n\nThe delivery will arrive on Thursday.\n\nKind regards,"),
        # An input may talk about photos or links; only a bare pointer is unseen.
        rec(
            instruction="Classify the sentiment of the review as positive or negative.",
            input="It looked great in the photos, but it broke after a week.",
            output="negative",
        ),
        rec(
            instruction="Decide whether this message is spam. Answer with the label only.",
            input="You won a prize! Click the link within 24 hours to claim it.",
            output="spam",
        ),
        # Changing only the case is the whole task here.
        rec(
            instruction="Convert the headline to title case.",
            input="the secret life of bees",
            output="The Secret Life of Bees",
        ),
        # Code may end in a word like "a".
        rec(
            instruction="Write a Python function that returns the n-th Fibonacci number.",
            output="def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
            "    return a",
        ),
    ]
    for r in keep:
        assert check(r, GENERAL) is None, r
    code = {**keep[-1], "language": "python"}
    assert check(code, CODE) is None


@pytest.mark.parametrize(
    "pointer", ["https://example.com/report.pdf", "Image: beach.jpg", "<image>", "(see attached)"]
)
def test_an_input_that_is_only_a_pointer_is_unseen(pointer):
    r = rec(instruction="Summarize the main points of the document.", input=pointer)
    assert check(r, GENERAL) == "unseen_reference"
    assert check({**r, "language": "python"}, CODE) == "unseen_reference"


def test_each_rule_can_be_turned_off():
    cases = [
        (rec(instruction="Summarize."), {"min_words": 1}),
        (rec(instruction='"Describe the water cycle."'), {"reject_punctuation_start": False}),
        (rec(instruction="Draw a map of your town."), {"blocklist": []}),
        (rec(instruction="Write a program that sorts a list."), {"reject_program_requests": False}),
        (
            rec(instruction="Read https://example.com and tell me what it says."),
            {"reject_unseen_references": False},
        ),
        (rec(output="N/A"), {"non_answer_patterns": []}),
        (rec(meta={"finish_reason": "length"}), {"reject_finish_length": False}),
        (
            rec(output="The primary colors are red, yellow, and"),
            {"reject_truncated_outputs": False},
        ),
        (rec(output="Done \x07 now."), {"reject_control_characters": False}),
        (
            rec(instruction="\u0410 farmer has six cows and two goats."),
            {"reject_non_ascii_start": False},
        ),
        (
            rec(input="It rains today.", output="It rains today."),
            {"reject_output_copies_input": False},
        ),
        (rec(output="   "), {"reject_empty_output": False}),
        (rec(output="Paris.\n### Instruction: next"), {"reject_template_leaks": False}),
        (rec(output=GOOD["instruction"]), {"restatement_threshold": 1.0}),
    ]
    for record, change in cases:
        assert check(record, GENERAL) is not None, change
        assert check(record, dataclasses.replace(GENERAL, **change)) is None, change


def test_code_problems_without_output_skip_output_rules():
    problem = {
        "id": "g0-1",
        "instruction": "Write a function that returns the n-th Fibonacci number.",
        "input": "",
        "language": "python",
        "meta": {"finish_reason": "stop"},
    }
    assert check(problem, CODE) is None  # no output key: not yet generated
    assert check({**problem, "output": "", "stage_hint": "problem"}, CODE) is None
    assert check({**problem, "output": ""}, CODE) == "empty_output"  # generated, but empty
    # Instruction rules still apply to problems.
    assert check({**problem, "instruction": "Fibonacci?"}, CODE) == "too_short"
    # In general mode an absent output is not "pending": it is invalid.
    assert check({**problem}, GENERAL) == "invalid_output"


@pytest.mark.parametrize(
    "spelling",
    [
        "<noinput>",
        "N/A",
        "None",
        "No input",
        "none.",
        "-",
        "(empty)",
        "Not applicable",
        "<No Input>",
        "  n/a  ",
        "null",
        "No input required.",
        "",
        None,
    ],
)
def test_no_input_spellings_normalise_to_empty(spelling):
    r = normalize(rec(input=spelling), GENERAL)
    assert r["input"] == ""


def test_real_inputs_are_not_normalised():
    for text in ["None of the above", "-5", "N/A values in the table: 3", "Nothing Else Matters"]:
        assert normalize(rec(input=text), GENERAL)["input"] == text
    assert "input" in normalize({"instruction": "x"}, GENERAL)


def test_python_source_strips_the_fence():
    assert python_source("Sure:\n```python\nx = 1\n```\nDone.") == "x = 1\n"
    assert python_source("x = 1\n") == "x = 1\n"
    assert python_source("```js\nlet x;\n```\n```py\ny = 2\n```") == "y = 2\n"


def test_run_counts_every_reason_and_hands_rejects_to_the_sink():
    stats = StageStats("filter")
    rejected = []
    stats.sink = rejected.append
    records = [
        rec(id=1),
        rec(id=2, output="N/A"),
        rec(id=3, instruction="Summarize."),
        rec(id=4, input="<noinput>"),
        rec(id=5, output="N/A"),
    ]
    kept = list(run(records, GENERAL, stats))
    assert [r["id"] for r in kept] == [1, 4]
    assert kept[1]["input"] == ""
    assert stats.total == 5 and stats.kept == 2
    assert dict(stats.dropped) == {"non_answer": 2, "too_short": 1}
    assert rejected[1]["reject"] == {"stage": "filter", "reason": "too_short", "words": 1}


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"mode": "chat"}, "filter.mode='chat'"),
        ({"min_words": -1}, "filter.min_words=-1"),
        ({"max_words": 2, "min_words": 3}, "filter.max_words=2"),
        ({"restatement_threshold": 2.0}, "filter.restatement_threshold=2.0"),
        ({"decontam_ngram": 2}, "filter.decontam_ngram=2"),
        ({"non_answer_patterns": ["("]}, "filter.non_answer_patterns"),
        ({"blocklist": "image"}, "filter.blocklist='image'"),
    ],
)
def test_config_errors_name_field_and_value(kwargs, needle):
    with pytest.raises(ValueError) as e:
        FilterConfig(**kwargs)
    assert needle in str(e.value)


def test_every_config_field_has_help():
    for f in dataclasses.fields(FilterConfig):
        assert f.metadata.get("help"), f.name
