"""The report's sections: each renders one run's :class:`~pipeline.report.analysis.Analysis`
as HTML (summary and findings, stage funnel, rejection reasons with examples, instruction
diversity, lengths, tokens/cost/time, code verification, a sample of kept records), plus the
side-by-side table for several runs. Every text from the run is escaped here.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from pipeline.report.analysis import Analysis, cost_per_kept
from pipeline.report.charts import (
    PALETTE,
    bars,
    funnel_chart,
    hist,
    length_chart,
    reasons_chart,
    sunburst,
)
from pipeline.report.load import records_in
from pipeline.report.markup import (
    anchor,
    esc,
    grid,
    money,
    num,
    pct,
    quantiles,
    record_html,
    table,
)

SAMPLE_RECORDS = 12


def findings(a: Analysis) -> list[str]:
    """Plain sentences about what stands out; each one computed from the run, none canned."""
    run, out = a.run, []
    stopped = run.stats.get("stopped_reason")
    if stopped:
        out.append(
            f"<b>The run stopped early</b> ({esc(stopped)}): later stages saw fewer records."
        )
    wanted = (run.config.get("generation") or {}).get("num")
    if isinstance(wanted, int) and run.kept and len(run.kept) < wanted:
        out.append(f"Kept {len(run.kept):,} records of the {wanted:,} asked for.")
    worst = max(
        ((s, v) for s, v in run.stages.items() if v["total"] and v["rejected"]),
        key=lambda sv: sv[1]["rejected"] / sv[1]["total"],
        default=None,
    )
    if worst:
        s, v = worst
        reason, n = (v["dropped"].most_common(1) or [("?", 0)])[0]
        out.append(
            f"Stage <b>{esc(s)}</b> rejected the largest share: {pct(v['rejected'], v['total'])} "
            f"of {v['total']:,} (most often <code>{esc(reason)}</code>, {n:,})."
        )
    verbs = Counter(v for v, _ in a.pairs if v)
    if verbs:
        top_v, n_v = verbs.most_common(1)[0]
        pair_counts = Counter((v, o) for v, o in a.pairs if v and o)
        msg = (
            f"{len(verbs):,} distinct leading verbs; the most common, <b>{esc(top_v)}</b>, "
            f"starts {pct(n_v, len(a.pairs))} of instructions"
        )
        if pair_counts:
            (pv, po), n_p = pair_counts.most_common(1)[0]
            share = pct(n_p, len(a.pairs))
            msg += f"; the top verb–object pair <b>{esc(pv)} {esc(po)}</b> {share}"
        out.append(msg + ".")
    if a.nn:
        import numpy as np

        med = float(np.median(a.nn))
        hi = sum(x > 0.5 for x in a.nn)
        out.append(
            f"Median nearest-neighbour ROUGE-L among kept instructions is {med:.2f}; "
            f"{pct(hi, len(a.nn))} have a neighbour above 0.5."
        )
    if run.kept:
        out.append(f"{pct(a.with_input, len(run.kept))} of kept records have an input.")
    if (per := cost_per_kept(run)) is not None:
        out.append(f"Cost per kept record: {money(per)}.")
    if (c := a.code) and run.verified:
        out.append(
            f"{c['solved']:,} of {c['problems']:,} problems kept with a passing candidate; "
            f"{pct(c['passed'], c['run'])} of {c['run']:,} candidates passed."
        )
    out.extend(esc(n) for n in run.notes)
    return out


# --------------------------------------------------------------------------------------------
# Sections: each renders one run; the page puts runs side by side


def _sec_summary(a: Analysis) -> str:
    run = a.run
    llm = run.stats.get("llm") or {}
    cards = [
        ("kept records", num(len(run.kept))),
        ("mode", esc(run.mode)),
        (
            "wall time",
            f"{run.stats['wall_seconds']:,.1f} s"
            if isinstance(run.stats.get("wall_seconds"), int | float)
            else "–",
        ),
        ("LLM requests", num(llm.get("requests"))),
        ("cost", money(llm.get("cost"))),
        ("distinct verbs", num(len({v for v, _ in a.pairs if v}))),
    ]
    if a.code and run.verified:
        cards.append(("candidate pass rate", pct(a.code["passed"], a.code["run"])))
    body = "".join(
        f'<div class="card"><div class="v">{v}</div><div class="k">{k}</div></div>'
        for k, v in cards
    )
    gen = run.config.get("generation") or {}
    llm_cfg = run.config.get("llm") or {}
    sem = run.config.get("semdedup") or {}
    meta = [
        ("run", run.name),
        ("started", run.stats.get("started")),
        ("model", run.stats.get("model") or llm_cfg.get("model")),
        ("temperature", gen.get("temperature")),
        ("dedup threshold", (run.config.get("dedup") or {}).get("threshold")),
        ("semantic dedup threshold", sem.get("threshold") if sem.get("enabled") else None),
        ("kept records from", run.kept_source),
    ]
    meta_html = " · ".join(f"{k}: <b>{esc(v)}</b>" for k, v in meta if v not in (None, ""))
    banner = ""
    if run.stats.get("stopped_reason"):
        banner = f'<div class="warn">Stopped early: {esc(run.stats["stopped_reason"])}</div>'
    items = "".join(f"<li>{f}</li>" for f in findings(a))
    return (
        f'{banner}{books_html(run.books)}<div class="meta">{meta_html}</div>'
        f'<div class="cards">{body}</div><ul class="findings">{items}</ul>'
    )


def books_html(books: list[str] | None) -> str:
    """The run's own books check (stats.json ``books``): a line when they balance, a warning
    listing every stage that does not add up when they do not, nothing when not recorded."""
    if books is None:
        return ""
    if not books:
        return (
            '<p class="books">Books: <b>balanced</b>: at every stage records in = kept + '
            "rejected, and the stage files hold what the counters say.</p>"
        )
    items = "".join(f"<li>{esc(e)}</li>" for e in books)
    return (
        f'<div class="warn books"><b>The books do not balance</b> ({len(books)} '
        f"problem{'s' * (len(books) != 1)}): the counts below are not to be trusted "
        f"until these are explained.<ul>{items}</ul></div>"
    )


def _sec_funnel(a: Analysis) -> str:
    run, rows = a.run, []
    for stage, s in run.stages.items():
        top = ", ".join(
            (
                f'<a href="#{anchor("r", a.idx, "rej", stage, r)}">{esc(r)}</a>'
                if run.examples.get(stage, {}).get(r)
                else esc(r)
            )
            + f"&nbsp;{n:,}"
            for r, n in s["dropped"].most_common(3)
        )
        n_in = records_in(s)
        cell_in = num(n_in)
        if n_in != s["kept"] + s["rejected"]:
            # The stage lost (or made up) records: say so where its count is read.
            cell_in += f' <span class="off">≠ {s["kept"] + s["rejected"]:,} out</span>'
        rows.append(
            [
                esc(stage),
                cell_in,
                num(s["kept"]),
                num(s["rejected"]),
                pct(s["rejected"], n_in),
                f"{s['seconds']:,.1f}",
                top,
            ]
        )
    if not rows:
        return "<p>No stage files or stats found.</p>"
    head = ["stage", "in", "kept", "rejected", "rejected %", "seconds", "top reasons"]
    return grid(funnel_chart(run.stages), table(head, rows))


def _sec_rejections(a: Analysis) -> str:
    run, tables = a.run, []
    for stage, s in run.stages.items():
        reasons = Counter(s["dropped"])
        for r, exs in run.examples.get(stage, {}).items():
            reasons.setdefault(r, len(exs))
        if not reasons:
            continue
        rows = []
        for r, n in reasons.most_common():
            n_ex = len(run.examples.get(stage, {}).get(r, []))
            link = (
                f'<a href="#{anchor("r", a.idx, "rej", stage, r)}">'
                f"{n_ex} example{'s' * (n_ex != 1)}</a>"
                if n_ex
                else "no examples on file"
            )
            rows.append(
                [
                    f"<code>{esc(r)}</code>",
                    num(n),
                    pct(n, s["rejected"] or sum(reasons.values())),
                    link,
                ]
            )
        tables.append(
            f"<h3>{esc(stage)}</h3>" + table(["reason", "records", "share", "examples"], rows)
        )
    if not tables:
        return "<p>Nothing was rejected.</p>"
    out = [
        grid(reasons_chart(run.stages), "".join(tables)),
        "<h3>Examples of rejected records</h3>",
    ]
    for stage, by_reason in run.examples.items():
        for r, exs in by_reason.items():
            recs = "".join(record_html(x, show_reject=True) for x in exs)
            out.append(
                f'<details id="{anchor("r", a.idx, "rej", stage, r)}"><summary>{esc(stage)}: '
                f"<code>{esc(r)}</code> ({len(exs)} shown)</summary>{recs}</details>"
            )
    return "".join(out)


def _sec_diversity(a: Analysis) -> str:
    import numpy as np

    if not a.pairs:
        return "<p>No kept records.</p>"
    pair_counts = Counter(f"{v} {o}" if o else v for v, o in a.pairs if v)
    rows = [[esc(p), num(n), pct(n, len(a.pairs))] for p, n in pair_counts.most_common(12)]
    none = sum(1 for v, _ in a.pairs if not v)
    if none:
        rows.append(["<i>no leading verb found</i>", num(none), pct(none, len(a.pairs))])
    side = [table(["verb + object", "records", "share"], rows, "narrow")]
    if a.nn:
        cap = f" (a seeded sample of {a.nn_sampled:,})" if a.nn_sampled < len(a.pairs) else ""
        side.append(
            hist(
                a.nn,
                f"nearest-neighbour ROUGE-L among kept instructions{cap}",
                "ROUGE-L F",
                bins=[i / 40 for i in range(41)],
                vline=a.threshold,
                vlabel=f"dedup threshold {a.threshold}",
                color=PALETTE[4],
            )
        )
        q = np.percentile(a.nn, [50, 90, 99])
        side.append(
            f"<p>nearest-neighbour ROUGE-L: median {q[0]:.2f} · p90 {q[1]:.2f} · "
            f"p99 {q[2]:.2f} · max {max(a.nn):.2f}</p>"
        )
    return grid(sunburst(a.pairs), "".join(side))


def _sec_lengths(a: Analysis) -> str:
    if not a.run.kept:
        return "<p>No kept records.</p>"
    rows = [[k] + quantiles(v) for k, v in a.lengths.items()]
    n = len(a.run.kept)
    share = (
        f"<p>Records with an input: <b>{a.with_input:,}</b> of {n:,} ({pct(a.with_input, n)}).</p>"
    )
    head = ["field (words)", "records", "min", "median", "p90", "max"]
    return grid(share + table(head, rows, "narrow"), length_chart(a.lengths))


def _sec_cost(a: Analysis) -> str:
    run = a.run
    llm = run.stats.get("llm") or {}
    out, charts = [], []
    by = llm.get("by_stage") or {}
    if by:
        rows = []
        for stage, u in by.items():
            u = u or {}
            rows.append(
                [
                    esc(stage),
                    num(u.get("requests")),
                    num(u.get("prompt_tokens")),
                    num(u.get("completion_tokens")),
                    money(u.get("cost")),
                ]
            )
        rows.append(
            [
                "<b>total</b>",
                num(llm.get("requests")),
                num(llm.get("prompt_tokens")),
                num(llm.get("completion_tokens")),
                money(llm.get("cost")),
            ]
        )
        out.append(
            table(["LLM stage", "requests", "prompt tokens", "completion tokens", "cost"], rows)
        )
        labels = list(by)
        charts.append(
            bars(
                labels,
                {
                    "prompt": [float((by[s] or {}).get("prompt_tokens") or 0) for s in labels],
                    "completion": [
                        float((by[s] or {}).get("completion_tokens") or 0) for s in labels
                    ],
                },
                "tokens per LLM stage",
                "tokens",
            )
        )
    elif llm:
        out.append(
            table(
                ["requests", "prompt tokens", "completion tokens", "cost"],
                [
                    [
                        num(llm.get("requests")),
                        num(llm.get("prompt_tokens")),
                        num(llm.get("completion_tokens")),
                        money(llm.get("cost")),
                    ]
                ],
            )
        )
    else:
        out.append("<p>No token figures in stats.json.</p>")
    extra = [f"{k}: <b>{num(llm.get(k))}</b>" for k in ("cached", "failed") if k in llm]
    per = run.stats.get("per_kept_record") or {}
    if per:
        extra.append(
            f"per kept record: <b>{num(per.get('prompt_tokens'), 1)}</b> prompt + "
            f"<b>{num(per.get('completion_tokens'), 1)}</b> completion tokens, "
            f"<b>{money(per.get('cost'))}</b>"
        )
    if extra:
        out.append("<p>" + " · ".join(extra) + "</p>")
    timed = [s for s, v in run.stages.items() if v["seconds"]]
    wall = run.stats.get("wall_seconds")
    if timed:
        charts.append(
            bars(
                timed,
                {"seconds": [run.stages[s]["seconds"] for s in timed]},
                "wall time per stage"
                + (f" (run total {wall:,.1f} s)" if isinstance(wall, int | float) else ""),
                "seconds",
                fmt=lambda x: f"{x:,.1f} s",
                integer=False,
            )
        )
    return grid("".join(out), *charts)


def _sec_code(a: Analysis) -> str:
    c = a.code
    if c is None:
        return "<p>Not a code-mode run.</p>"
    if not c["problems"] and not c["extra"]:
        return "<p>No verify stage output found.</p>"
    rows = [
        ["problems verified", num(c["problems"])],
        [
            "problems kept (a candidate passed)",
            f"{c['solved']:,} ({pct(c['solved'], c['problems'])})",
        ],
        ["candidates run", num(c["run"])],
        ["candidates passed", f"{c['passed']:,} ({pct(c['passed'], c['run'])})"],
        ["rejected for vacuous tests", num(c["vacuous"])],
    ]
    rows += [
        [esc(k), num(v)]
        for k, v in sorted(c["extra"].items())
        if k not in ("candidates_run", "candidates_passed") and not k.startswith("status_")
    ]
    out = [table(["", ""], rows, "narrow kv")]
    st = c["statuses"]
    if st:
        labels = [s for s, _ in st.most_common()]
        out.append(
            bars(
                labels,
                {"candidates": [float(st[s]) for s in labels]},
                "candidate status counts",
                "candidates",
            )
        )
    if c["cands"]:
        lo, hi = min(c["cands"]), max(c["cands"])
        out.append(
            hist(
                c["cands"],
                "candidates per problem",
                "candidates",
                bins=[x - 0.5 for x in range(lo, hi + 2)],
                color=PALETTE[1],
                integer_x=True,
            )
        )
    if c["first_pass"]:
        labels = [f"candidate {i + 1}" for i in sorted(c["first_pass"])]
        out.append(
            bars(
                labels,
                {"problems": [float(c["first_pass"][i]) for i in sorted(c["first_pass"])]},
                "which candidate passed first",
                "problems",
            )
        )
    return grid(*out)


def _sec_sample(a: Analysis) -> str:
    if not a.run.kept:
        return "<p>No kept records.</p>"
    pool = a.run.kept
    if a.run.mode == "code" and a.run.kept_full:
        pool = a.run.kept_full  # the same records with their tests, which data.json drops
    picks = random.Random(0).sample(pool, min(SAMPLE_RECORDS, len(pool)))
    head = f"<p>{len(picks)} of {len(pool):,} kept records, drawn with a fixed seed.</p>"
    return head + grid(*(record_html(r) for r in picks))


def compare_table(analyses: list[Analysis]) -> str:
    """One table with a column per run: the figures one compares first."""
    import numpy as np

    def row(label: str, fn: Callable[[Analysis], str]) -> list[str]:
        return [label] + [fn(a) for a in analyses]

    def rate(a: Analysis) -> str:
        return pct(len(a.run.kept), (a.run.stages.get("generate") or {}).get("total", 0))

    def books_word(a: Analysis) -> str:
        if a.run.books is None:
            return "–"
        n = len(a.run.books)
        return "balanced" if not n else f'<b class="off">{n} problem{"s" * (n != 1)}</b>'

    rows = [
        row("mode", lambda a: esc(a.run.mode)),
        row("kept records", lambda a: num(len(a.run.kept))),
        row("kept of generated", rate),
        row("distinct leading verbs", lambda a: num(len({v for v, _ in a.pairs if v}))),
        row("median nearest ROUGE-L", lambda a: f"{np.median(a.nn):.2f}" if a.nn else "–"),
        row("records with input", lambda a: pct(a.with_input, len(a.run.kept))),
        row(
            "median output words",
            lambda a: f"{np.median(a.lengths['output']):.0f}" if a.lengths["output"] else "–",
        ),
        row("cost", lambda a: money((a.run.stats.get("llm") or {}).get("cost"))),
        row(
            "cost per kept record",
            lambda a: money(cost_per_kept(a.run)),
        ),
        row("wall seconds", lambda a: num(a.run.stats.get("wall_seconds"), 1)),
        row("books", books_word),
    ]
    if any(a.run.mode == "code" for a in analyses):
        rows.append(
            row(
                "candidate pass rate",
                lambda a: pct(a.code["passed"], a.code["run"]) if a.code else "–",
            )
        )
    return table([""] + [esc(a.run.name) for a in analyses], rows, "compare")


def _sec_strategies(a: Analysis) -> str:
    """The funnel per generation strategy (``stats.json`` ``by_strategy``) and the judge's
    score distribution over the records it kept (``meta.judge.score``)."""
    by = a.run.stats.get("by_strategy") or {}
    parts = []
    if by:
        rows = [
            [
                esc(name),
                esc(stage),
                num(c["kept"]),
                num(c["rejected"]),
                esc(", ".join(f"{r} {n}" for r, n in c["reasons"].items())),
            ]
            for name, stages in by.items()
            for stage, c in stages.items()
        ]
        parts.append(table(["strategy", "stage", "kept", "rejected", "reasons"], rows))
    # data.json has no meta: the scores are on the exported records as the last stage file has them.
    scores = [
        int(score)
        for r in a.run.kept_full or a.run.kept
        if isinstance(score := ((r.get("meta") or {}).get("judge") or {}).get("score"), int | float)
    ]
    if scores:
        rows = [[num(s), num(scores.count(s))] for s in range(1, 11)]
        parts.append(
            f"<p>judge: mean {sum(scores) / len(scores):.2f} over {len(scores):,} records</p>"
        )
        parts.append(table(["judge score", "records"], rows))
    return "".join(parts) or "<p>No per-strategy counts and no judge scores in this run.</p>"


# (anchor, title, renderer), in page order.
SECTIONS: tuple[tuple[str, str, Callable[[Analysis], str]], ...] = (
    ("summary", "Summary", _sec_summary),
    ("funnel", "Stage funnel", _sec_funnel),
    ("strategies", "Strategies and judge scores", _sec_strategies),
    ("rejections", "Why records were rejected", _sec_rejections),
    ("diversity", "Instruction diversity", _sec_diversity),
    ("lengths", "Lengths", _sec_lengths),
    ("cost", "Tokens, cost and time", _sec_cost),
    ("code", "Code verification", _sec_code),
    ("sample", "Sample of kept records", _sec_sample),
)
