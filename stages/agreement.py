"""Choosing a solution, and the tests to keep with it, by agreement between candidates and asserts.

Why: with tests written by a small model, keeping the first candidate that passes every assert
(Code Llama's rule) discards right solutions whenever one assert is wrong (``sum_of_cubes(5) ==
125``: every correct candidate fails it). CodeT ("Code Generation with Generated Tests", Chen et
al., 2022) scores solutions and tests by their *dual agreement* instead: candidates that pass
exactly the same set of tests form a consensus group, and a group scores (candidates in it) x
(tests it passes). Right solutions tend to agree with each other on the right tests, while wrong
ones disagree in many different ways, so the best group is usually right, and the asserts it
fails are likely wrong.

This module is the pure part: a matrix in (``matrix[i][j]``: candidate ``i`` held assert ``j``,
each proven by its own sandbox report, see :mod:`stages.sandbox_program`), and optionally the
row of a ``return None`` stub of the solution run the same way; a :class:`Decision` out. Nothing
runs here; :mod:`stages.verify` runs the candidates and the stub, and checks that the kept
candidate passes the kept asserts run as one program.

Rules of :func:`select`:

- Groups are the distinct sets of asserts held; a group's candidates are listed in candidate
  order and its first candidate is the one kept (the earliest sample, as in Code Llama).
- The best group has the highest score; a tie goes to the group holding more asserts (its tests
  keep more evidence), then to the group whose first candidate comes first.
- Reasons (None keeps): ``tests_failed`` when no candidate holds any assert (every score is 0);
  ``too_few_agreed_asserts`` when the best group holds fewer than ``min_asserts`` asserts: then
  the agreement itself is too thin to trust, and the record is rejected rather than kept with a
  lower-scored group, because a consensus that outscores every other one is exactly the thing
  agreement is meant to find; falling back would keep what the candidates disagree about;
  ``vacuous_tests`` when the stub holds every assert the best group holds, so the tests that
  would be kept cannot tell a solution from ``return None``. (A stub keeps no state, so its row
  says what it does on the kept asserts alone: the reduced tests need no run of their own.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

TESTS_FAILED = "tests_failed"
TOO_FEW_AGREED_ASSERTS = "too_few_agreed_asserts"
VACUOUS_TESTS = "vacuous_tests"


@dataclass(frozen=True)
class Group:
    """Candidates that held exactly the same asserts."""

    candidates: tuple[int, ...]
    asserts: tuple[int, ...]

    @property
    def score(self) -> int:
        """CodeT's dual agreement: candidates in the group x asserts the group holds."""
        return len(self.candidates) * len(self.asserts)

    def to_dict(self) -> dict:
        return {
            "candidates": list(self.candidates),
            "asserts": list(self.asserts),
            "score": self.score,
        }


@dataclass(frozen=True)
class Decision:
    n_asserts: int
    groups: tuple[Group, ...]  # in order of their first candidate
    best: Group | None  # None when there are no candidates
    reason: str | None  # None keeps

    @property
    def chosen(self) -> int | None:
        """The candidate kept (the best group's first), or None on a reject."""
        return None if self.reason or self.best is None else self.best.candidates[0]

    @property
    def kept(self) -> tuple[int, ...]:
        """The asserts the best group holds."""
        return self.best.asserts if self.best else ()

    @property
    def dropped(self) -> tuple[int, ...]:
        """The asserts the best group fails: likely wrong."""
        kept = set(self.kept)
        return tuple(j for j in range(self.n_asserts) if j not in kept)


def groups(matrix: Sequence[Sequence[bool]]) -> tuple[Group, ...]:
    """The consensus groups of ``matrix`` (one row per candidate, one column per assert)."""
    widths = {len(row) for row in matrix}
    if len(widths) > 1:
        raise ValueError(f"agreement matrix rows differ in length: {sorted(widths)}")
    members: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(matrix):
        members.setdefault(tuple(j for j, held in enumerate(row) if held), []).append(i)
    return tuple(Group(tuple(c), a) for a, c in members.items())


def select(
    matrix: Sequence[Sequence[bool]], min_asserts: int, stub: Sequence[bool] | None = None
) -> Decision:
    """The best consensus group of ``matrix`` and whether it is kept (see the module doc);
    ``stub`` is the trivial implementation's row, None to skip the vacuity rule."""
    if min_asserts < 1:
        raise ValueError(f"min_asserts={min_asserts!r}: must be at least 1")
    if stub is not None and matrix and len(stub) != len(matrix[0]):
        raise ValueError(f"stub row has {len(stub)} asserts, the matrix {len(matrix[0])}")
    gs = groups(matrix)
    n = len(matrix[0]) if matrix else 0
    if not gs:
        return Decision(n, gs, None, TESTS_FAILED)
    best = max(gs, key=lambda g: (g.score, len(g.asserts), -g.candidates[0]))
    if best.score == 0:
        reason = TESTS_FAILED
    elif len(best.asserts) < min_asserts:
        reason = TOO_FEW_AGREED_ASSERTS
    elif stub is not None and all(stub[j] for j in best.asserts):
        reason = VACUOUS_TESTS
    else:
        reason = None
    return Decision(n, gs, best, reason)
