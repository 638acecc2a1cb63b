"""Verify stage (code mode): keep a problem only when one of its candidate solutions passes its
unit tests in the sandbox (:mod:`stages.execution`), and only when those tests really test.

Reads: ``id``, ``language`` ("python"), ``tests`` (Python source with asserts, run after the
candidate in the same namespace), ``candidates`` (list of source strings), optional
``entry_point`` (the function under test; default: the functions and classes the candidates
define at top level).

Writes, on a kept record: ``output`` = the first passing candidate and ``verification`` =
``{"passed_index": i, "statuses": [{"status", "detail"}, ...]}`` for the candidates tried, in
order (candidates after the first pass are not run).

Reject reasons: ``unsupported_language``, ``no_tests``, ``no_candidates``,
``tests_unparseable`` (the tests do not parse), ``tests_call_nothing`` (the tests never refer to
the function under test), ``vacuous_tests`` (a trivial implementation, every function body
``return None``, also passes), and ``tests_<status>`` when no candidate passes, named for the
most common status (``tests_failed``, ``tests_error``, ``tests_timeout``, ``tests_memory``,
``tests_rejected``), with the statuses in the reject detail.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from stages.base import StageStats
from stages import execution


@dataclass
class VerifyConfig:
    timeout: float = field(default=10.0, metadata={"help": "wall-clock seconds per candidate"})
    memory_mb: int = field(default=512, metadata={"help": "address-space limit per candidate, MiB"})
    workers: int = field(default=0, metadata={"help": "parallel sandboxes; 0 = all cores"})
    unsafe_no_sandbox: bool = field(
        default=False,
        metadata={
            "help": "run generated code WITHOUT a sandbox (only rlimits and timeouts): dangerous"
        },
    )
    check_vacuous: bool = field(
        default=True,
        metadata={
            "help": "reject test suites that a trivial (return None) implementation also passes"
        },
    )
    fresh_sandbox: bool = field(
        default=False,
        metadata={
            "help": "one whole sandbox per candidate instead of a warm one per worker (slower)"
        },
    )
    batch: int = field(
        default=64, metadata={"help": "records verified together (parallelism window)"}
    )

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"verify.timeout={self.timeout!r}: must be positive seconds")
        if self.memory_mb < 64:
            raise ValueError(f"verify.memory_mb={self.memory_mb!r}: must be at least 64")
        if self.workers < 0:
            raise ValueError(
                f"verify.workers={self.workers!r}: use 0 (all cores) or a positive count"
            )
        if self.batch < 1:
            raise ValueError(f"verify.batch={self.batch!r}: must be at least 1")


def _defined_names(program: str) -> list[str]:
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError):
        return []
    return [
        n.name
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]


def under_test(record: dict) -> list[str]:
    """Names of the functions under test: ``entry_point`` or what the candidates define."""
    if record.get("entry_point"):
        return [record["entry_point"]]
    names: list[str] = []
    for c in record.get("candidates") or []:
        if isinstance(c, str):
            names += [n for n in _defined_names(c) if n not in names]
    return names


def check_tests(record: dict) -> str | None:
    """Why the record's tests cannot be used (None keeps): missing, unparseable, or never
    referring to the function under test. Pure: nothing runs."""
    tests = record.get("tests")
    if not isinstance(tests, str) or not tests.strip():
        return "no_tests"
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError):
        return "tests_unparseable"
    own = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    targets = set(under_test(record))
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    calls = any(isinstance(n, ast.Call) for n in ast.walk(tree))
    # A name the tests define themselves is the tests' own stand-in, not the function under test.
    if not calls or (targets and not used & (targets - own)):
        return "tests_call_nothing"
    return None


def check(record: dict, cfg: VerifyConfig | None = None) -> str | None:
    """The pure part of the decision (language, candidates, tests); the sandbox does the rest."""
    if record.get("language", "python") != "python":
        return "unsupported_language"
    cands = record.get("candidates")
    if not isinstance(cands, list) or not [c for c in cands if isinstance(c, str) and c.strip()]:
        return "no_candidates"
    return check_tests(record)


class _Stub(ast.NodeTransformer):
    def _stub(self, node):
        doc = ast.get_docstring(node, clean=False)
        body: list[ast.stmt] = [ast.Expr(ast.Constant(doc))] if doc is not None else []
        node.body = body + [ast.Return(ast.Constant(None))]
        return node

    visit_FunctionDef = _stub
    visit_AsyncFunctionDef = _stub


def trivial_program(record: dict) -> str | None:
    """The first parseable candidate with every function body replaced by ``return None``
    (imports, constants and class layout kept), or None when no candidate parses."""
    for c in record.get("candidates") or []:
        try:
            tree = ast.parse(c)
        except (SyntaxError, ValueError, TypeError):
            continue
        return ast.unparse(ast.fix_missing_locations(_Stub().visit(tree)))
    return None


def seed_to_record(seed: dict) -> dict:
    """A code seed (self-instruct schema + ``language``/``tests``) as a verify input record whose
    only candidate is the seed's reference solution, ``instances[0]["output"]``."""
    sid = seed.get("id", "?")
    inst = seed.get("instances")
    if not isinstance(inst, list) or not inst or not isinstance(inst[0], dict):
        raise ValueError(f"seed {sid}: field 'instances' must be a non-empty list of objects")
    ref = inst[0].get("output")
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError(
            f"seed {sid}: field 'instances[0].output' (the reference solution) is missing"
        )
    if not isinstance(seed.get("tests"), str):
        raise ValueError(f"seed {sid}: field 'tests' must be a string of Python asserts")
    rec = {
        "id": sid,
        "instruction": seed.get("instruction", ""),
        "input": inst[0].get("input", ""),
        "language": seed.get("language", "python"),
        "tests": seed["tests"],
        "candidates": [ref],
    }
    if seed.get("entry_point"):
        rec["entry_point"] = seed["entry_point"]
    return rec


def _reason(statuses: list[dict]) -> str:
    order = ["failed", "error", "timeout", "memory", "rejected"]
    counts = Counter(s["status"] for s in statuses)
    best = max(order, key=lambda s: (counts[s], -order.index(s)))
    return f"tests_{best}"


def run(records: Iterable[dict], cfg: VerifyConfig, stats: StageStats) -> Iterator[dict]:
    """Yield the verified records in input order; drop the rest with a reason (see module doc).

    Records are handled ``cfg.batch`` at a time: round k runs the k-th candidate of every record
    of the batch still undecided (plus the vacuity probes in round 0) in parallel.
    """
    box = None
    try:
        batch: list[dict] = []
        for rec in records:
            batch.append(rec)
            if len(batch) >= cfg.batch:
                box = box or _open(cfg)
                yield from _run_batch(batch, cfg, stats, box)
                batch = []
        if batch:
            box = box or _open(cfg)
            yield from _run_batch(batch, cfg, stats, box)
    finally:
        if box is not None:
            box.close()


def _open(cfg: VerifyConfig) -> execution.Sandbox:
    import os

    n = cfg.workers or os.cpu_count() or 1
    return execution.Sandbox(n, sandbox=not cfg.unsafe_no_sandbox, fresh=cfg.fresh_sandbox)


def _run_batch(batch: list[dict], cfg: VerifyConfig, stats: StageStats, box) -> Iterator[dict]:
    state: list[dict] = []
    for rec in batch:
        stats.total += 1
        reason = check(rec, cfg)
        cands = [c if isinstance(c, str) else "" for c in rec.get("candidates") or []]
        state.append({"rec": rec, "reason": reason, "cands": cands, "statuses": [], "passed": None})
    jobs: list[tuple[dict, str, str]] = []  # (state, kind, program)
    if cfg.check_vacuous:
        for st in state:
            if st["reason"] is None:
                trivial = trivial_program(st["rec"])
                if trivial is not None:
                    jobs.append((st, "vacuity", trivial))
    k = 0
    while True:
        for st in state:
            if st["reason"] is None and st["passed"] is None and k < len(st["cands"]):
                jobs.append((st, "candidate", st["cands"][k]))
        if not jobs:
            break
        results = box.map(
            ((prog, st["rec"]["tests"]) for st, _kind, prog in jobs),
            timeout=cfg.timeout,
            memory_mb=cfg.memory_mb,
        )
        for (st, kind, _prog), res in zip(jobs, results, strict=True):
            if kind == "vacuity":
                if res.passed:
                    st["reason"] = "vacuous_tests"
                continue
            stats.extra["candidates_run"] += 1
            stats.extra[f"status_{res.status}"] += 1
            st["statuses"].append({"status": res.status, "detail": res.detail})
            if res.passed:
                stats.extra["candidates_passed"] += 1
                st["passed"] = len(st["statuses"]) - 1
        jobs = []
        k += 1
    for st in state:
        rec = st["rec"]
        if st["reason"] is None and st["passed"] is None:
            st["reason"] = _reason(st["statuses"]) if st["statuses"] else "no_candidates"
        if st["reason"] is not None:
            detail = {"statuses": st["statuses"]} if st["statuses"] else {}
            stats.drop(rec, st["reason"], **detail)
            continue
        stats.kept += 1
        i = st["passed"]
        yield {
            **rec,
            "output": st["cands"][i],
            "verification": {"passed_index": i, "statuses": st["statuses"]},
        }
