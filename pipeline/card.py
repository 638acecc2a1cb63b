"""The dataset card: ``README.md`` beside ``data.json``, in the form Hugging Face ``datasets``
repositories use (YAML front matter: licence, task categories, size category, the data files of
each split; then Markdown sections). It says how the data was made: the strategies and their
shares among the exported records, the records kept and rejected at each stage with the reasons,
the model(s), the judge's score histogram, the decontamination counts, the classification label
balance, and the licence note of the generating model.

Written from what the run already holds (its ``stats.json`` dict and the exported records); it
decides nothing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import yaml

from pipeline import models


def _size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < bound:
            return name
    return "100K<n<1M" if n < 1_000_000 else "n>1M"


def licence_note(model_name: str | None) -> tuple[str, str]:
    """(``license`` front-matter value, a sentence) for the generating model."""
    for m in models.MODELS.values():
        if model_name and model_name in (m.served_name, m.name, *m.aliases):
            text = models.licence_text(m)
            spdx = "apache-2.0" if "Apache License, Version 2.0" in text else "other"
            first = " ".join(text.split("\n\n")[1].split()) if "\n\n" in text else m.title
            return spdx, f"Generated with {m.title}. {first} (notice: `{m.licence}`)."
    return "other", (
        f"Generated with `{model_name}`: the terms of its provider govern the use of its outputs; "
        "check them before publishing or training on this data."
    )


def strategy_funnel(run_dir: Path, mode: str, stages: list[str]) -> dict[str, dict[str, dict]]:
    """``{strategy: {stage: {"kept": n, "rejected": n, "reasons": {reason: n}}}}`` from the
    stage files of a run (the records' ``meta.strategy``; alpaca when unset)."""
    from pipeline.records import enumerate_jsonl
    from pipeline.rundir import kept_path, layout_for, rejected_path

    out: dict[str, dict[str, dict]] = {}
    for stage in (s for s in layout_for(mode) if s in stages and s not in ("seeds", "export")):
        for kind, path in (
            ("kept", kept_path(run_dir, mode, stage)),
            ("rejected", rejected_path(run_dir, mode, stage)),
        ):
            if not path.exists():
                continue
            for _, rec in enumerate_jsonl(path):
                name = (rec.get("meta") or {}).get("strategy", "alpaca")
                cell = out.setdefault(name, {}).setdefault(
                    stage, {"kept": 0, "rejected": 0, "reasons": {}}
                )
                cell[kind] += 1
                if kind == "rejected":
                    reason = rec["reject"]["reason"]
                    cell["reasons"][reason] = cell["reasons"].get(reason, 0) + 1
    return out


def render_card(run_name: str, stats: dict, records: list[dict], mode: str) -> str:
    n = len(records)
    spdx, note = licence_note(stats.get("model"))
    front = {
        "license": spdx,
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["synthetic", "self-instruct"] + (["code"] if mode == "code" else []),
        "size_categories": [_size_category(n)],
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": "data.json"}]}
        ],
    }
    out = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", ""]
    out += [f"# Dataset card for {run_name}", ""]
    out += [
        f"{n} synthetic {'code ' if mode == 'code' else ''}instruction records "
        "(Alpaca format: instruction, input, output) made by this project's pipeline.",
        "",
        "## Strategies",
        "",
        "| strategy | records | share |",
        "|---|---:|---:|",
    ]
    by = Counter((r.get("meta") or {}).get("strategy", "alpaca") for r in records)
    for name, k in by.most_common():
        out.append(f"| {name} | {k} | {k / n:.0%} |" if n else f"| {name} | {k} | - |")
    out += [
        "",
        "## Funnel",
        "",
        "| stage | in | kept | rejected | reasons |",
        "|---|---:|---:|---:|---|",
    ]
    for stage, s in stats.get("stages", {}).items():
        reasons = ", ".join(f"{r} {c}" for r, c in s.get("dropped", {}).items()) or "-"
        out.append(
            f"| {stage} | {s.get('entered', s['total'])} | {s['kept']} | {s['rejected']} | {reasons} |"
        )
    by_strategy = stats.get("by_strategy") or {}
    if len(by_strategy) > 1:
        out += [
            "",
            "### Funnel per strategy",
            "",
            "| strategy | stage | kept | rejected | reasons |",
        ]
        out += ["|---|---|---:|---:|---|"]
        for name, stages in by_strategy.items():
            for stage, c in stages.items():
                reasons = ", ".join(f"{r} {k}" for r, k in c["reasons"].items()) or "-"
                out.append(f"| {name} | {stage} | {c['kept']} | {c['rejected']} | {reasons} |")
    llm = stats.get("llm", {})
    out += [
        "",
        "## Models",
        "",
        f"- generation: `{stats.get('model')}`",
        *(
            [f"- judge: `{m}`"]
            if (
                m := next(
                    (
                        r["meta"]["judge"]["model"]
                        for r in records
                        if (r.get("meta") or {}).get("judge")
                    ),
                    None,
                )
            )
            else []
        ),
        f"- tokens: {llm.get('prompt_tokens', 0)} prompt + {llm.get('completion_tokens', 0)} completion, "
        f"{llm.get('requests', 0)} requests",
    ]
    scores = [
        int(r["meta"]["judge"]["score"])
        for r in records
        if ((r.get("meta") or {}).get("judge") or {}).get("score") is not None
    ]
    if scores:
        hist = Counter(scores)
        out += ["", "## Judge scores", "", "| score | records |", "|---:|---:|"]
        out += [f"| {s} | {hist.get(s, 0)} |" for s in range(1, 11)]
        out += ["", f"mean {sum(scores) / len(scores):.2f} over {len(scores)} rated records"]
    contaminated = sum(
        s.get("dropped", {}).get(k, 0)
        for s in stats.get("stages", {}).values()
        for k in ("contaminated", "humaneval_contaminated", "snippet_contaminated")
    )
    out += [
        "",
        "## Decontamination",
        "",
        f"{contaminated} records or snippets dropped for sharing a 13-gram with HumanEval "
        "(filter `decontaminate`; OSS-Instruct snippets are checked before any request).",
    ]
    labels = Counter(
        str(r["meta"]["label"]).lower() for r in records if (r.get("meta") or {}).get("label")
    )
    if labels:
        out += ["", "## Classification label balance", "", "| label | records |", "|---|---:|"]
        out += [f"| {lab} | {k} |" for lab, k in labels.most_common()]
    out += ["", "## Licence", "", note, ""]
    return "\n".join(out)


def write_card(run_dir: Path, stats: dict, records: list[dict], mode: str) -> Path:
    path = Path(run_dir) / "README.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(render_card(Path(run_dir).name, stats, records, mode), encoding="utf-8")
    tmp.replace(path)
    return path
