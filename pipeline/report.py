"""The run report: one self-contained ``report.html`` that says in a minute whether a run's data
is any good.

It reads a run directory (``stats.json``, ``config.yaml``, the numbered stage files and their
``*.rejected.jsonl`` twins, ``data.json``) and draws: the stage funnel and the rejection reasons
per stage (each linked to example records), instruction diversity (leading verbs and their
objects, nearest-neighbour ROUGE-L among kept records), length distributions, tokens, cost and
wall time per stage, the code-mode verification figures, and a sample of kept records. Given
several run directories it lays every section out side by side.

The page needs no network: charts are matplotlib SVGs inlined as ``data:`` URIs, the CSS is
inline and there is no script. Every record text is HTML-escaped. Missing files and missing
``stats.json`` keys are tolerated (a report of a half-finished run is still useful); a malformed
record line is a :class:`~pipeline.records.RecordError` naming the file and line, except a torn
last line (a run killed mid-write), which is skipped and noted.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.records import RecordError, enumerate_jsonl

# (stage, kept-records file, rejected-records file), in pipeline order.
STAGE_FILES: list[tuple[str, str, str | None]] = [
    ("seeds", "00_seeds.jsonl", None),
    ("generate", "01_generated.jsonl", "01_generated.rejected.jsonl"),
    ("dedup", "02_dedup.jsonl", "02_dedup.rejected.jsonl"),
    ("filter", "03_filter.jsonl", "03_filter.rejected.jsonl"),
    ("verify", "04_verify.jsonl", "04_verify.rejected.jsonl"),
    ("export", "data.json", None),
]
STAGE_ORDER = [s for s, _, _ in STAGE_FILES]

EXAMPLES_PER_REASON = 3
SAMPLE_RECORDS = 12
ROUGE_CAP = 2000  # nearest-neighbour ROUGE-L over at most this many kept records (n^2 pairs)
TOP_VERBS = 16
OBJECTS_PER_VERB = 4
TRUNCATE = 700  # characters of a record field shown in the page

PALETTE = ["#3b6ea5", "#e07b39", "#5a9e57", "#c44e52", "#8172b2", "#937860", "#da8bc3",
           "#8c8c8c", "#ccb974", "#64b5cd"]  # fmt: skip
STATUS_COLORS = {"passed": "#5a9e57", "failed": "#c44e52", "error": "#e07b39",
                 "timeout": "#8172b2", "memory": "#937860", "rejected": "#8c8c8c"}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Verb / object extraction


# Openers that carry no task: "Please", "Can you", "I want you to" ... are cut before the verb.
_POLITE = re.compile(
    r"^(?:(?:please|kindly|now|so|ok(?:ay)?|hey|hi|hello)\b[\s,:]*"
    r"|(?:can|could|would|will)\s+you\s+(?:please\s+)?"
    r"|(?:i|we)\s+(?:want|need|would\s+like|'d\s+like|d\s+like)\s+(?:you\s+)?to\s+"
    r"|(?:i|we)\s+(?:want|need)\s+(?:a|an|the|some)\b\s*"
    r"|(?:help|let)\s+me\s+(?:to\s+)?"
    r"|(?:the\s+|your\s+)?(?:task|job|goal)\s+(?:here\s+)?is\s+to\s+"
    r"|you\s+(?:need|have|are\s+(?:asked|required|going|supposed|expected))\s+to\s+"
    r"|you\s+(?:should|must|will|can|may)\s+(?:now\s+)?"
    r"|you\s+(?:are|will\s+be)\s+given\b[^,.;:]*[,.;:]\s*"
    r"|(?:task|instruction|question|q)\s*:\s*)",
    re.IGNORECASE,
)
# A leading "Given a list of numbers, find ..." puts the task in a later clause.
_SETUP_WORDS = {"given", "using", "for", "based", "with", "from", "if", "after", "in", "as",
                "assuming", "considering", "when", "without", "according"}  # fmt: skip
_NOT_A_VERB = {"the", "a", "an", "this", "that", "these", "those", "i", "we", "you", "my",
               "our", "it", "there", "here", "some", "one", "all", "each", "every", "here's",
               "in", "on", "of", "to", "and", "or", "but", "if", "as", "at", "by"}  # fmt: skip
# Two- and three-word verbs whose particle is not the object ("come up with a name").
_PHRASAL = [("come", "up", "with"), ("think", "of"), ("think", "about"), ("look", "for"),
            ("look", "up"), ("figure", "out"), ("point", "out"), ("find", "out"), ("fill", "in"),
            ("sum", "up"), ("write", "down"), ("make", "up"), ("set", "up"), ("break", "down"),
            ("list", "out"), ("carry", "out"), ("work", "out")]  # fmt: skip
# Words that end the noun phrase after the verb; its last word before one of these is the head.
_PHRASE_END = {"that", "which", "who", "whom", "whose", "to", "of", "for", "about", "on", "in",
               "into", "with", "from", "by", "as", "at", "and", "or", "but", "if", "so",
               "than", "using", "based", "given", "where", "when", "why", "how", "what",
               "whether", "without", "between", "over", "under", "per", "like", "is", "are",
               "be", "it", "its", "their", "me", "us", "them", "him", "her", "below",
               "above", "here", "now", "again", "briefly", "clearly", "quickly", "please",
               "then", "while", "because", "according", "within", "across"}  # fmt: skip
# Skipped between the verb and its noun phrase: determiners, auxiliaries of a question
# ("what would be the output"), indirect objects ("tell me a joke").
_SKIP_BEFORE_NOUN = {"a", "an", "the", "this", "that", "these", "those", "some", "any", "my",
                     "your", "our", "following", "given", "is", "are", "was", "were", "do",
                     "does", "did", "can", "could", "should", "would", "will", "might", "may",
                     "must", "be", "been", "has", "have", "had", "you", "i", "me", "us", "him",
                     "her", "them", "please", "it", "there"}  # fmt: skip
_WORD = re.compile(r"[A-Za-z][A-Za-z'+#-]*|\d+|[^\sA-Za-z\d]")


def _strip_polite(text: str) -> str:
    prev = None
    while prev != text:
        prev = text
        text = _POLITE.sub("", text, count=1).lstrip(" ,:;-")
    return text


def _words_of(text: str) -> list[str]:
    # "what's" -> "what": a contraction must not hide a question word or verb.
    return [re.sub(r"'(s|re|ll|d|ve)$", "", w.lower()).strip("'") for w in _WORD.findall(text)]


def verb_object(instruction: str) -> tuple[str | None, str | None]:
    """A heuristic (no parser) root verb and direct-object head of an instruction.

    Strips polite openers ("Please", "Can you", "I want you to", "You are given X,"), skips a
    leading setup clause ("Given a list of numbers, find ..."), takes the first word as the verb
    (with its particle for phrasal verbs such as "come up with"; a question word such as "what"
    stands for the verb of a question), and the last word of the noun phrase that follows as
    the object. Returns lower-case words; None where nothing verb-like leads.
    """
    text = _strip_polite(" ".join(instruction.split()))
    words = _words_of(text)
    if words and words[0] in _SETUP_WORDS and "," in words[:40]:
        # The task is the first later clause that starts like one ("Given the two lists, A
        # and B, create ..." skips "A and B").
        for clause in text.split(",")[1:4]:
            cand = _words_of(_strip_polite(clause.strip()))
            if cand and cand[0][:1].isalpha() and cand[0] not in _NOT_A_VERB | _SETUP_WORDS:
                words = cand + ["."]
                break
        else:
            return None, None
    if not words or not words[0][:1].isalpha() or words[0] in _NOT_A_VERB:
        return None, None
    verb, rest = words[0], words[1:]
    for phrasal in _PHRASAL:
        if tuple(words[: len(phrasal)]) == phrasal:
            verb, rest = " ".join(phrasal), words[len(phrasal) :]
            break
    phrase: list[str] = []
    for w in rest:
        if not phrase and w in _SKIP_BEFORE_NOUN:
            continue
        if w in _PHRASE_END or not w[:1].isalnum():
            break
        phrase.append(w)
        if len(phrase) == 4:
            break
    # One-letter words are names in the task ("a list C"), not its object.
    nouns = [w for w in phrase if w[:1].isalpha() and len(w) > 1]
    return verb, (nouns[-1] if nouns else None)


# --------------------------------------------------------------------------------------------
# Nearest-neighbour ROUGE-L


def nearest_rouge_l(
    texts: list[str], cap: int = ROUGE_CAP, seed: int = 0, tokenizer: str = "default"
) -> list[float]:
    """For each text (a seeded sample of ``cap`` when there are more), the ROUGE-L F-measure
    against its most similar other text.

    Tokens are the dedup stage's (``stages.rouge``: "default" is rouge_score's tokenizer without
    stemmer, "unicode" keeps every script); rouge_score's own tokenizer stands in for "default"
    where ``stages.rouge`` is missing.
    The F-measure with beta 1 is 2·LCS/(|a|+|b|), which is exactly rapidfuzz's normalized Indel
    similarity over the token sequences, so all pairs run in rapidfuzz's C++ ``cdist`` instead
    of a Python LCS per pair.
    """
    import numpy as np
    from rapidfuzz import process
    from rapidfuzz.distance import Indel

    try:
        from stages.rouge import get_tokenizer

        tokenize = get_tokenizer(tokenizer)
    except ImportError:
        from rouge_score.tokenizers import DefaultTokenizer

        tokenize = DefaultTokenizer(use_stemmer=False).tokenize
    if len(texts) > cap:
        texts = random.Random(seed).sample(texts, cap)
    vocab: dict[str, int] = {}
    seqs = []
    for t in texts:
        toks = tokenize(t)
        if toks:
            seqs.append([vocab.setdefault(tok, len(vocab)) for tok in toks])
    if len(seqs) < 2:
        return []
    scores = process.cdist(seqs, seqs, scorer=Indel.normalized_similarity, dtype=np.float32)
    np.fill_diagonal(scores, -1.0)
    return [float(x) for x in scores.max(axis=1)]


# --------------------------------------------------------------------------------------------
# Reading a run


@dataclass
class RunData:
    """Everything the report shows about one run, read from its directory."""

    path: Path
    name: str
    stats: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    mode: str = "general"
    # stage -> {"total", "kept", "rejected", "dropped": Counter, "seconds", "extra": dict}
    stages: dict[str, dict] = field(default_factory=dict)
    # stage -> reason -> a few example rejected records
    examples: dict[str, dict[str, list[dict]]] = field(default_factory=dict)
    kept: list[dict] = field(default_factory=list)
    kept_source: str = ""
    last_stage: list[dict] = field(default_factory=list)  # the last stage file before export
    verified: list[dict] = field(default_factory=list)  # verify stage: kept + rejected
    notes: list[str] = field(default_factory=list)


def _read_lines(path: Path, notes: list[str]) -> Iterable[tuple[int, dict]]:
    """(line number, record) for a JSONL file; a torn last line is skipped with a note."""

    def torn(lineno: int) -> None:
        notes.append(f"{path.name}:{lineno}: torn last line skipped (a write was cut off)")

    return enumerate_jsonl(path, on_torn_tail=torn)


def _read_file(path: Path, notes: list[str]) -> Iterable[tuple[int, dict]]:
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
        yield from _read_lines(path, notes)


_TEXT_FIELDS = ("instruction", "input", "output")


def _checked(path: Path, lineno: int, rec: dict) -> dict:
    for f in _TEXT_FIELDS:
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


def load_run(run_dir: Path) -> RunData:
    """Read one run directory; counts come from ``stats.json`` where present, else from files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    run = RunData(path=run_dir, name=run_dir.name)
    if (run_dir / "stats.json").exists():
        run.stats = _load_json(run_dir / "stats.json")
    if (run_dir / "config.yaml").exists():
        import yaml

        try:
            run.config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{run_dir / 'config.yaml'}: not valid YAML ({e})") from None
        if not isinstance(run.config, dict):
            run.config = {}
    run.name = str(run.stats.get("run") or run_dir.name)
    run.mode = str(
        run.stats.get("mode")
        or (run.config.get("generation") or {}).get("mode")
        or ("code" if (run_dir / "04_verify.jsonl").exists() else "general")
    )

    # Rejected files: reasons counted and a few examples kept per reason; verify's are kept whole.
    file_counts: dict[str, Counter] = {}
    rejected_files = {rej for _, _, rej in STAGE_FILES if rej}
    extra_rejected = sorted(p.name for p in run_dir.glob("*.rejected.jsonl"))
    for name in [rej for _, _, rej in STAGE_FILES if rej] + [
        n for n in extra_rejected if n not in rejected_files
    ]:
        path = run_dir / name
        if not path.exists():
            continue
        default_stage = next((s for s, _, rej in STAGE_FILES if rej == name), name.split(".")[0])
        for lineno, rec in _read_lines(path, run.notes):
            _checked(path, lineno, rec)
            reject = rec.get("reject") if isinstance(rec.get("reject"), dict) else {}
            stage = str(reject.get("stage") or default_stage)
            reason = str(reject.get("reason") or "unspecified")
            file_counts.setdefault(stage, Counter())[reason] += 1
            bucket = run.examples.setdefault(stage, {}).setdefault(reason, [])
            if len(bucket) < EXAMPLES_PER_REASON:
                bucket.append(rec)
            if stage == "verify" or name.startswith("04_"):
                run.verified.append(rec)

    kept_counts: dict[str, int] = {}
    for stage, kept_name, _ in STAGE_FILES:
        path = run_dir / kept_name
        if not path.exists():
            continue
        records = [_checked(path, n, r) for n, r in _read_file(path, run.notes)]
        kept_counts[stage] = len(records)
        if stage == "verify":
            run.verified = records + run.verified
        if stage != "seeds":
            run.kept, run.kept_source = records, kept_name
        if stage not in ("seeds", "export"):
            run.last_stage = records
    if (run_dir / "data.json").exists() and (run_dir / "data.validation.json").exists():
        path = run_dir / "data.validation.json"
        run.kept = run.kept + [_checked(path, n, r) for n, r in _read_file(path, run.notes)]
        run.kept_source = "data.json + data.validation.json"

    stats_stages = run.stats.get("stages") if isinstance(run.stats.get("stages"), dict) else {}
    names = [s for s in STAGE_ORDER if s in stats_stages or s in kept_counts or s in file_counts]
    names += [s for s in list(stats_stages) + list(file_counts) if s not in names]
    for stage in dict.fromkeys(names):
        s = stats_stages.get(stage) if isinstance(stats_stages.get(stage), dict) else None
        if s is not None:
            dropped = Counter({str(k): int(v) for k, v in (s.get("dropped") or {}).items()})
            kept = int(s.get("kept", kept_counts.get(stage, 0)))
            rejected = int(s.get("rejected", sum(dropped.values())))
            total = int(s.get("total", kept + rejected))
            seconds = float(s.get("seconds", 0.0) or 0.0)
            extra = dict(s.get("extra") or {})
        else:
            dropped = file_counts.get(stage, Counter())
            kept = kept_counts.get(stage, 0)
            rejected = sum(dropped.values())
            total, seconds, extra = kept + rejected, 0.0, {}
        run.stages[stage] = {
            "total": total,
            "kept": kept,
            "rejected": rejected,
            "dropped": dropped,
            "seconds": seconds,
            "extra": extra,
        }
    return run


# --------------------------------------------------------------------------------------------
# Figures


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
    return f'<img class="chart" alt="{_e(alt)}" src="data:image/svg+xml;base64,{data}">'


def _funnel_chart(run: RunData) -> str:
    # Seeds are the example pool, not candidates: hundreds of them would dwarf the funnel.
    stages = [s for s, v in run.stages.items() if s != "seeds" and (v["total"] or v["kept"])]
    if not stages:
        return ""
    fig = _figure(6.4, 0.45 * len(stages) + 0.9)
    ax = fig.add_subplot()
    y = list(range(len(stages)))[::-1]
    totals = [run.stages[s]["total"] for s in stages]
    kept = [run.stages[s]["kept"] for s in stages]
    ax.barh(y, totals, color="#d9dee6", label="in")
    ax.barh(y, kept, color=PALETTE[0], label="kept")
    for yi, t, k in zip(y, totals, kept, strict=True):
        ax.text(max(t, k), yi, f"  {k:,} / {t:,}", va="center", fontsize=9)
    ax.set_yticks(y, stages)
    ax.set_xlim(0, max(totals + kept) * 1.25 or 1)
    ax.set_xlabel("records")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    _style(ax, "x")
    return _img(fig, "stage funnel: records in and kept per stage")


def _reasons_chart(run: RunData) -> str:
    rows = [
        (f"{stage}: {reason}", n, i)
        for i, (stage, s) in enumerate(run.stages.items())
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


def _sunburst(pairs: list[tuple[str | None, str | None]]) -> str:
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
    import math

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


def _hist(
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


def _length_chart(lengths: dict[str, list[int]]) -> str:
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


def _bars(
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


# --------------------------------------------------------------------------------------------
# HTML pieces


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _id(*parts: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(str(p) for p in parts))


def _num(x: Any, digits: int = 0) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and digits:
        return f"{x:,.{digits}f}"
    return f"{x:,.0f}" if isinstance(x, int | float) else _e(x)


def _money(x: Any) -> str:
    if not isinstance(x, int | float):
        return "–"
    if x == 0:
        return "$0"
    return f"${x:,.4f}" if x < 1 else f"${x:,.2f}"


def _pct(n: float, d: float) -> str:
    return f"{100 * n / d:.1f}%" if d else "–"


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Rows are HTML already (escape before); the first column is left-aligned, the rest right."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _clip(text: Any, limit: int = TRUNCATE) -> str:
    s = "" if text is None else str(text)
    if len(s) > limit:
        s = s[:limit] + f" … [{len(s) - limit:,} more characters]"
    return _e(s)


def _record_html(rec: dict, *, show_reject: bool = False) -> str:
    parts = [f'<div class="rec"><div class="rid">{_e(rec.get("id", ""))}</div>']
    for f in _TEXT_FIELDS:
        val = rec.get(f)
        if f == "input" and not val:
            continue
        parts.append(f'<div class="fld"><b>{f}</b><pre>{_clip(val)}</pre></div>')
    if rec.get("tests"):
        parts.append(f'<div class="fld"><b>tests</b><pre>{_clip(rec.get("tests"))}</pre></div>')
    if show_reject and isinstance(rec.get("reject"), dict):
        detail = {k: v for k, v in rec["reject"].items() if k not in ("stage", "reason")}
        if detail:
            text = json.dumps(detail, ensure_ascii=False, default=str)
            parts.append(f'<div class="fld"><b>detail</b><pre>{_clip(text, 400)}</pre></div>')
    parts.append("</div>")
    return "".join(parts)


def _grid(*items: str) -> str:
    """Pieces (charts, tables) side by side where the page is wide enough, stacked where not."""
    cells = "".join(f"<div>{x}</div>" for x in items if x)
    return f'<div class="grid">{cells}</div>' if cells else ""


def _words(text: Any) -> int:
    return len(str(text or "").split())


def _quantiles(vals: list[int]) -> list[str]:
    import numpy as np

    if not vals:
        return ["–"] * 5
    q = np.percentile(vals, [0, 50, 90, 100])
    return [_num(len(vals))] + [f"{x:,.0f}" for x in q]


# --------------------------------------------------------------------------------------------
# Analysis of one run (computed once, rendered by the sections)


@dataclass
class Analysis:
    run: RunData
    idx: int
    pairs: list[tuple[str | None, str | None]]
    nn: list[float]
    nn_sampled: int
    lengths: dict[str, list[int]]
    with_input: int
    threshold: float | None


def analyse(run: RunData, idx: int = 0) -> Analysis:
    instructions = [str(r.get("instruction") or "") for r in run.kept]
    pairs = [verb_object(t) for t in instructions]
    dedup_cfg = run.config.get("dedup") or {}
    tok = (
        dedup_cfg.get("tokenizer")
        if dedup_cfg.get("tokenizer") in ("default", "unicode")
        else "default"
    )
    nn = nearest_rouge_l(instructions, tokenizer=tok)
    field_ = dedup_cfg.get("field", "instruction")
    threshold = dedup_cfg.get("threshold")
    if field_ != "instruction":
        threshold = None
    lengths = {
        "instruction": [_words(r.get("instruction")) for r in run.kept],
        "input": [_words(r.get("input")) for r in run.kept if r.get("input")],
        "output": [_words(r.get("output")) for r in run.kept],
    }
    return Analysis(
        run=run,
        idx=idx,
        pairs=pairs,
        nn=nn,
        nn_sampled=min(len(instructions), ROUGE_CAP),
        lengths=lengths,
        with_input=len(lengths["input"]),
        threshold=float(threshold) if isinstance(threshold, int | float) else None,
    )


def _code_figures(run: RunData) -> dict:
    statuses: Counter = Counter()
    cands_per_problem: list[int] = []
    first_pass: Counter = Counter()
    solved = 0
    for rec in run.verified:
        v = rec.get("verification") if isinstance(rec.get("verification"), dict) else {}
        rej = rec.get("reject") if isinstance(rec.get("reject"), dict) else {}
        # A kept record carries its statuses in ``verification``; a rejected one may carry
        # them in ``reject`` instead.
        raw = v.get("statuses") or rej.get("statuses") or []
        sts = [str(s.get("status", "?")) for s in raw if isinstance(s, dict)]
        statuses.update(sts)
        cands = rec.get("candidates")
        cands_per_problem.append(len(cands) if isinstance(cands, list) else len(sts))
        pi = v.get("passed_index")
        if isinstance(pi, int) and pi >= 0:
            solved += 1
            first_pass[pi] += 1
    extra = (run.stages.get("verify") or {}).get("extra") or {}
    # The stage's own counters (status_<name>) win over what the files still show.
    counted = {k[len("status_") :]: int(v) for k, v in extra.items() if k.startswith("status_")}
    if counted:
        statuses = Counter(counted)
    run_n = int(extra.get("candidates_run", sum(statuses.values())))
    passed_n = int(extra.get("candidates_passed", statuses.get("passed", 0)))
    vacuous = sum(n for s in run.stages.values() for r, n in s["dropped"].items() if "vacuous" in r)
    return {
        "statuses": statuses,
        "cands": cands_per_problem,
        "first_pass": first_pass,
        "solved": solved,
        "problems": len(run.verified) or int((run.stages.get("verify") or {}).get("total", 0)),
        "run": run_n,
        "passed": passed_n,
        "vacuous": vacuous,
        "extra": extra,
    }


def cost_per_kept(run: RunData) -> float | None:
    """Dollars per kept record: stats.json's figure, else the run's cost over its kept records."""
    per = run.stats.get("per_kept_record") or {}
    if isinstance(per.get("cost"), int | float):
        return float(per["cost"])
    cost = (run.stats.get("llm") or {}).get("cost")
    return float(cost) / len(run.kept) if isinstance(cost, int | float) and run.kept else None


def findings(a: Analysis) -> list[str]:
    """Plain sentences about what stands out; each one computed from the run, none canned."""
    run, out = a.run, []
    stopped = run.stats.get("stopped_reason")
    if stopped:
        out.append(f"<b>The run stopped early</b> ({_e(stopped)}): later stages saw fewer records.")
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
            f"Stage <b>{_e(s)}</b> rejected the largest share: {_pct(v['rejected'], v['total'])} "
            f"of {v['total']:,} (most often <code>{_e(reason)}</code>, {n:,})."
        )
    verbs = Counter(v for v, _ in a.pairs if v)
    if verbs:
        top_v, n_v = verbs.most_common(1)[0]
        pair_counts = Counter((v, o) for v, o in a.pairs if v and o)
        msg = (
            f"{len(verbs):,} distinct leading verbs; the most common, <b>{_e(top_v)}</b>, "
            f"starts {_pct(n_v, len(a.pairs))} of instructions"
        )
        if pair_counts:
            (pv, po), n_p = pair_counts.most_common(1)[0]
            share = _pct(n_p, len(a.pairs))
            msg += f"; the top verb–object pair <b>{_e(pv)} {_e(po)}</b> {share}"
        out.append(msg + ".")
    if a.nn:
        import numpy as np

        med = float(np.median(a.nn))
        hi = sum(x > 0.5 for x in a.nn)
        out.append(
            f"Median nearest-neighbour ROUGE-L among kept instructions is {med:.2f}; "
            f"{_pct(hi, len(a.nn))} have a neighbour above 0.5."
        )
    if run.kept:
        out.append(f"{_pct(a.with_input, len(run.kept))} of kept records have an input.")
    if (per := cost_per_kept(run)) is not None:
        out.append(f"Cost per kept record: {_money(per)}.")
    if run.mode == "code" and run.verified:
        c = _code_figures(run)
        out.append(
            f"{c['solved']:,} of {c['problems']:,} problems kept with a passing candidate; "
            f"{_pct(c['passed'], c['run'])} of {c['run']:,} candidates passed."
        )
    out.extend(_e(n) for n in run.notes)
    return out


# --------------------------------------------------------------------------------------------
# Sections: each renders one run; the page puts runs side by side


def _sec_summary(a: Analysis) -> str:
    run = a.run
    llm = run.stats.get("llm") or {}
    cards = [
        ("kept records", _num(len(run.kept))),
        ("mode", _e(run.mode)),
        (
            "wall time",
            f"{run.stats['wall_seconds']:,.1f} s"
            if isinstance(run.stats.get("wall_seconds"), int | float)
            else "–",
        ),
        ("LLM requests", _num(llm.get("requests"))),
        ("cost", _money(llm.get("cost"))),
        ("distinct verbs", _num(len({v for v, _ in a.pairs if v}))),
    ]
    if run.mode == "code" and run.verified:
        c = _code_figures(run)
        cards.append(("candidate pass rate", _pct(c["passed"], c["run"])))
    body = "".join(
        f'<div class="card"><div class="v">{v}</div><div class="k">{k}</div></div>'
        for k, v in cards
    )
    gen = run.config.get("generation") or {}
    llm_cfg = run.config.get("llm") or {}
    meta = [
        ("run", run.name),
        ("started", run.stats.get("started")),
        ("model", run.stats.get("model") or llm_cfg.get("model")),
        ("temperature", gen.get("temperature")),
        ("dedup threshold", (run.config.get("dedup") or {}).get("threshold")),
        ("kept records from", run.kept_source),
    ]
    meta_html = " · ".join(f"{k}: <b>{_e(v)}</b>" for k, v in meta if v not in (None, ""))
    banner = ""
    if run.stats.get("stopped_reason"):
        banner = f'<div class="warn">Stopped early: {_e(run.stats["stopped_reason"])}</div>'
    items = "".join(f"<li>{f}</li>" for f in findings(a))
    return (
        f'{banner}<div class="meta">{meta_html}</div><div class="cards">{body}</div>'
        f'<ul class="findings">{items}</ul>'
    )


def _sec_funnel(a: Analysis) -> str:
    run, rows = a.run, []
    for stage, s in run.stages.items():
        top = ", ".join(
            (
                f'<a href="#{_id("r", a.idx, "rej", stage, r)}">{_e(r)}</a>'
                if run.examples.get(stage, {}).get(r)
                else _e(r)
            )
            + f"&nbsp;{n:,}"
            for r, n in s["dropped"].most_common(3)
        )
        rows.append(
            [
                _e(stage),
                _num(s["total"]),
                _num(s["kept"]),
                _num(s["rejected"]),
                _pct(s["rejected"], s["total"]),
                f"{s['seconds']:,.1f}",
                top,
            ]
        )
    if not rows:
        return "<p>No stage files or stats found.</p>"
    table = _table(
        ["stage", "in", "kept", "rejected", "rejected %", "seconds", "top reasons"], rows
    )
    return _grid(_funnel_chart(run), table)


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
                f'<a href="#{_id("r", a.idx, "rej", stage, r)}">'
                f"{n_ex} example{'s' * (n_ex != 1)}</a>"
                if n_ex
                else "no examples on file"
            )
            rows.append(
                [
                    f"<code>{_e(r)}</code>",
                    _num(n),
                    _pct(n, s["rejected"] or sum(reasons.values())),
                    link,
                ]
            )
        tables.append(
            f"<h3>{_e(stage)}</h3>" + _table(["reason", "records", "share", "examples"], rows)
        )
    if not tables:
        return "<p>Nothing was rejected.</p>"
    out = [_grid(_reasons_chart(run), "".join(tables)), "<h3>Examples of rejected records</h3>"]
    for stage, by_reason in run.examples.items():
        for r, exs in by_reason.items():
            recs = "".join(_record_html(x, show_reject=True) for x in exs)
            out.append(
                f'<details id="{_id("r", a.idx, "rej", stage, r)}"><summary>{_e(stage)}: '
                f"<code>{_e(r)}</code> ({len(exs)} shown)</summary>{recs}</details>"
            )
    return "".join(out)


def _sec_diversity(a: Analysis) -> str:
    import numpy as np

    if not a.pairs:
        return "<p>No kept records.</p>"
    pair_counts = Counter(f"{v} {o}" if o else v for v, o in a.pairs if v)
    rows = [[_e(p), _num(n), _pct(n, len(a.pairs))] for p, n in pair_counts.most_common(12)]
    none = sum(1 for v, _ in a.pairs if not v)
    if none:
        rows.append(["<i>no leading verb found</i>", _num(none), _pct(none, len(a.pairs))])
    side = [_table(["verb + object", "records", "share"], rows, "narrow")]
    if a.nn:
        cap = f" (a seeded sample of {a.nn_sampled:,})" if a.nn_sampled < len(a.pairs) else ""
        side.append(
            _hist(
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
    return _grid(_sunburst(a.pairs), "".join(side))


def _sec_lengths(a: Analysis) -> str:
    if not a.run.kept:
        return "<p>No kept records.</p>"
    rows = [[k] + _quantiles(v) for k, v in a.lengths.items()]
    n = len(a.run.kept)
    share = (
        f"<p>Records with an input: <b>{a.with_input:,}</b> of {n:,} ({_pct(a.with_input, n)}).</p>"
    )
    table = _table(["field (words)", "records", "min", "median", "p90", "max"], rows, "narrow")
    return _grid(share + table, _length_chart(a.lengths))


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
                    _e(stage),
                    _num(u.get("requests")),
                    _num(u.get("prompt_tokens")),
                    _num(u.get("completion_tokens")),
                    _money(u.get("cost")),
                ]
            )
        rows.append(
            [
                "<b>total</b>",
                _num(llm.get("requests")),
                _num(llm.get("prompt_tokens")),
                _num(llm.get("completion_tokens")),
                _money(llm.get("cost")),
            ]
        )
        out.append(
            _table(["LLM stage", "requests", "prompt tokens", "completion tokens", "cost"], rows)
        )
        labels = list(by)
        charts.append(
            _bars(
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
            _table(
                ["requests", "prompt tokens", "completion tokens", "cost"],
                [
                    [
                        _num(llm.get("requests")),
                        _num(llm.get("prompt_tokens")),
                        _num(llm.get("completion_tokens")),
                        _money(llm.get("cost")),
                    ]
                ],
            )
        )
    else:
        out.append("<p>No token figures in stats.json.</p>")
    extra = [f"{k}: <b>{_num(llm.get(k))}</b>" for k in ("cached", "failed") if k in llm]
    per = run.stats.get("per_kept_record") or {}
    if per:
        extra.append(
            f"per kept record: <b>{_num(per.get('prompt_tokens'), 1)}</b> prompt + "
            f"<b>{_num(per.get('completion_tokens'), 1)}</b> completion tokens, "
            f"<b>{_money(per.get('cost'))}</b>"
        )
    if extra:
        out.append("<p>" + " · ".join(extra) + "</p>")
    timed = [s for s, v in run.stages.items() if v["seconds"]]
    wall = run.stats.get("wall_seconds")
    if timed:
        charts.append(
            _bars(
                timed,
                {"seconds": [run.stages[s]["seconds"] for s in timed]},
                "wall time per stage"
                + (f" (run total {wall:,.1f} s)" if isinstance(wall, int | float) else ""),
                "seconds",
                fmt=lambda x: f"{x:,.1f} s",
                integer=False,
            )
        )
    return _grid("".join(out), *charts)


def _sec_code(a: Analysis) -> str:
    run = a.run
    if run.mode != "code":
        return "<p>Not a code-mode run.</p>"
    c = _code_figures(run)
    if not c["problems"] and not c["extra"]:
        return "<p>No verify stage output found.</p>"
    rows = [
        ["problems verified", _num(c["problems"])],
        [
            "problems kept (a candidate passed)",
            f"{c['solved']:,} ({_pct(c['solved'], c['problems'])})",
        ],
        ["candidates run", _num(c["run"])],
        ["candidates passed", f"{c['passed']:,} ({_pct(c['passed'], c['run'])})"],
        ["rejected for vacuous tests", _num(c["vacuous"])],
    ]
    rows += [
        [_e(k), _num(v)]
        for k, v in sorted(c["extra"].items())
        if k not in ("candidates_run", "candidates_passed") and not k.startswith("status_")
    ]
    out = [_table(["", ""], rows, "narrow kv")]
    st = c["statuses"]
    if st:
        labels = [s for s, _ in st.most_common()]
        out.append(
            _bars(
                labels,
                {"candidates": [float(st[s]) for s in labels]},
                "candidate status counts",
                "candidates",
            )
        )
    if c["cands"]:
        lo, hi = min(c["cands"]), max(c["cands"])
        out.append(
            _hist(
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
            _bars(
                labels,
                {"problems": [float(c["first_pass"][i]) for i in sorted(c["first_pass"])]},
                "which candidate passed first",
                "problems",
            )
        )
    return _grid(*out)


def _sec_sample(a: Analysis) -> str:
    if not a.run.kept:
        return "<p>No kept records.</p>"
    pool = a.run.kept
    if a.run.mode == "code" and len(a.run.last_stage) == len(a.run.kept):
        pool = a.run.last_stage  # the same records with their tests, which data.json drops
    picks = random.Random(0).sample(pool, min(SAMPLE_RECORDS, len(pool)))
    head = f"<p>{len(picks)} of {len(pool):,} kept records, drawn with a fixed seed.</p>"
    return head + _grid(*(_record_html(r) for r in picks))


def _sec_compare(analyses: list[Analysis]) -> str:
    """One table with a column per run: the figures one compares first."""
    import numpy as np

    def row(label: str, fn: Callable[[Analysis], str]) -> list[str]:
        return [label] + [fn(a) for a in analyses]

    def rate(a: Analysis) -> str:
        return _pct(len(a.run.kept), (a.run.stages.get("generate") or {}).get("total", 0))

    rows = [
        row("mode", lambda a: _e(a.run.mode)),
        row("kept records", lambda a: _num(len(a.run.kept))),
        row("kept of generated", rate),
        row("distinct leading verbs", lambda a: _num(len({v for v, _ in a.pairs if v}))),
        row("median nearest ROUGE-L", lambda a: f"{np.median(a.nn):.2f}" if a.nn else "–"),
        row("records with input", lambda a: _pct(a.with_input, len(a.run.kept))),
        row(
            "median output words",
            lambda a: f"{np.median(a.lengths['output']):.0f}" if a.lengths["output"] else "–",
        ),
        row("cost", lambda a: _money((a.run.stats.get("llm") or {}).get("cost"))),
        row(
            "cost per kept record",
            lambda a: _money(cost_per_kept(a.run)),
        ),
        row("wall seconds", lambda a: _num(a.run.stats.get("wall_seconds"), 1)),
    ]
    if any(a.run.mode == "code" for a in analyses):
        rows.append(
            row(
                "candidate pass rate",
                lambda a: _pct(*(lambda c: (c["passed"], c["run"]))(_code_figures(a.run))),
            )
        )
    return _table([""] + [_e(a.run.name) for a in analyses], rows, "compare")


SECTIONS: list[tuple[str, str, Callable[[Analysis], str]]] = [
    ("summary", "Summary", _sec_summary),
    ("funnel", "Stage funnel", _sec_funnel),
    ("rejections", "Why records were rejected", _sec_rejections),
    ("diversity", "Instruction diversity", _sec_diversity),
    ("lengths", "Lengths", _sec_lengths),
    ("cost", "Tokens, cost and time", _sec_cost),
    ("code", "Code verification", _sec_code),
    ("sample", "Sample of kept records", _sec_sample),
]

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
    nav = "".join(f'<a href="#{key}">{_e(title)}</a>' for key, title, _ in shown)
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Run report: {_e(names)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>Run report: {_e(names)}</h1>",
        f'<div class="sub">{" · ".join(_e(r.path) for r in runs)}</div>',
        f"<nav>{nav}</nav></header><main>",
    ]
    if len(runs) > 1:
        parts.append(
            f'<section id="compare"><h2>Side by side</h2>{_sec_compare(analyses)}</section>'
        )
    for key, title, fn in shown:
        if len(analyses) == 1:
            body = fn(analyses[0])
        else:
            cols = "".join(
                f'<div class="col"><h3 class="run">{_e(a.run.name)}</h3>{fn(a)}</div>'
                for a in analyses
            )
            body = f'<div class="cols" style="--n:{len(analyses)}">{cols}</div>'
        parts.append(f'<section id="{key}"><h2>{_e(title)}</h2>{body}</section>')
    parts.append("</main></body></html>\n")
    return "".join(parts)


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
                "report-vs-" + "-".join(_id(Path(d).name) for d in run_dirs[1:]) + ".html"
            )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render_html(runs), encoding="utf-8")
    tmp.replace(out)
    return out


def resolve_run_dir(arg: str | Path, output_dir: str | Path = "outputs") -> Path:
    """A run given as a directory path, or as a run name under ``output_dir``."""
    p = Path(arg)
    if p.is_dir():
        return p
    q = Path(output_dir) / p
    if q.is_dir():
        return q
    raise FileNotFoundError(f"{arg}: not a run directory (nor {q})")


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


if __name__ == "__main__":
    raise SystemExit(main())
