"""Per-stage counters that add up, and the end-of-run summary table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageStats:
    """What one stage saw: records in, kept, dropped by reason, wall seconds, and any
    stage-specific counters in ``extra`` (numbers only, so that two values add up).

    A stage reports a drop with :meth:`drop`; the orchestrator attaches a ``sink`` that writes
    the rejected record (with its reason) to the stage's ``.rejected.jsonl`` file, so the stage
    itself never touches a file.
    """

    stage: str = ""
    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    extra: Counter = field(default_factory=Counter)
    sink: Callable[[dict], None] | None = field(default=None, repr=False, compare=False)

    def drop(self, record: dict, reason: str, **detail: Any) -> None:
        """Count a rejection and hand the record, with ``reject: {stage, reason, ...}``, to the sink."""
        self.dropped[reason] += 1
        if self.sink is not None:
            self.sink({**record, "reject": {"stage": self.stage, "reason": reason, **detail}})

    def __add__(self, other: StageStats) -> StageStats:
        if not isinstance(other, StageStats):
            return NotImplemented
        return StageStats(
            stage=self.stage or other.stage,
            total=self.total + other.total,
            kept=self.kept + other.kept,
            dropped=self.dropped + other.dropped,
            seconds=self.seconds + other.seconds,
            extra=self.extra + other.extra,
            sink=self.sink or other.sink,
        )

    @property
    def rejected(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "kept": self.kept,
            "rejected": self.rejected,
            "dropped": dict(self.dropped.most_common()),
            "seconds": round(self.seconds, 3),
            **({"extra": dict(self.extra)} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, stage: str, data: dict) -> StageStats:
        return cls(
            stage=stage,
            total=data.get("total", 0),
            kept=data.get("kept", 0),
            dropped=Counter(data.get("dropped", {})),
            seconds=data.get("seconds", 0.0),
            extra=Counter(data.get("extra", {})),
        )


def summary_table(stats: dict[str, StageStats]) -> str:
    """One plain-text table: a row per stage, its counts and its top reject reasons."""
    rows = [("stage", "in", "kept", "rejected", "seconds", "top reasons")]
    for name, s in stats.items():
        reasons = ", ".join(f"{r}={n}" for r, n in s.dropped.most_common(4))
        rows.append((name, str(s.total), str(s.kept), str(s.rejected), f"{s.seconds:.1f}", reasons))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for i, row in enumerate(rows):
        cells = [
            c.ljust(w) if j == 0 else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join(cells) + "  " + row[-1])
        if i == 0:
            lines.append("-" * (sum(widths) + 2 * len(widths) + len(row[-1])))
    return "\n".join(lines)
