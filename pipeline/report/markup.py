"""The small HTML pieces the report's sections are built from: escaping, number formats,
tables, grids and a record as the page shows it. Every text from a run goes through
:func:`esc` (``html.escape`` with quotes), so a record can print markup but never inject it.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from pipeline.report.load import TEXT_FIELDS

TRUNCATE = 700  # characters of a record field shown in the page


def esc(x: Any) -> str:
    """``x`` as text safe inside an element or a quoted attribute."""
    return html.escape(str(x), quote=True)


def anchor(*parts: Any) -> str:
    """An element id from ``parts`` (reason names may hold any character)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(str(p) for p in parts))


def num(x: Any, digits: int = 0) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and digits:
        return f"{x:,.{digits}f}"
    return f"{x:,.0f}" if isinstance(x, int | float) else esc(x)


def money(x: Any) -> str:
    if not isinstance(x, int | float):
        return "–"
    if x == 0:
        return "$0"
    return f"${x:,.4f}" if x < 1 else f"${x:,.2f}"


def pct(n: float, d: float) -> str:
    return f"{100 * n / d:.1f}%" if d else "–"


def table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Rows are HTML already (escape before); the first column is left-aligned, the rest right."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def clip(text: Any, limit: int = TRUNCATE) -> str:
    s = "" if text is None else str(text)
    if len(s) > limit:
        s = s[:limit] + f" … [{len(s) - limit:,} more characters]"
    return esc(s)


def record_html(rec: dict, *, show_reject: bool = False) -> str:
    parts = [f'<div class="rec"><div class="rid">{esc(rec.get("id", ""))}</div>']
    for f in TEXT_FIELDS:
        val = rec.get(f)
        if f == "input" and not val:
            continue
        parts.append(f'<div class="fld"><b>{f}</b><pre>{clip(val)}</pre></div>')
    if rec.get("tests"):
        parts.append(f'<div class="fld"><b>tests</b><pre>{clip(rec.get("tests"))}</pre></div>')
    if show_reject and isinstance(rec.get("reject"), dict):
        detail = {k: v for k, v in rec["reject"].items() if k not in ("stage", "reason")}
        if detail:
            text = json.dumps(detail, ensure_ascii=False, default=str)
            parts.append(f'<div class="fld"><b>detail</b><pre>{clip(text, 400)}</pre></div>')
    parts.append("</div>")
    return "".join(parts)


def grid(*items: str) -> str:
    """Pieces (charts, tables) side by side where the page is wide enough, stacked where not."""
    cells = "".join(f"<div>{x}</div>" for x in items if x)
    return f'<div class="grid">{cells}</div>' if cells else ""


def quantiles(vals: list[int]) -> list[str]:
    """count, min, median, p90, max of ``vals``, formatted."""
    import numpy as np

    if not vals:
        return ["–"] * 5
    q = np.percentile(vals, [0, 50, 90, 100])
    return [num(len(vals))] + [f"{x:,.0f}" for x in q]
