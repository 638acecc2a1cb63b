"""Checks the project's seed tasks (``seed_tasks.jsonl``).

The file must follow the self-instruct schema, meet the floor on task counts, and every code
seed must be executable evidence: its reference solution (``instances[0]["output"]``) passes its
own assert-based tests, and a trivial implementation (every function and method body replaced by
``return None``) fails them, so no seed has vacuous tests.

The code runs in one isolated child interpreter (``python -I``) with a wall-clock timeout; each
seed gets a fresh namespace and its own alarm, and a failure names the seed id. This is a
consistency check on our own, trusted seeds, not a sandbox: ``make verify-seeds`` runs the same
seeds through the real sandbox in ``stages/execution.py``.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

SEEDS_PATH = Path(__file__).resolve().parent.parent / "seed_tasks.jsonl"

MIN_GENERAL = 150
MIN_CLASSIFICATION = 20
MIN_CODE = 60
# "Roughly 40%" of general tasks carry an input; outside this band the mix has drifted.
INPUT_SHARE_RANGE = (0.30, 0.60)
ASSERTS_RANGE = (3, 8)
SEED_TIMEOUT_S = 5.0
RUN_TIMEOUT_S = 120

REQUIRED = {
    "id": str,
    "name": str,
    "instruction": str,
    "instances": list,
    "is_classification": bool,
}
CODE_FIELDS = {"language": str, "tests": str}
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Seeds are meant to be pure computations: no I/O, network, processes, threads or randomness.
FORBIDDEN_MODULES = {
    "asyncio", "concurrent", "ctypes", "ftplib", "http", "imaplib", "multiprocessing", "os",
    "pathlib", "poplib", "random", "secrets", "shutil", "signal", "smtplib", "socket", "ssl",
    "subprocess", "sys", "tempfile", "threading", "urllib",
}  # fmt: skip
FORBIDDEN_CALLS = {"open", "input", "eval", "exec", "compile", "__import__", "breakpoint"}

# Runs in the child interpreter. Reads {"timeout": s, "seeds": [{id, program, tests}]} on stdin
# and writes {id: {"status": "passed" | "failed" | "timeout", "detail": str}} on stdout.
RUNNER = r"""
import io, json, signal, sys, traceback

class SeedTimeout(BaseException):
    pass

def on_alarm(signum, frame):
    raise SeedTimeout()

signal.signal(signal.SIGALRM, on_alarm)
job = json.load(sys.stdin)
out = sys.stdout
results = {}
for seed in job["seeds"]:
    sys.stdout = io.StringIO()
    namespace = {"__name__": "__seed__", "__builtins__": __builtins__}
    signal.setitimer(signal.ITIMER_REAL, job["timeout"])
    try:
        exec(compile(seed["program"], "<" + seed["id"] + " program>", "exec"), namespace)
        exec(compile(seed["tests"], "<" + seed["id"] + " tests>", "exec"), namespace)
        result = {"status": "passed", "detail": ""}
    except SeedTimeout:
        result = {"status": "timeout", "detail": "over %.1f s" % job["timeout"]}
    except BaseException as e:
        tb = traceback.extract_tb(e.__traceback__)
        where, line = "?", ""
        if tb:
            where = "%s line %s" % (tb[-1].filename, tb[-1].lineno)
            sources = {"<%s %s>" % (seed["id"], k): seed[k] for k in ("program", "tests")}
            lines = sources.get(tb[-1].filename, "").splitlines()
            if 0 < (tb[-1].lineno or 0) <= len(lines):
                line = ": " + lines[tb[-1].lineno - 1].strip()
        detail = "%s: %s (%s%s)" % (type(e).__name__, e, where, line)
        result = {"status": "failed", "detail": detail}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    results[seed["id"]] = result
sys.stdout = out
json.dump(results, out)
"""


def load_seeds(path: Path = SEEDS_PATH) -> list[tuple[int, dict]]:
    """(line number, record) for every non-blank line; a bad line fails naming file and line."""
    assert path.exists(), f"{path}: missing (the project's seed tasks)"
    seeds = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            pytest.fail(f"{path.name}:{lineno}: not valid JSON ({e.msg} at column {e.colno})")
        if not isinstance(record, dict):
            pytest.fail(
                f"{path.name}:{lineno}: expected a JSON object, got {type(record).__name__}"
            )
        seeds.append((lineno, record))
    return seeds


def where(lineno: int, record: dict, field: str | None = None) -> str:
    label = f"{SEEDS_PATH.name}:{lineno} ({record.get('id', '?')})"
    return f"{label}: field '{field}'" if field else label


def is_code(record: dict) -> bool:
    return "tests" in record or "language" in record


def schema_problems(lineno: int, record: dict) -> list[str]:
    """Every way ``record`` departs from the schema, each naming the line and the field."""
    problems = []
    allowed = set(REQUIRED) | set(CODE_FIELDS)
    for key in sorted(set(record) - allowed):
        problems.append(f"{where(lineno, record, key)}: unknown field")
    fields = dict(REQUIRED, **CODE_FIELDS) if is_code(record) else REQUIRED
    for key, kind in fields.items():
        if key not in record:
            problems.append(f"{where(lineno, record, key)}: missing")
        elif not isinstance(record[key], kind):
            got = type(record[key]).__name__
            problems.append(f"{where(lineno, record, key)}: expected {kind.__name__}, got {got}")
    if problems:
        return problems
    if not NAME_RE.match(record["name"]):
        problems.append(f"{where(lineno, record, 'name')}: {record['name']!r} is not snake_case")
    if not record["instruction"].strip() or record["instruction"] != record["instruction"].strip():
        problems.append(f"{where(lineno, record, 'instruction')}: empty or padded with whitespace")
    if not record["instances"]:
        problems.append(f"{where(lineno, record, 'instances')}: empty list")
    for i, inst in enumerate(record["instances"]):
        field = f"instances[{i}]"
        if not isinstance(inst, dict) or set(inst) != {"input", "output"}:
            problems.append(
                f"{where(lineno, record, field)}: must be an object with exactly 'input' and 'output'"
            )
            continue
        for key in ("input", "output"):
            if not isinstance(inst[key], str):
                problems.append(
                    f"{where(lineno, record, f'{field}.{key}')}: expected str, got {type(inst[key]).__name__}"
                )
        if isinstance(inst["output"], str) and not inst["output"].strip():
            problems.append(f"{where(lineno, record, f'{field}.output')}: empty")
    if is_code(record):
        if record["language"] != "python":
            problems.append(
                f"{where(lineno, record, 'language')}: {record['language']!r}, expected 'python'"
            )
        if record["is_classification"]:
            problems.append(
                f"{where(lineno, record, 'is_classification')}: a code seed is not a classification task"
            )
        if not record["tests"].strip():
            problems.append(f"{where(lineno, record, 'tests')}: empty")
    return problems


def trivial_implementation(source: str) -> str:
    """``source`` with every top-level function body, and every method body of a top-level
    class, replaced by ``return None``: what a do-nothing candidate would submit."""
    tree = ast.parse(source)
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, functions):
            targets = [node]
        elif isinstance(node, ast.ClassDef):
            targets = [n for n in node.body if isinstance(n, functions)]
        else:
            targets = []
        for fn in targets:
            fn.body = [ast.Return(value=ast.Constant(value=None))]
    return ast.unparse(ast.fix_missing_locations(tree))


def run_seeds(seeds: list[dict], timeout: float = SEED_TIMEOUT_S) -> dict[str, dict]:
    """Run each {id, program, tests} in a fresh namespace inside one ``python -I`` child."""
    job = json.dumps({"timeout": timeout, "seeds": seeds})
    proc = subprocess.run(
        [sys.executable, "-I", "-c", RUNNER],
        input=job,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env={},
    )
    assert proc.returncode == 0, (
        f"seed runner crashed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )
    return json.loads(proc.stdout)


def named_entry_point(instruction: str) -> str | None:
    """The first backticked identifier in the instruction, e.g. `merge_intervals(intervals)`."""
    match = re.search(r"`([A-Za-z_]\w*)", instruction)
    return match.group(1) if match else None


@pytest.fixture(scope="module")
def seeds() -> list[tuple[int, dict]]:
    return load_seeds()


@pytest.fixture(scope="module")
def code_seeds(seeds) -> list[tuple[int, dict]]:
    return [(n, r) for n, r in seeds if is_code(r)]


@pytest.fixture(scope="module")
def general_seeds(seeds) -> list[tuple[int, dict]]:
    return [(n, r) for n, r in seeds if not is_code(r)]


def test_every_record_matches_the_schema(seeds):
    problems = [p for lineno, record in seeds for p in schema_problems(lineno, record)]
    assert not problems, "schema problems:\n" + "\n".join(problems)


def test_ids_are_sequential_and_names_unique(seeds):
    problems = []
    for index, (lineno, record) in enumerate(seeds):
        if record.get("id") != f"seed_task_{index}":
            problems.append(f"{where(lineno, record, 'id')}: expected 'seed_task_{index}'")
    counts = Counter(record.get("name") for _, record in seeds)
    for lineno, record in seeds:
        if counts[record.get("name")] > 1:
            problems.append(
                f"{where(lineno, record, 'name')}: {record.get('name')!r} is used {counts[record.get('name')]} times"
            )
    assert not problems, "\n".join(problems)


def test_counts_meet_the_floor(general_seeds, code_seeds):
    classification = sum(1 for _, r in general_seeds if r.get("is_classification") is True)
    assert len(general_seeds) >= MIN_GENERAL, (
        f"{len(general_seeds)} general seeds, need at least {MIN_GENERAL}"
    )
    assert classification >= MIN_CLASSIFICATION, (
        f"{classification} classification seeds, need at least {MIN_CLASSIFICATION}"
    )
    assert len(code_seeds) >= MIN_CODE, f"{len(code_seeds)} code seeds, need at least {MIN_CODE}"


def test_general_seeds_mix_tasks_with_and_without_input(general_seeds):
    with_input = sum(1 for _, r in general_seeds if r["instances"][0]["input"].strip())
    share = with_input / len(general_seeds)
    low, high = INPUT_SHARE_RANGE
    assert low <= share <= high, (
        f"{with_input}/{len(general_seeds)} general seeds ({share:.0%}) have an input; want {low:.0%}-{high:.0%}"
    )


def test_classification_outputs_are_labels_named_in_the_instruction(general_seeds):
    problems = []
    for lineno, record in general_seeds:
        if not record["is_classification"]:
            continue
        label = record["instances"][0]["output"]
        if "\n" in label or len(label.split()) > 4:
            problems.append(
                f"{where(lineno, record, 'instances[0].output')}: {label!r} is not a short class label"
            )
        elif label.lower() not in record["instruction"].lower():
            problems.append(
                f"{where(lineno, record, 'instances[0].output')}: label {label!r} is not among the classes the instruction names"
            )
    assert not problems, "\n".join(problems)


def test_code_seeds_are_well_formed(code_seeds):
    problems = []
    for lineno, record in code_seeds:
        program, tests = record["instances"][0]["output"], record["tests"]
        if "```" in program or "```" in tests:
            problems.append(
                f"{where(lineno, record, 'instances[0].output')}: contains a markdown fence"
            )
            continue
        try:
            program_tree = ast.parse(program)
            tests_tree = ast.parse(tests)
        except SyntaxError as e:
            problems.append(f"{where(lineno, record)}: does not parse ({e.msg}, line {e.lineno})")
            continue
        entry = named_entry_point(record["instruction"])
        defined = {
            n.name
            for n in program_tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        }
        if entry is None or entry not in defined:
            problems.append(
                f"{where(lineno, record, 'instruction')}: names `{entry}`, but the reference defines {sorted(defined)}"
            )
        used = {n.id for n in ast.walk(tests_tree) if isinstance(n, ast.Name)}
        if entry not in used:
            problems.append(f"{where(lineno, record, 'tests')}: never uses `{entry}`")
        asserts = sum(isinstance(n, ast.Assert) for n in ast.walk(tests_tree))
        if not ASSERTS_RANGE[0] <= asserts <= ASSERTS_RANGE[1]:
            problems.append(
                f"{where(lineno, record, 'tests')}: {asserts} assert statements, want {ASSERTS_RANGE[0]}-{ASSERTS_RANGE[1]}"
            )
        for field, tree in (("instances[0].output", program_tree), ("tests", tests_tree)):
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    modules = [(node.module or "").split(".")[0]]
                else:
                    modules = []
                for module in modules:
                    if module not in sys.stdlib_module_names:
                        problems.append(
                            f"{where(lineno, record, field)}: imports {module!r}, which is not in the standard library"
                        )
                    elif module in FORBIDDEN_MODULES:
                        problems.append(
                            f"{where(lineno, record, field)}: imports {module!r} (no I/O, processes or randomness in seeds)"
                        )
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in FORBIDDEN_CALLS
                ):
                    problems.append(f"{where(lineno, record, field)}: calls {node.func.id}()")
    assert not problems, "\n".join(problems)


def test_reference_solutions_pass_their_tests(code_seeds):
    jobs = [
        {"id": r["id"], "program": r["instances"][0]["output"], "tests": r["tests"]}
        for _, r in code_seeds
    ]
    results = run_seeds(jobs)
    assert set(results) == {job["id"] for job in jobs}, "the runner did not report every seed"
    failures = [
        f"{sid}: {res['status']}: {res['detail']}"
        for sid, res in results.items()
        if res["status"] != "passed"
    ]
    assert not failures, (
        f"{len(failures)} reference solution(s) fail their own tests:\n" + "\n".join(failures)
    )


def test_trivial_implementations_fail_the_tests(code_seeds):
    jobs = [
        {
            "id": r["id"],
            "program": trivial_implementation(r["instances"][0]["output"]),
            "tests": r["tests"],
        }
        for _, r in code_seeds
    ]
    results = run_seeds(jobs)
    assert set(results) == {job["id"] for job in jobs}, "the runner did not report every seed"
    vacuous = [sid for sid, res in results.items() if res["status"] == "passed"]
    assert not vacuous, (
        "these seeds' tests pass even when every function body is `return None`: "
        + ", ".join(vacuous)
    )


def test_trivial_implementation_replaces_function_and_method_bodies():
    source = "import math\n\n\ndef area(r):\n    return math.pi * r * r\n\n\nclass Box:\n    def __init__(self, v):\n        self.v = v\n\n    def get(self):\n        return self.v\n"
    stubbed = trivial_implementation(source)
    tree = ast.parse(stubbed)
    bodies = [n.body for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    assert len(bodies) == 3
    assert all(ast.unparse(body[0]) == "return None" and len(body) == 1 for body in bodies)
    assert "import math" in stubbed


def test_runner_isolates_seeds_and_names_each_failure():
    results = run_seeds(
        [
            {
                "id": "ok",
                "program": "def f():\n    return 1\nleaked = 1\n",
                "tests": "assert f() == 1\n",
            },
            {
                "id": "bad",
                "program": "def f():\n    return 2\n",
                "tests": "assert f() == 1, 'f is wrong'\n",
            },
            {"id": "isolated", "program": "", "tests": "assert 'leaked' not in globals()\n"},
            {"id": "hangs", "program": "while True:\n    pass\n", "tests": ""},
            {"id": "noisy", "program": "print('not json')\n", "tests": "assert True\n"},
        ],
        timeout=0.5,
    )
    assert results["ok"]["status"] == "passed"
    assert results["bad"]["status"] == "failed" and "f is wrong" in results["bad"]["detail"]
    assert "<bad tests> line 1: assert f() == 1" in results["bad"]["detail"]
    assert results["isolated"]["status"] == "passed"
    assert results["hangs"]["status"] == "timeout"
    assert results["noisy"]["status"] == "passed"
