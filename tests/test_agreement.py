"""Agreement-based selection (CodeT's dual agreement) on hand-made matrices: rows are candidates,
columns asserts, True where the candidate held the assert. Pure: nothing runs."""

from __future__ import annotations

import pytest

from stages.agreement import (
    TESTS_FAILED,
    TOO_FEW_AGREED_ASSERTS,
    VACUOUS_TESTS,
    Group,
    groups,
    select,
)

T, F = True, False


def test_a_wrong_assert_is_dropped():
    # sum_of_cubes: assert 3 expects 125 for n = 5 (it is 225); three right candidates fail
    # only it, a wrong one (sum of squares) holds asserts 0 and 4 only.
    matrix = [
        [T, F, F, F, T],
        [T, T, T, F, T],
        [T, T, T, F, T],
        [T, T, T, F, T],
    ]
    d = select(matrix, min_asserts=2)
    assert d.reason is None
    assert d.best == Group((1, 2, 3), (0, 1, 2, 4)) and d.best.score == 12
    assert d.chosen == 1  # the group's first candidate
    assert d.kept == (0, 1, 2, 4) and d.dropped == (3,)


def test_the_candidate_passing_everything_still_wins_when_tests_are_right():
    d = select([[T, T, F], [T, T, T], [F, F, F]], min_asserts=2)
    assert (d.chosen, d.kept, d.dropped, d.reason) == (1, (0, 1, 2), (), None)


def test_a_wrong_consensus_with_too_few_asserts_is_not_accepted():
    # Three wrong candidates agree on assert 0 only (score 3); the right one holds 0 and 1
    # (score 2). The consensus wins, and one assert is too thin a remainder to keep.
    matrix = [[T, F, F, F], [T, F, F, F], [T, F, F, F], [T, T, F, F]]
    d = select(matrix, min_asserts=2)
    assert d.reason == TOO_FEW_AGREED_ASSERTS and d.chosen is None
    assert d.best == Group((0, 1, 2), (0,))
    # not rescued by the lower-scored group that holds enough
    assert Group((3,), (0, 1)) in d.groups
    assert select(matrix, min_asserts=1).chosen == 0


def test_vacuous_remainders_are_rejected():
    # The best group holds asserts 0 and 1, and so does a `return None` stub.
    matrix = [[T, T, F], [T, T, F], [T, T, T]]
    d = select(matrix, min_asserts=2, stub=[T, T, F])
    assert d.reason == VACUOUS_TESTS and d.chosen is None
    # a stub that fails one kept assert leaves the tests meaningful
    assert select(matrix, min_asserts=2, stub=[T, F, F]).chosen == 0
    # asserts the stub holds can stay, as long as one kept assert tells it apart
    assert select(matrix, min_asserts=2, stub=[T, F, T]).reason is None
    with pytest.raises(ValueError, match="stub row has 2 asserts"):
        select(matrix, min_asserts=2, stub=[T, T])


def test_nothing_held_is_tests_failed():
    assert select([[F, F], [F, F]], min_asserts=1).reason == TESTS_FAILED
    assert select([], min_asserts=1).reason == TESTS_FAILED
    assert select([[], []], min_asserts=1).reason == TESTS_FAILED


def test_ties_go_to_more_asserts_then_the_earlier_candidate():
    # scores 6 and 6: the group holding three asserts wins over the one holding two
    matrix = [[T, T, F, F]] * 3 + [[T, T, T, F]] * 2
    d = select(matrix, min_asserts=2)
    assert d.best == Group((3, 4), (0, 1, 2))
    # same score and size: the group whose first candidate comes first
    d = select([[F, T, T], [T, T, F]], min_asserts=2)
    assert d.best == Group((0,), (1, 2))


def test_groups_collect_identical_rows_in_candidate_order():
    gs = groups([[T, F], [F, T], [T, F], [F, F]])
    assert gs == (Group((0, 2), (0,)), Group((1,), (1,)), Group((3,), ()))
    assert [g.score for g in gs] == [2, 1, 0]
    with pytest.raises(ValueError, match="differ in length"):
        groups([[T, F], [T]])
    with pytest.raises(ValueError, match="min_asserts=0"):
        select([[T]], min_asserts=0)
