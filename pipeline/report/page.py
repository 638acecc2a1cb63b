"""The report page: one self-contained HTML document holding every section for one run, or for
several side by side (a column per run, plus a table of the figures one compares first).

The page needs no network: charts are inline ``data:`` SVGs, the CSS is inline and there is no
script.
"""

from __future__ import annotations

from pipeline.report.analysis import analyse
from pipeline.report.load import RunData
from pipeline.report.markup import esc
from pipeline.report.sections import SECTIONS, compare_table

CSS = """
body{
  font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  margin:0;
  color:#1f2328;
  background:#f6f7f9}
header{background:#24364f;color:#fff;padding:14px 28px}
header h1{margin:0;font-size:20px}
header .sub{opacity:.8;font-size:13px}
nav{font-size:13px;margin-top:6px}
nav a{color:#cfe0ff;margin-right:12px}
main{padding:10px 28px 40px;max-width:1500px}
section{
  background:#fff;
  border:1px solid #e1e4e8;
  border-radius:6px;
  margin:16px 0;
  padding:8px 18px 16px}
h2{font-size:17px;margin:8px 0 10px}
h3{font-size:14px;margin:14px 0 6px}
.cols{display:grid;gap:20px;grid-template-columns:repeat(var(--n),minmax(0,1fr))}
.col>h3.run{margin-top:0;color:#3b6ea5}
.grid{
  display:grid;
  gap:4px 28px;
  grid-template-columns:repeat(auto-fit,minmax(520px,1fr));
  align-items:start}
img.chart{max-width:100%;height:auto;display:block;margin:8px 0}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{padding:3px 10px;border-bottom:1px solid #eaecef;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}
td:last-child{text-align:left}
table.narrow td:last-child{text-align:right}
table.kv td:last-child{text-align:right}
table.compare td{text-align:right}
table.compare td:first-child{text-align:left}
thead th{background:#f3f5f8}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{
  border:1px solid #e1e4e8;
  border-radius:6px;
  padding:8px 14px;
  min-width:110px;
  background:#fafbfc}
.card .v{font-size:20px;font-weight:600}
.card .k{font-size:12px;color:#57606a}
.meta{font-size:13px;color:#57606a}
.findings li{margin:3px 0}
.warn{background:#fff4e5;border:1px solid #f0b36a;padding:6px 10px;border-radius:4px;margin:8px 0}
.warn ul{margin:4px 0 2px}
.warn.books{background:#fdecea;border-color:#c44e52}
.books{font-size:13px;margin:6px 0}
.off{color:#c44e52;white-space:nowrap}
details{border:1px solid #eaecef;border-radius:4px;margin:6px 0;padding:4px 10px}
details:target{border-color:#3b6ea5;box-shadow:0 0 0 2px #cfe0ff}
summary{cursor:pointer}
.rec{border-left:3px solid #3b6ea5;background:#fafbfc;margin:8px 0;padding:4px 10px}
.rid{font-size:11px;color:#8c959f}
.fld b{font-size:12px;color:#57606a}
pre{
  white-space:pre-wrap;
  word-break:break-word;
  margin:2px 0 6px;
  font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}
code{
  font:12px ui-monospace,Menlo,Consolas,monospace;
  background:#f3f5f8;
  padding:0 3px;
  border-radius:3px}
"""


def render_html(runs: list[RunData]) -> str:
    """The whole page for one run, or several side by side."""
    import matplotlib

    # Labels come from the data: a "$" in a reject reason must print, not start mathtext.
    with matplotlib.rc_context({"text.parse_math": False}):
        return _render_html(runs)


def _render_html(runs: list[RunData]) -> str:
    analyses = [analyse(r, i) for i, r in enumerate(runs)]
    names = " vs ".join(r.name for r in runs)
    shown = [
        (key, title, fn)
        for key, title, fn in SECTIONS
        if key != "code" or any(a.run.mode == "code" for a in analyses)
    ]
    nav = "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title, _ in shown)
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Run report: {esc(names)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>Run report: {esc(names)}</h1>",
        f'<div class="sub">{" · ".join(esc(r.path) for r in runs)}</div>',
        f"<nav>{nav}</nav></header><main>",
    ]
    if len(runs) > 1:
        parts.append(
            f'<section id="compare"><h2>Side by side</h2>{compare_table(analyses)}</section>'
        )
    for key, title, fn in shown:
        if len(analyses) == 1:
            body = fn(analyses[0])
        else:
            cols = "".join(
                f'<div class="col"><h3 class="run">{esc(a.run.name)}</h3>{fn(a)}</div>'
                for a in analyses
            )
            body = f'<div class="cols" style="--n:{len(analyses)}">{cols}</div>'
        parts.append(f'<section id="{key}"><h2>{esc(title)}</h2>{body}</section>')
    parts.append("</main></body></html>\n")
    return "".join(parts)
