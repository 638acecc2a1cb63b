"""The verify stage: one test per reject reason with a real example, keep cases, and the seed
mapping; candidates run in the real sandbox. Both selections: ``first_pass`` (Code Llama) and
``agreement`` (CodeT). The rules decided before anything runs are tested without a sandbox; the
others skip when none can be made here, and fail instead on CI (``CI=true``)."""

from __future__ import annotations

import pytest

from stages import verify
from stages.base import StageStats
from stages.verify import VerifyConfig, check_tests, reduce_tests, seed_to_record, split_tests

ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"
GOOD = "def add(a, b):\n    return a + b\n"
BAD = "def add(a, b):\n    return a * b\n"


def rec(i, candidates, tests=ADD_TESTS, **kw):
    return {
        "id": f"r{i}",
        "instruction": "Add two numbers.",
        "input": "",
        "language": "python",
        "tests": tests,
        "candidates": candidates,
        **kw,
    }


def run(records, **cfg):
    rejected = []
    stats = StageStats(stage="verify", sink=rejected.append)
    out = list(verify.run(records, VerifyConfig(**{"timeout": 5, "workers": 2, **cfg}), stats))
    return out, rejected, stats


def test_first_passing_candidate_is_kept_in_order(sandbox_required):
    out, rejected, stats = run([rec(0, [BAD, GOOD, GOOD]), rec(1, [GOOD]), rec(2, [BAD, BAD])])
    assert [r["id"] for r in out] == ["r0", "r1"]
    assert out[0]["output"] == GOOD
    assert out[0]["verification"]["passed_index"] == 1
    assert [s["status"] for s in out[0]["verification"]["statuses"]] == ["failed", "passed"]
    assert rejected[0]["id"] == "r2" and rejected[0]["reject"]["reason"] == "tests_failed"
    assert [s["status"] for s in rejected[0]["reject"]["statuses"]] == ["failed", "failed"]
    assert stats.total == 3 and stats.kept == 2
    assert stats.extra["candidates_run"] == 5 and stats.extra["candidates_passed"] == 2
    assert stats.extra["status_failed"] == 3


def test_timeout_reason(sandbox_required):
    out, rejected, _ = run([rec(0, ["def add(a, b):\n    while True:\n        pass\n"])], timeout=1)
    assert out == [] and rejected[0]["reject"]["reason"] == "tests_timeout"


PURE_REJECTS = [
    (rec(0, []), "no_candidates"),
    (rec(0, [GOOD], tests=""), "no_tests"),
    (rec(0, [GOOD], tests="assert add(1, 2) == 3 +"), "tests_unparseable"),
    (rec(0, [GOOD], tests="assert 1 + 1 == 2\n"), "tests_call_nothing"),
    (
        rec(0, [GOOD], tests="def add(a, b):\n    return 3\nassert add(1, 2) == 3\n"),
        "tests_call_nothing",
    ),
    (rec(0, [GOOD], language="javascript"), "unsupported_language"),
]


@pytest.mark.parametrize("selection", ["first_pass", "agreement"])
@pytest.mark.parametrize("record, reason", PURE_REJECTS)
def test_reject_reasons_decided_before_anything_runs(monkeypatch, record, reason, selection):
    # No sandbox is needed, and none is opened: making one here would fail the test.
    monkeypatch.setattr(verify.execution, "Sandbox", None)
    out, rejected, stats = run([record], selection=selection)
    assert out == []
    assert rejected[0]["reject"]["reason"] == reason
    assert stats.dropped[reason] == 1 and stats.balance_error() is None


@pytest.mark.parametrize(
    "record, reason",
    [
        (rec(0, [GOOD], tests="add(1, 2)\n"), "vacuous_tests"),
        (rec(0, [GOOD], tests="assert add(1, 2) is None or add(1, 2) == 3\n"), "vacuous_tests"),
        (rec(0, ["import ctypes\n" + GOOD]), "tests_rejected"),
    ],
)
def test_reject_reasons(sandbox_required, record, reason):
    out, rejected, stats = run([record])
    assert out == []
    assert rejected[0]["reject"]["reason"] == reason
    assert stats.dropped[reason] == 1


def test_check_tests_is_pure_and_uses_entry_point():
    assert check_tests(rec(0, [GOOD])) is None
    assert (
        check_tests(rec(0, [GOOD], tests="assert sub(1, 2) == -1", entry_point="add"))
        == "tests_call_nothing"
    )
    humaneval = "def check(candidate):\n    assert candidate(1, 2) == 3\ncheck(add)\n"
    assert check_tests(rec(0, [GOOD], tests=humaneval)) is None


def test_vacuity_check_can_be_turned_off(sandbox_required):
    out, _, _ = run([rec(0, [GOOD], tests="add(1, 2)\n")], check_vacuous=False)
    assert len(out) == 1


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="verify.timeout"):
        VerifyConfig(timeout=0)
    with pytest.raises(ValueError, match="verify.memory_mb"):
        VerifyConfig(memory_mb=8)
    with pytest.raises(ValueError, match="verify.workers"):
        VerifyConfig(workers=-1)
    with pytest.raises(ValueError, match="verify.selection='codet'.*first_pass, agreement"):
        VerifyConfig(selection="codet")
    with pytest.raises(ValueError, match="verify.min_asserts=0"):
        VerifyConfig(min_asserts=0)


SEED = {
    "id": "seed_7",
    "instruction": "Add.",
    "language": "python",
    "tests": ADD_TESTS,
    "instances": [{"input": "", "output": GOOD}],
}


def test_seed_to_record():
    r = seed_to_record(SEED)
    assert r["candidates"] == [GOOD] and r["tests"] == ADD_TESTS and r["id"] == "seed_7"
    with pytest.raises(ValueError, match="instances"):
        seed_to_record({"id": "s", "tests": ADD_TESTS, "instances": []})


def test_seed_reference_passes(sandbox_required):
    out, _, _ = run([seed_to_record(SEED)])
    assert out[0]["output"] == GOOD


def test_fresh_sandbox_mode(sandbox_required):
    out, _, _ = run([rec(0, [BAD, GOOD])], fresh_sandbox=True)
    assert out[0]["verification"]["passed_index"] == 1


def test_unsafe_no_sandbox_still_verifies():
    out, rejected, _ = run(
        [rec(0, [GOOD]), rec(1, ["import os\ngetattr(os, '_e' + 'xit')(0)\n"])],
        unsafe_no_sandbox=True,
    )
    assert [r["id"] for r in out] == ["r0"] and rejected[0]["reject"]["reason"] == "tests_error"


def test_trivial_program_stubs_every_function():
    prog = 'import math\nK = 3\nclass S:\n    def f(self):\n        """doc"""\n        return 1\n'
    assert verify.trivial_program(rec(0, ["def broken(:\n", prog])) == (
        'import math\nK = 3\n\nclass S:\n\n    def f(self):\n        """doc"""\n        return None'
    )
    assert verify.trivial_program(rec(0, ["def broken(:\n"])) is None


# --- agreement: the pure parts ----------------------------------------------------------------

STATEFUL = (
    "import math\n"
    "s = []\n"
    "assert add(1, 2) == 3\n"
    "s.append(add(2, 2))\n"
    "assert s == [4]  # a comment\n"
    "try:\n    add(1)\nexcept TypeError:\n    pass\nelse:\n    raise AssertionError('x')\n"
)


def test_split_and_reduce_tests_keep_setup_and_order():
    assert split_tests(STATEFUL) == [
        ("import math", False),
        ("s = []", False),
        ("assert add(1, 2) == 3", True),
        ("s.append(add(2, 2))", False),
        ("assert s == [4]  # a comment", True),
        (
            "try:\n    add(1)\nexcept TypeError:\n    pass\nelse:\n    raise AssertionError('x')",
            True,
        ),
    ]
    assert reduce_tests(STATEFUL, [0, 2]) == (
        "import math\ns = []\nassert add(1, 2) == 3\ns.append(add(2, 2))\n"
        "try:\n    add(1)\nexcept TypeError:\n    pass\nelse:\n    raise AssertionError('x')\n"
    )
    # two statements on one line: each is rebuilt from the syntax tree instead
    assert split_tests("x = add(1, 2); assert x == 3\n") == [
        ("x = add(1, 2)", False),
        ("assert x == 3", True),
    ]


def test_too_few_asserts_is_decided_before_anything_runs(monkeypatch):
    monkeypatch.setattr(verify.execution, "Sandbox", None)
    one = rec(0, [GOOD], tests="x = add(1, 2)\nassert x == 3\n")
    assert verify.check(one, VerifyConfig(selection="agreement")) == "too_few_asserts"
    assert verify.check(one, VerifyConfig(selection="agreement", min_asserts=1)) is None
    assert verify.check(one, VerifyConfig()) is None  # first_pass has no such rule
    out, rejected, _ = run([one], selection="agreement")
    assert out == [] and rejected[0]["reject"]["reason"] == "too_few_asserts"


def test_books_balance_when_the_consumer_stops_early():
    # unsafe mode: these are the test's own programs, and no sandbox is needed to count
    stats = StageStats(stage="verify")
    gen = verify.run(
        [rec(0, [GOOD]), rec(1, [GOOD]), rec(2, [BAD])],
        VerifyConfig(timeout=5, workers=1, unsafe_no_sandbox=True),
        stats,
    )
    assert next(gen)["id"] == "r0"
    gen.close()
    assert (stats.entered, stats.total, stats.kept) == (1, 1, 1)
    assert stats.balance_error() is None


def test_unsafe_no_sandbox_still_verifies_under_agreement():
    out, rejected, _ = run(
        [rec(0, [GOOD, BAD]), rec(1, [BAD])], unsafe_no_sandbox=True, selection="agreement"
    )
    assert [r["id"] for r in out] == ["r0"] and rejected[0]["reject"]["reason"] == "tests_failed"


# --- agreement: end to end in the sandbox -----------------------------------------------------

CUBES_TESTS = (
    "assert sum_of_cubes(1) == 1\n"
    "assert sum_of_cubes(2) == 9\n"
    "assert sum_of_cubes(3) == 36\n"
    "assert sum_of_cubes(5) == 125\n"  # wrong: 1 + 8 + 27 + 64 + 125 = 225
    "assert sum_of_cubes(0) == 0\n"
)
CUBES_RIGHT = [
    "def sum_of_cubes(n):\n    return sum(k ** 3 for k in range(1, n + 1))\n",
    "def sum_of_cubes(n):\n    return (n * (n + 1) // 2) ** 2\n",
    "def sum_of_cubes(n):\n    total = 0\n    for k in range(n + 1):\n        total += k * k * k\n    return total\n",
]
CUBES_WRONG = "def sum_of_cubes(n):\n    return sum(k ** 2 for k in range(1, n + 1))\n"  # squares


def cubes(i, candidates, tests=CUBES_TESTS):
    return {**rec(i, candidates, tests=tests), "instruction": "Sum of the first n cubes."}


def test_agreement_drops_the_wrong_assert_that_first_pass_dies_on(sandbox_required):
    record = cubes(0, [CUBES_WRONG] + CUBES_RIGHT)
    out, rejected, _ = run([record])  # first_pass: every right candidate fails sum_of_cubes(5)
    assert out == [] and rejected[0]["reject"]["reason"] == "tests_failed"
    out, rejected, stats = run([record], selection="agreement")
    assert rejected == []
    [kept] = out
    v = kept["verification"]
    assert kept["output"] == CUBES_RIGHT[0] and v["passed_index"] == 1
    assert v["matrix"] == [
        [True, False, False, False, True],  # squares agree on n = 1 and n = 0 only
        [True, True, True, False, True],
        [True, True, True, False, True],
        [True, True, True, False, True],
    ]
    assert v["group"] == [1, 2, 3] and v["score"] == 12
    assert v["kept_asserts"] == [0, 1, 2, 4] and v["dropped_asserts"] == [3]
    assert v["dropped"] == ["assert sum_of_cubes(5) == 125"]
    assert v["original_tests"] == CUBES_TESTS
    assert "125" not in kept["tests"] and kept["tests"].count("assert") == 4
    assert stats.extra["asserts_dropped"] == 1 and stats.extra["asserts_kept"] == 4
    assert stats.extra["records_with_dropped_asserts"] == 1
    assert stats.extra["candidates_run"] == 4 and stats.extra["candidates_passed"] == 0
    # the reduced tests are real: the kept candidate passes them as one program, squares do not
    from stages import execution

    with execution.Sandbox(1) as box:
        assert box.run(kept["output"], kept["tests"]).passed
        assert box.run(CUBES_WRONG, kept["tests"]).status == "failed"


def test_agreement_rejects_thin_vacuous_and_unconfirmed_remainders(sandbox_required):
    # A wrong consensus: three candidates agree only on n = 0; the right one is alone.
    thin = cubes(0, [CUBES_WRONG.replace("** 2", "** 4")] * 3 + [CUBES_RIGHT[0]])
    thin["tests"] = (
        "assert sum_of_cubes(0) == 0\nassert sum_of_cubes(2) == 9\nassert sum_of_cubes(3) == 35\n"
    )
    # The agreed asserts are the ones a `return None` stub passes too.
    find = "def find(xs, x):\n    return xs.index(x) + {k} if x in xs else None\n"
    vacuous = rec(
        1,
        [find.format(k=7), find.format(k=7), find.format(k=0)],
        tests=(
            "assert find([], 1) is None\nassert find([2], 3) is None\nassert find([1, 2], 2) == 1\n"
        ),
    )
    # Dropping a check that changes state breaks the checks after it: the kept candidate fails
    # the reduced tests run as one program.
    stack = "class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, x):\n        self.items.append(x)\n    def pop(self):\n        return self.items.pop()\n    def is_empty(self):\n        return not self.items\n"
    unconfirmed = rec(
        2,
        [stack, stack],
        tests=(
            "s = Stack()\ns.push(1)\n"
            "assert s.pop() == 2\n"  # wrong, and it pops
            "assert s.is_empty()\n"
            "assert Stack().is_empty()\n"
        ),
    )
    out, rejected, stats = run([thin, vacuous, unconfirmed], selection="agreement")
    assert out == []
    reasons = {r["id"]: r["reject"] for r in rejected}
    assert reasons["r0"]["reason"] == "too_few_agreed_asserts"
    assert reasons["r0"]["best_group"] == {"candidates": [0, 1, 2], "asserts": [0], "score": 3}
    assert reasons["r1"]["reason"] == "vacuous_tests"
    assert reasons["r1"]["stub"] == [True, True, False]
    assert reasons["r2"]["reason"] == "reduced_tests_failed"
    assert reasons["r2"]["confirm"]["status"] == "failed"
    assert stats.balance_error() is None and "asserts_dropped" not in stats.extra
    # the same records under min_asserts=1 / without the stub check are kept
    out, _, _ = run([thin], selection="agreement", min_asserts=1)
    assert out[0]["verification"]["kept_asserts"] == [0]
    out, _, _ = run([vacuous], selection="agreement", check_vacuous=False)
    assert out[0]["verification"]["kept_asserts"] == [0, 1]


def test_agreement_keeps_input_order_and_first_pass_is_unchanged(sandbox_required):
    records = [
        cubes(0, [CUBES_WRONG] + CUBES_RIGHT),
        rec(1, [BAD, GOOD]),
        rec(2, [BAD, BAD]),
        rec(3, []),
        rec(4, [GOOD]),
    ]
    out, rejected, stats = run(records, selection="agreement", batch=2)
    assert [r["id"] for r in out] == ["r0", "r1", "r4"]
    assert [r["id"] for r in rejected] == ["r2", "r3"]
    assert out[1]["verification"]["passed_index"] == 1
    assert out[1]["tests"] == ADD_TESTS and out[1]["verification"]["dropped"] == []
    assert stats.balance_error() is None and stats.entered == 5
    out, rejected, stats = run(records, batch=2)
    assert [r["id"] for r in out] == ["r1", "r4"]
    assert out[0]["verification"] == {
        "passed_index": 1,
        "statuses": [
            {
                "status": "failed",
                "detail": "AssertionError at tests line 1: assert add(1, 2) == 3 (2 != 3)",
            },
            {"status": "passed", "detail": ""},
        ],
    }
    assert out[0]["tests"] == ADD_TESTS
