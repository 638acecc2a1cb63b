"""The end-of-run summary table over per-stage counters (:class:`stages.base.StageStats`)."""

from __future__ import annotations

from stages.base import StageStats

__all__ = ["StageStats", "summary_table"]


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
