"""The stage contract, checked on the source: stages import nothing from ``pipeline/`` and read
no environment, and no call site in ``stages/`` or ``pipeline/`` bumps a stage's counters by
hand (only
:class:`stages.base.StageStats` itself does, through ``admit``/``keep``/``drop``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from stages.base import StageStats

ROOT = Path(__file__).resolve().parent.parent
STAGES = sorted((ROOT / "stages").glob("*.py"))
PROJECT = sorted(
    p
    for d in ("stages", "pipeline")
    for p in (ROOT / d).rglob("*.py")
    if p.name != "base.py" or p.parent.name != "stages"
)
COUNTERS = {"total", "kept", "dropped", "entered"}


def imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", STAGES, ids=lambda p: p.name)
def test_no_stage_imports_pipeline(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = [m for m in imported_modules(tree) if m == "pipeline" or m.startswith("pipeline.")]
    assert not bad, f"{path.name} imports {bad}: stages must import nothing from pipeline/"


def test_the_import_check_catches_a_lazy_import():
    src = "def f():\n    from pipeline.prompts import render\n    return render\n"
    assert imported_modules(ast.parse(src)) == ["pipeline.prompts"]


@pytest.mark.parametrize("path", STAGES, ids=lambda p: p.name)
def test_no_stage_reads_the_environment(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
            # The sandbox builds the *candidate's* environment (cleared); it never reads ours.
            assert path.name in ("execution.py", "sandbox_program.py"), (
                f"{path.name}:{node.lineno} reads the environment: hand the value in instead"
            )


def hand_bumps(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.AugAssign)
            and isinstance(node.target, ast.Attribute | ast.Subscript)
            and (
                (isinstance(node.target, ast.Attribute) and node.target.attr in COUNTERS)
                or (
                    isinstance(node.target, ast.Subscript)
                    and isinstance(node.target.value, ast.Attribute)
                    and node.target.value.attr == "dropped"
                )
            )
        ):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("path", PROJECT, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_call_site_bumps_stage_counters(path):
    lines = hand_bumps(ast.parse(path.read_text(encoding="utf-8")))
    assert not lines, (
        f"{path.relative_to(ROOT)} bumps stage counters by hand on lines {lines}: "
        "use stats.admit / stats.keep / stats.drop"
    )


def test_the_bump_check_catches_one():
    assert hand_bumps(ast.parse("stats.total += 1\ns.dropped['x'] += 1\nn += 1\n")) == [1, 2]


def test_books_balance_by_construction_and_catch_a_lost_record():
    st = StageStats(stage="dedup")
    out = []
    for rec in st.admit([{"id": "a"}, {"id": "b"}, {"id": "c"}]):
        if rec["id"] == "b":
            st.drop(rec, "rouge_duplicate")
        elif rec["id"] == "a":
            out.append(st.keep(rec))
        # "c" is neither kept nor rejected: lost
    assert st.balance_error() == ("stage dedup: 3 records entered but 1 kept + 1 rejected = 2 left")
    st.keep({"id": "c"})
    assert st.balance_error() is None


def test_books_catch_an_id_swapped_on_the_way():
    st = StageStats(stage="filter")
    for rec in st.admit([{"id": "a"}, {"id": "b"}]):
        st.keep({**rec, "id": rec["id"] + "x"})
    assert st.balance_error() == "stage filter: the ids that left are not the ids that entered"


def test_stats_add_up():
    a, b = StageStats(stage="dedup"), StageStats(stage="dedup")
    for rec in a.admit([{"id": 1}, {"id": 2}]):
        a.keep(rec)
    for rec in b.admit([{"id": 3}]):
        b.drop(rec, "rouge_duplicate")
    total = a + b
    assert (total.entered, total.kept, total.rejected, total.total) == (3, 2, 1, 3)
    assert total.balance_error() is None
    assert total.dropped == {"rouge_duplicate": 1}
