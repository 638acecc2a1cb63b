"""The run directory: where each stage's files live, how a run is found by name, the stage
writers that keep stages away from files, the one export writer, and the books check.

One table (:data:`STAGE_FILES`) names every stage file of every kind of run; the run, ingest,
``pipeline export`` and the report all read it from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.records import JsonlWriter, write_json_atomic, write_jsonl_atomic
from stages import export
from stages.base import StageStats

# Stage -> file stem, in pipeline order, per kind of run. ``<stem>.jsonl`` holds what the stage
# kept and ``<stem>.rejected.jsonl`` what it rejected, with the reason.
STAGE_FILES: dict[str, dict[str, str]] = {
    "generate": {
        "seeds": "00_seeds",
        "generate": "01_generated",
        "dedup": "02_dedup",
        "semdedup": "02_semdedup",  # semdedup.enabled: sorts between 02_dedup and 02a_classify
        "classify": "02a_classify",  # generation.strategy with classification
        "answer": "02b_answer",  # general mode, answer_mode=chat
        "filter": "03_filter",
        "solve": "03b_solve",  # code mode: tests and candidates
        "verify": "04_verify",
        "judge": "04b_judge",  # judge.enabled: after filter (general) or verify (code)
        "select": "04c_select",  # judge.top_k
        "export": "05_export",
    },
    "ingest": {
        "generate": "01_generated",
        "ground": "02_grounded",
        "dedup": "03_dedup",
        "filter": "04_filter",
        "export": "05_export",
    },
}

# Export's kept records are the exported files themselves (their ids are in the messages files).
EXPORT_KEPT = ("messages.jsonl", "messages.validation.jsonl")


def layout_for(mode: str) -> dict[str, str]:
    """The stage-file table of a run of ``mode`` (general, code or ingest)."""
    return STAGE_FILES["ingest" if mode == "ingest" else "generate"]


def kept_path(run_dir: Path, mode: str, stage: str) -> Path:
    return Path(run_dir) / f"{layout_for(mode)[stage]}.jsonl"


def rejected_path(run_dir: Path, mode: str, stage: str) -> Path:
    return Path(run_dir) / f"{layout_for(mode)[stage]}.rejected.jsonl"


def resolve_run_dir(arg: str | Path, output_dir: str | Path = "outputs") -> Path:
    """A run given as a directory path, or as a run name under ``output_dir``."""
    p = Path(arg)
    if p.is_dir():
        return p
    q = Path(output_dir) / p
    if q.is_dir():
        return q
    raise FileNotFoundError(f"{arg}: not a run directory (nor {q})")


def final_records_path(run_dir: Path, mode: str) -> Path | None:
    """The last stage file of a ``mode`` run that holds kept records (what export reads)."""
    layout = layout_for(mode)
    stages = [s for s in layout if s not in ("export", "seeds")]
    if mode == "general":
        stages = [s for s in stages if s not in ("solve", "verify")]
    for stage in reversed(stages):
        p = Path(run_dir) / f"{layout[stage]}.jsonl"
        if p.exists():
            return p
    return None


class StageFiles:
    """The kept and rejected JSONL writers of every stage of a run, truncated when first used:
    :meth:`stats` gives a stage its :class:`StageStats` with both sinks attached."""

    def __init__(self, run_dir: Path, mode: str):
        self.run_dir, self.mode = Path(run_dir), mode
        self.writers: dict[Path, JsonlWriter] = {}

    def _writer(self, path: Path) -> JsonlWriter:
        if path not in self.writers:
            self.writers[path] = JsonlWriter(path, append=False)
        return self.writers[path]

    def stats(self, stage: str, *, kept_file: bool = True) -> StageStats:
        kept = self._writer(kept_path(self.run_dir, self.mode, stage)) if kept_file else None
        rejected = self._writer(rejected_path(self.run_dir, self.mode, stage))
        return StageStats(stage=stage, sink=rejected.write, kept_sink=kept.write if kept else None)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()

    def __enter__(self) -> StageFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Exported:
    train: int
    validation: int


def write_export(
    run_dir: Path,
    records: Iterable[dict],
    cfg,
    stats: StageStats,
    *,
    seed: int,
    limit: int | None = None,
) -> Exported:
    """The one export writer (``generate``, ``ingest`` and ``pipeline export``): the export
    stage over ``records``, the seeded train/validation split, ``data.json``,
    ``messages.jsonl``, their ``.validation`` twins when the split holds any, and a
    ``datasets`` DatasetDict with ``save_to_disk`` when asked. ``cfg`` is an ``ExportConfig``.
    Files from an earlier export of the same run that this one does not write are removed."""
    run_dir = Path(run_dir)
    rows = list(export.run(records, stats, limit=limit))
    train, val = export.split(rows, cfg.validation_fraction, seed)
    write_json_atomic(run_dir / "data.json", [export.to_alpaca(r) for r in train])
    write_jsonl_atomic(
        run_dir / "messages.jsonl", (export.to_messages(r, cfg.system_prompt) for r in train)
    )
    for name in ("data.validation.json", "messages.validation.jsonl"):
        (run_dir / name).unlink(missing_ok=True)
    if val:
        write_json_atomic(run_dir / "data.validation.json", [export.to_alpaca(r) for r in val])
        write_jsonl_atomic(
            run_dir / "messages.validation.jsonl",
            (export.to_messages(r, cfg.system_prompt) for r in val),
        )
    if cfg.save_to_disk:
        import datasets

        splits = {"train": datasets.Dataset.from_list([export.to_alpaca(r) for r in train])}
        if val:
            splits["validation"] = datasets.Dataset.from_list([export.to_alpaca(r) for r in val])
        datasets.DatasetDict(splits).save_to_disk(str(run_dir / "hf_dataset"))
    stats.extra["train"] += len(train)
    stats.extra["validation"] += len(val)
    return Exported(len(train), len(val))


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def books_errors(run_dir: Path, mode: str, stats: dict[str, StageStats]) -> list[str]:
    """Where the books do not balance: for every stage, records in = kept + rejected (with the
    same ids), and its files hold exactly what its counters say. Empty when all is well."""
    errors = []
    layout = layout_for(mode)
    for name, st in stats.items():
        why = st.balance_error()
        if why:
            errors.append(why)
        if name not in layout or name == "seeds":
            continue
        if name == "export":
            kept_lines = sum(_lines(Path(run_dir) / f) for f in EXPORT_KEPT)
        else:
            kept_lines = _lines(kept_path(run_dir, mode, name))
        rej_lines = _lines(rejected_path(run_dir, mode, name))
        if (kept_lines, rej_lines) != (st.kept, st.rejected):
            errors.append(
                f"stage {name}: its files hold {kept_lines} kept + {rej_lines} rejected records "
                f"but it counted {st.kept} + {st.rejected}"
            )
    return errors
