"""Reading one run directory for the report: ``stats.json``, ``config.yaml``, every stage's kept
and rejected files, and the exported ``data.json``.

Which files belong to which stage comes from the run's own stage-file table
(:data:`pipeline.rundir.STAGE_FILES`), picked by the run's ``mode`` in ``stats.json`` (general,
code or ingest) or, where that is missing, by what the directory holds: an ingest run's
``04_filter`` is its filter stage, never verify records.

Counts come from ``stats.json`` where present, else from the files. Missing files and missing
keys are tolerated (a report of a half-finished run is still useful); a malformed record line
is a :class:`~pipeline.records.RecordError` naming the file and line, except a torn last line (a
run killed mid-write), which is skipped and noted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.records import RecordError, enumerate_jsonl
from pipeline.rundir import EXPORT_KEPT, STAGE_FILES, layout_for

EXAMPLES_PER_REASON = 3
TEXT_FIELDS = ("instruction", "input", "output")
# Export writes its kept records as the Alpaca files, in the shape the report reads.
EXPORTED = ("data.json", "data.validation.json")


@dataclass
class RunData:
    """Everything the report shows about one run, read from its directory."""

    path: Path
    name: str
    stats: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    mode: str = "general"
    layout: dict[str, str] = field(default_factory=dict)  # stage -> file stem, in order
    # stage -> {"total", "kept", "rejected", "dropped": Counter, "seconds", "extra": dict}, plus
    # "entered" (records in) where stats.json gives it
    stages: dict[str, dict] = field(default_factory=dict)
    # stage -> reason -> a few example rejected records
    examples: dict[str, dict[str, list[dict]]] = field(default_factory=dict)
    kept: list[dict] = field(default_factory=list)
    kept_source: str = ""
    last_stage: list[dict] = field(default_factory=list)  # the last stage file before export
    # The exported records as the last stage file holds them (a code record's tests, which
    # data.json drops); empty when the files cannot say which records were exported.
    kept_full: list[dict] = field(default_factory=list)
    verified: list[dict] = field(default_factory=list)  # verify stage: kept + rejected
    # stats.json's books check: [] balanced, else what does not add up; None when not recorded
    books: list[str] | None = None
    notes: list[str] = field(default_factory=list)


def records_in(stage: dict) -> int:
    """Records that entered a stage: its ``entered`` where counted, else its decisions (a
    generation stage's records are born there, so it has no ``entered``)."""
    entered = stage.get("entered")
    return entered if isinstance(entered, int) else stage["total"]


def read_lines(path: Path, notes: list[str]) -> Iterable[tuple[int, dict]]:
    """(line number, record) for a JSONL file; a torn last line is skipped with a note."""

    def torn(lineno: int) -> None:
        notes.append(f"{path.name}:{lineno}: torn last line skipped (a write was cut off)")

    return enumerate_jsonl(path, on_torn_tail=torn)


def read_file(path: Path, notes: list[str]) -> Iterable[tuple[int, dict]]:
    """(line or item number, record) for a JSONL file or a JSON array file."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RecordError(path, e.lineno, None, f"not valid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise RecordError(path, 1, None, "expected a JSON array of records")
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise RecordError(path, i + 1, None, f"array item {i} is not a JSON object")
            yield i + 1, obj
    else:
        yield from read_lines(path, notes)


def checked(path: Path, lineno: int, rec: dict) -> dict:
    for f in TEXT_FIELDS:
        if f in rec and rec[f] is not None and not isinstance(rec[f], str):
            raise RecordError(path, lineno, f, f"expected str, got {type(rec[f]).__name__}")
    return rec


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _load_config(path: Path) -> dict:
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    return config if isinstance(config, dict) else {}


def _exists(run_dir: Path, stem: str) -> bool:
    return (run_dir / f"{stem}.jsonl").exists() or (run_dir / f"{stem}.rejected.jsonl").exists()


def run_mode(run_dir: Path, stats: dict, config: dict) -> str:
    """general, code or ingest: ``stats.json``'s word, else what the config and files say."""
    mode = stats.get("mode")
    if isinstance(mode, str) and mode:
        return mode
    # An ingest run's resolved config also has a generation section (mode general), so its own
    # marks are looked for first.
    if (
        "ingest" in config
        or (run_dir / "ingest_report.json").exists()
        or _exists(run_dir, STAGE_FILES["ingest"]["ground"])
    ):
        return "ingest"
    mode = (config.get("generation") or {}).get("mode")
    if mode in ("general", "code"):
        return mode
    gen = STAGE_FILES["generate"]
    return (
        "code" if _exists(run_dir, gen["solve"]) or _exists(run_dir, gen["verify"]) else "general"
    )


def _books(stats: dict) -> list[str] | None:
    books = stats.get("books")
    if books is None:
        return None
    if books == "balanced":
        return []
    if isinstance(books, list):
        return [str(e) for e in books]
    return [str(books)]


def stage_order(table: list[str], names: list[str]) -> list[str]:
    """``names`` in the table's order; a stage the table does not name (ingest's ``walk``) keeps
    its place in ``names`` (stats.json's order), just before the next stage the table names."""
    keys: dict[str, tuple[int, int, int]] = {}
    following = len(table)
    for i, name in reversed(list(enumerate(names))):
        if name in table:
            following = table.index(name)
            keys[name] = (following, 0, i)
        else:
            keys[name] = (following, -1, i)
    return sorted(names, key=keys.__getitem__)


def load_run(run_dir: Path) -> RunData:
    """Read one run directory; counts come from ``stats.json`` where present, else from files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    run = RunData(path=run_dir, name=run_dir.name)
    if (run_dir / "stats.json").exists():
        run.stats = _load_json(run_dir / "stats.json")
    if (run_dir / "config.yaml").exists():
        run.config = _load_config(run_dir / "config.yaml")
    run.name = str(run.stats.get("run") or run_dir.name)
    run.mode = run_mode(run_dir, run.stats, run.config)
    run.layout = layout = layout_for(run.mode)
    run.books = _books(run.stats)

    # Rejected files: reasons counted and a few examples kept per reason; verify's are kept whole.
    file_counts: dict[str, Counter] = {}
    stage_of = {f"{stem}.rejected.jsonl": stage for stage, stem in layout.items()}
    others = sorted(p.name for p in run_dir.glob("*.rejected.jsonl") if p.name not in stage_of)
    for name in [*stage_of, *others]:
        path = run_dir / name
        if not path.exists():
            continue
        default_stage = stage_of.get(name, name.split(".")[0])
        for lineno, rec in read_lines(path, run.notes):
            checked(path, lineno, rec)
            reject = rec.get("reject") if isinstance(rec.get("reject"), dict) else {}
            stage = str(reject.get("stage") or default_stage)
            reason = str(reject.get("reason") or "unspecified")
            file_counts.setdefault(stage, Counter())[reason] += 1
            bucket = run.examples.setdefault(stage, {}).setdefault(reason, [])
            if len(bucket) < EXAMPLES_PER_REASON:
                bucket.append(rec)
            if stage == "verify":
                run.verified.append(rec)

    kept_counts: dict[str, int] = {}
    for stage, stem in layout.items():
        path = run_dir / f"{stem}.jsonl"
        if stage == "export" or not path.exists():
            continue
        records = [checked(path, n, r) for n, r in read_file(path, run.notes)]
        kept_counts[stage] = len(records)
        if stage == "verify":
            run.verified = records + run.verified
        if stage != "seeds":
            run.kept, run.kept_source = records, path.name
            run.last_stage = records
    _load_exported(run_dir, run, kept_counts)

    stats_stages = run.stats.get("stages") if isinstance(run.stats.get("stages"), dict) else {}
    names = list(dict.fromkeys([*stats_stages, *kept_counts, *file_counts]))
    for stage in stage_order(list(layout), names):
        s = stats_stages.get(stage) if isinstance(stats_stages.get(stage), dict) else None
        if s is not None:
            dropped = Counter({str(k): int(v) for k, v in (s.get("dropped") or {}).items()})
            kept = int(s.get("kept", kept_counts.get(stage, 0)))
            rejected = int(s.get("rejected", sum(dropped.values())))
            total = int(s.get("total", kept + rejected))
            seconds = float(s.get("seconds", 0.0) or 0.0)
            extra = dict(s.get("extra") or {})
            entered = s.get("entered")
        else:
            dropped = file_counts.get(stage, Counter())
            kept = kept_counts.get(stage, 0)
            rejected = sum(dropped.values())
            total, seconds, extra, entered = kept + rejected, 0.0, {}, None
        run.stages[stage] = {
            "total": total,
            "kept": kept,
            "rejected": rejected,
            "dropped": dropped,
            "seconds": seconds,
            "extra": extra,
        }
        if isinstance(entered, int):
            run.stages[stage]["entered"] = entered
    return run


def _load_exported(run_dir: Path, run: RunData, kept_counts: dict[str, int]) -> None:
    """Export's kept records: ``data.json`` (+ its validation twin) as the records shown, and the
    messages files' ids to find those records, with every field, in the last stage file."""
    present = [name for name in EXPORTED if (run_dir / name).exists()]
    if "data.json" in present:
        records = []
        for name in present:
            path = run_dir / name
            records += [checked(path, n, r) for n, r in read_file(path, run.notes)]
        run.kept, run.kept_source = records, " + ".join(present)
        kept_counts["export"] = len(records)
    ids: list = []
    for name in EXPORT_KEPT:
        path = run_dir / name
        if path.exists():
            ids += [m.get("id") for _, m in read_lines(path, run.notes)]
    if "export" not in kept_counts and ids:
        kept_counts["export"] = len(ids)
    wanted = {i for i in ids if isinstance(i, str | int)}
    if wanted and len(wanted) == len(run.kept):
        full = [r for r in run.last_stage if r.get("id") in wanted]
        if len(full) == len(wanted):
            run.kept_full = full
    elif run.last_stage and len(run.last_stage) == len(run.kept):
        # A run from before the messages files carried ids: all of its last stage was exported.
        run.kept_full = run.last_stage
