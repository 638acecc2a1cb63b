"""The run report: one self-contained ``report.html`` that says in a minute whether a run's data
is any good.

It reads a run directory (``stats.json``, ``config.yaml``, every stage's kept and rejected files
as the run's stage-file table names them, ``data.json``) and draws: the books check, the stage
funnel and the rejection reasons per stage (each linked to example records), instruction
diversity (leading verbs and their objects, nearest-neighbour ROUGE-L among kept records),
length distributions, tokens, cost and wall time per stage, the code-mode verification figures,
and a sample of kept records. Given several run directories it lays every section out side by
side.

The page needs no network: charts are matplotlib SVGs inlined as ``data:`` URIs, the CSS is
inline and there is no script. Every record text is HTML-escaped.

One job per module: :mod:`~pipeline.report.load` reads a run directory,
:mod:`~pipeline.report.analysis` computes its figures, :mod:`~pipeline.report.charts` draws
them, :mod:`~pipeline.report.markup`, :mod:`~pipeline.report.sections` and
:mod:`~pipeline.report.page` write the HTML. This module writes the file and is the command
(``python -m pipeline.report RUN [RUN ...]``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.report.load import RunData, load_run
from pipeline.report.markup import anchor
from pipeline.report.page import render_html
from pipeline.rundir import resolve_run_dir

__all__ = ["RunData", "load_run", "main", "render_html", "write_report"]


def write_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Write the report of one run (``<run>/report.html``) or of several side by side
    (``<first run>/report-vs-<other runs>.html``); return the path written."""
    if not run_dirs:
        raise ValueError("write_report: give at least one run directory")
    runs = [load_run(Path(d)) for d in run_dirs]
    if out is None:
        first = Path(run_dirs[0])
        if len(runs) == 1:
            out = first / "report.html"
        else:
            out = first / (
                "report-vs-" + "-".join(anchor(Path(d).name) for d in run_dirs[1:]) + ".html"
            )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write-then-rename: a report open in a browser is never half-written.
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render_html(runs), encoding="utf-8")
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.report RUN [RUN ...] [--out FILE]``."""
    ap = argparse.ArgumentParser(prog="pipeline report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories (or run names under --output-dir)")
    ap.add_argument("--out", type=Path, default=None, help="HTML file to write")
    ap.add_argument("--output-dir", default="outputs", help="parent directory of run directories")
    args = ap.parse_args(argv)
    path = write_report([resolve_run_dir(r, args.output_dir) for r in args.runs], args.out)
    print(path)
    return 0
