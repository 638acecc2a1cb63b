"""The report's charts: matplotlib figures rendered to SVG and inlined as ``data:`` URIs in an
``<img>``, so the page needs no network and no script. Each function takes plain figures (no
run directory) and returns the ``<img>`` tag, or "" when there is nothing to draw.

SVG text stays text (``svg.fonttype: none``) and ids are salted, so the same run gives the same
bytes; labels come from the data, so the page renders under ``text.parse_math: False``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from collections.abc import Callable

from pipeline.report.load import records_in

TOP_VERBS = 16
OBJECTS_PER_VERB = 4

PALETTE = ("#3b6ea5", "#e07b39", "#5a9e57", "#c44e52", "#8172b2", "#937860", "#da8bc3",
           "#8c8c8c", "#ccb974", "#64b5cd")  # fmt: skip
STATUS_COLORS = {"passed": "#5a9e57", "failed": "#c44e52", "error": "#e07b39",
                 "timeout": "#8172b2", "memory": "#937860", "rejected": "#8c8c8c"}  # fmt: skip


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig


def _style(ax, counts: str = "") -> None:
    """Quiet axes; ``counts`` names the axes ("x", "y") that count records, ticked in integers."""
    from matplotlib.ticker import MaxNLocator

    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=9)
    for axis in counts:
        getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))


def _img(fig, alt: str) -> str:
    """The figure as an inline SVG ``<img>`` (text kept as text, ids salted for stability)."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "report"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    alt = html.escape(alt, quote=True)
    return f'<img class="chart" alt="{alt}" src="data:image/svg+xml;base64,{data}">'


def funnel_chart(stages: dict[str, dict]) -> str:
    """Records in and kept per stage (``stages`` as :class:`~pipeline.report.load.RunData`
    holds them), in pipeline order."""
    # Seeds are the example pool, not candidates: hundreds of them would dwarf the funnel.
    shown = [s for s, v in stages.items() if s != "seeds" and (records_in(v) or v["kept"])]
    if not shown:
        return ""
    fig = _figure(6.4, 0.45 * len(shown) + 0.9)
    ax = fig.add_subplot()
    y = list(range(len(shown)))[::-1]
    totals = [records_in(stages[s]) for s in shown]
    kept = [stages[s]["kept"] for s in shown]
    ax.barh(y, totals, color="#d9dee6", label="in")
    ax.barh(y, kept, color=PALETTE[0], label="kept")
    for yi, t, k in zip(y, totals, kept, strict=True):
        ax.text(max(t, k), yi, f"  {k:,} / {t:,}", va="center", fontsize=9)
    ax.set_yticks(y, shown)
    ax.set_xlim(0, max(totals + kept) * 1.25 or 1)
    ax.set_xlabel("records")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    _style(ax, "x")
    return _img(fig, "stage funnel: records in and kept per stage")


def reasons_chart(stages: dict[str, dict]) -> str:
    """The most frequent rejection reasons over all stages, coloured by stage."""
    rows = [
        (f"{stage}: {reason}", n, i)
        for i, (stage, s) in enumerate(stages.items())
        for reason, n in s["dropped"].items()
        if n
    ]
    if not rows:
        return ""
    rows = sorted(rows, key=lambda r: -r[1])[:14]
    fig = _figure(6.4, 0.32 * len(rows) + 0.8)
    ax = fig.add_subplot()
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [r[1] for r in rows], color=[PALETTE[r[2] % len(PALETTE)] for r in rows])
    for yi, r in zip(y, rows, strict=True):
        ax.text(r[1], yi, f" {r[1]:,}", va="center", fontsize=8)
    ax.set_yticks(y, [r[0] for r in rows])
    ax.set_xlabel("records rejected")
    _style(ax, "x")
    return _img(fig, "rejection reasons by stage")


def sunburst(pairs: list[tuple[str | None, str | None]]) -> str:
    """Alpaca-style two-ring chart: leading verbs inside, their most common objects outside."""
    verbs = Counter(v for v, _ in pairs if v)
    if not verbs:
        return ""
    top = [v for v, _ in verbs.most_common(TOP_VERBS)]
    by_verb: dict[str, Counter] = {v: Counter() for v in top}
    for v, o in pairs:
        if v in by_verb:
            by_verb[v][o or "–"] += 1
    inner_sizes, inner_labels, inner_colors = [], [], []
    outer_sizes, outer_labels, outer_colors = [], [], []
    from matplotlib.colors import to_rgba

    for i, v in enumerate(top):
        color = PALETTE[i % len(PALETTE)]
        inner_sizes.append(verbs[v])
        inner_labels.append(v)
        inner_colors.append(color)
        shown = by_verb[v].most_common(OBJECTS_PER_VERB)
        for j, (o, n) in enumerate(shown):
            outer_sizes.append(n)
            outer_labels.append(o)
            outer_colors.append(to_rgba(color, 0.75 - 0.13 * j))
        rest = verbs[v] - sum(n for _, n in shown)
        if rest:
            outer_sizes.append(rest)
            outer_labels.append("")
            outer_colors.append(to_rgba(color, 0.15))
    total = sum(inner_sizes)
    fig = _figure(6.4, 6.4)
    ax = fig.add_subplot()
    w_in, _ = ax.pie(
        inner_sizes,
        radius=0.62,
        colors=inner_colors,
        startangle=90,
        counterclock=False,
        wedgeprops={"width": 0.38, "edgecolor": "white"},
    )
    w_out, _ = ax.pie(
        outer_sizes,
        radius=1.0,
        colors=outer_colors,
        startangle=90,
        counterclock=False,
        wedgeprops={"width": 0.38, "edgecolor": "white"},
    )

    def label(wedges, labels, sizes, r, min_share, size):
        for w, lab, n in zip(wedges, labels, sizes, strict=True):
            if not lab or n / total < min_share:
                continue
            ang = math.radians((w.theta1 + w.theta2) / 2)
            ax.text(
                r * math.cos(ang),
                r * math.sin(ang),
                lab,
                ha="center",
                va="center",
                fontsize=size,
                color="black",
            )

    label(w_in, inner_labels, inner_sizes, 0.43, 0.018, 8.5)
    label(w_out, outer_labels, outer_sizes, 0.81, 0.012, 7)
    other = len(pairs) - total
    ax.set_title(
        f"top {len(top)} leading verbs (inner) and their objects (outer); "
        f"{other:,} records in other verbs or none",
        fontsize=9,
    )
    return _img(fig, "leading verbs and their objects")


def hist(
    values: list[float],
    title: str,
    xlabel: str,
    *,
    bins: int | list[float] = 30,
    vline: float | None = None,
    vlabel: str = "",
    color: str = PALETTE[0],
    integer_x: bool = False,
) -> str:
    if not values:
        return ""
    fig = _figure(6.4, 2.6)
    ax = fig.add_subplot()
    ax.hist(values, bins=bins, color=color, edgecolor="white", linewidth=0.5)
    if vline is not None:
        ax.axvline(vline, color="#c44e52", linestyle="--", linewidth=1)
        ax.text(vline, ax.get_ylim()[1] * 0.95, f" {vlabel}", color="#c44e52", fontsize=8, va="top")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("records")
    _style(ax, "xy" if integer_x else "y")
    return _img(fig, title)


def length_chart(lengths: dict[str, list[int]]) -> str:
    import numpy as np

    present = {k: v for k, v in lengths.items() if v}
    if not present:
        return ""
    fig = _figure(6.4, 2.3 * len(present))
    axes = fig.subplots(len(present), 1, squeeze=False)[:, 0]
    for i, (ax, (name, vals)) in enumerate(zip(axes, present.items(), strict=True)):
        hi = int(np.ceil(np.percentile(vals, 99)))
        clipped = [min(v, hi) for v in vals]
        lo = min(clipped)
        # Word counts are integers: one bar per count when the range is small, else 30 bins.
        bins = [x - 0.5 for x in range(lo, hi + 2)] if hi - lo < 30 else 30
        ax.hist(clipped, bins=bins, color=PALETTE[i], edgecolor="white", linewidth=0.5)
        ax.set_title(
            f"{name}: words per record (n={len(vals):,}; clipped at p99 = {hi:.0f})", fontsize=9
        )
        ax.set_ylabel("records")
        _style(ax, "y")
    return _img(fig, "length distributions of instruction, input and output")


def bars(
    labels: list[str],
    series: dict[str, list[float]],
    title: str,
    xlabel: str,
    fmt: Callable[[float], str] = lambda x: f"{x:,.0f}",
    integer: bool = True,
) -> str:
    if not labels or not any(any(v) for v in series.values()):
        return ""
    fig = _figure(6.4, 0.4 * len(labels) + 1.0)
    ax = fig.add_subplot()
    y = list(range(len(labels)))[::-1]
    left = [0.0] * len(labels)
    for i, (name, vals) in enumerate(series.items()):
        color = STATUS_COLORS.get(name, PALETTE[i % len(PALETTE)])
        ax.barh(y, vals, left=left, color=color, label=name)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    for yi, v in zip(y, left, strict=True):
        ax.text(v, yi, " " + fmt(v), va="center", fontsize=8)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, max(left) * 1.2 or 1)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _style(ax, "x" if integer else "")
    return _img(fig, title)
