"""The verify stage: one test per reject reason with a real example, keep cases, and the seed
mapping; candidates run in the real sandbox."""

from __future__ import annotations

import pytest

from pipeline.stats import StageStats
from stages import execution, verify
from stages.verify import VerifyConfig, check_tests, seed_to_record

pytestmark = pytest.mark.skipif(execution.check_sandbox() is not None, reason="no sandbox here")

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


def test_first_passing_candidate_is_kept_in_order():
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


def test_timeout_reason():
    out, rejected, _ = run([rec(0, ["def add(a, b):\n    while True:\n        pass\n"])], timeout=1)
    assert out == [] and rejected[0]["reject"]["reason"] == "tests_timeout"


@pytest.mark.parametrize(
    "record, reason",
    [
        (rec(0, []), "no_candidates"),
        (rec(0, [GOOD], tests=""), "no_tests"),
        (rec(0, [GOOD], tests="assert add(1, 2) == 3 +"), "tests_unparseable"),
        (rec(0, [GOOD], tests="assert 1 + 1 == 2\n"), "tests_call_nothing"),
        (
            rec(0, [GOOD], tests="def add(a, b):\n    return 3\nassert add(1, 2) == 3\n"),
            "tests_call_nothing",
        ),
        (rec(0, [GOOD], tests="add(1, 2)\n"), "vacuous_tests"),
        (rec(0, [GOOD], tests="assert add(1, 2) is None or add(1, 2) == 3\n"), "vacuous_tests"),
        (rec(0, [GOOD], language="javascript"), "unsupported_language"),
        (rec(0, ["import ctypes\n" + GOOD]), "tests_rejected"),
    ],
)
def test_reject_reasons(record, reason):
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


def test_vacuity_check_can_be_turned_off():
    out, _, _ = run([rec(0, [GOOD], tests="add(1, 2)\n")], check_vacuous=False)
    assert len(out) == 1


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="verify.timeout"):
        VerifyConfig(timeout=0)
    with pytest.raises(ValueError, match="verify.memory_mb"):
        VerifyConfig(memory_mb=8)
    with pytest.raises(ValueError, match="verify.workers"):
        VerifyConfig(workers=-1)


def test_seed_to_record_and_reference_passes():
    seed = {
        "id": "seed_7",
        "instruction": "Add.",
        "language": "python",
        "tests": ADD_TESTS,
        "instances": [{"input": "", "output": GOOD}],
    }
    r = seed_to_record(seed)
    assert r["candidates"] == [GOOD] and r["tests"] == ADD_TESTS and r["id"] == "seed_7"
    out, _, _ = run([r])
    assert out[0]["output"] == GOOD
    with pytest.raises(ValueError, match="instances"):
        seed_to_record({"id": "s", "tests": ADD_TESTS, "instances": []})


def test_fresh_sandbox_mode():
    out, _, _ = run([rec(0, [BAD, GOOD])], fresh_sandbox=True)
    assert out[0]["verification"]["passed_index"] == 1


def test_unsafe_no_sandbox_still_verifies():
    out, rejected, _ = run(
        [rec(0, [GOOD]), rec(1, ["import os\ngetattr(os, '_e' + 'xit')(0)\n"])],
        unsafe_no_sandbox=True,
    )
    assert [r["id"] for r in out] == ["r0"] and rejected[0]["reject"]["reason"] == "tests_error"
