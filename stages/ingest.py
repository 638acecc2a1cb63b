"""The ingest stages: conversations made from a repository or docs folder, under the stage
contract (:mod:`stages.base`). No file is read here: the walk (``pipeline/walk.py``) hands in
:class:`stages.sources.Document` values and commits, the LLM comes in as a ``llm`` stream and
prompt rendering as ``render``.

- :class:`IngestConfig`: the ``ingest:`` section of the pipeline config.
- :func:`chunk_document` and :func:`raw_records`: each document cut into chunks of at most
  ``max_tokens_per_chunk`` tokens, path header included: the ``raw_text.jsonl`` rows
  (``{"text", "source"}``) for continued pre-training.
- Stage ``generate``, where the conversations are born: :func:`recall_records` (one "show me
  <path> as of <date>" conversation per chunk, whose answer is the chunk itself), the commits
  that :func:`commit_records` let through, and :func:`parse_qa_replies` over the model's answers
  to :func:`qa_requests` (question/answer pairs about each document).
- Stage ``git_log`` (:func:`commit_records`): commits into "Summarise commit X" conversations.
- Stage ``ground`` (:func:`run_grounding`, rule :func:`check`): QA pairs whose answers the text
  the model was shown supports.
- :func:`verbatim_filter`: the filter rules that apply to file-recall and commit records.

Records: ``id`` (``f<doc>-<chunk>``, ``c<commit>``, ``q<doc>-<pair>``: stable across reruns),
``instruction``, ``input`` (""), ``output``, ``meta``: ``kind`` (``file_recall`` | ``commit`` |
``qa``); recall: ``source``, ``lines``, ``snapshot``; commit: ``commit``, ``date``; QA:
``source``, ``template``, ``model``, ``request_id``, ``finish_reason``, ``usage``, ``cached``,
``request``.

Reject reasons. ``generate``: the failed request's kind (``request_failed``,
``budget_exhausted``; the error kept), ``unparseable_reply`` (no pair found; raw text kept),
``missing_output`` (a question without an answer), ``truncated_generation`` (the last pair of a
reply cut by the length limit). ``git_log``: ``secret`` (a credential in the subject, body or
diffstat; detail names its kind and line, never its value). ``ground``: ``ungrounded_answer`` (an
identifier or number of the answer is absent from the source, or too few of its content words
occur there; detail ``missing``, ``support``) and ``secret_in_output`` (a generated text that
looks like a credential: a last line of defence, since secret files never reach the model).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import PurePosixPath

from stages.base import Failure, Render, Request, Response, StageStats, help_field
from stages.filters import FilterConfig
from stages.sources import Document, chunk_lines, find_secrets

_help = help_field

KINDS = ("repo", "docs")
REASON_UNGROUNDED = "ungrounded_answer"
REASON_SECRET_OUTPUT = "secret_in_output"
REASON_SECRET_COMMIT = "secret"


@dataclass
class IngestConfig:
    kind: str = _help(
        "repo (a code checkout) | docs (a folder of Markdown/text/HTML pages)", "repo"
    )
    name: str = _help(
        "name of the repository or wiki used in instructions; empty = the folder name", ""
    )
    max_tokens_per_chunk: int = _help(
        "tokens per raw-text chunk and per file-recall answer, path header included", 8192
    )
    tokenizer: str = _help(
        "target tokenizer for counting: a HF tokenizer name or directory, a .gguf file, or 'smollm2' "
        "(the bundled model's); empty = tokenizer-free estimate (letter runs / 6, digits and "
        "punctuation one each; about 1.1x a BPE count)",
        "",
    )
    max_files: int = _help(
        "use at most this many files (in path order, after skipping); 0 = all", 0
    )
    max_file_bytes: int = _help("skip files larger than this (too_large)", 1_000_000)
    qa_per_doc: int = _help(
        "question/answer pairs asked for per file or page; 0 = no model calls", 3
    )
    qa_context_tokens: int = _help(
        "tokens of a document shown to the model for its QA pairs (its first chunk of this size; "
        "capped to fit the embedded server's context)",
        1024,
    )
    qa_max_tokens: int = _help("completion tokens per QA request", 320)
    qa_temperature: float = _help("sampling temperature of QA requests", 0.7)
    min_answer_support: float = _help(
        "share of an answer's content words that must occur in its source (ungrounded_answer); "
        "identifiers and numbers must all occur",
        0.75,
    )
    file_recall: bool = _help(
        "add one 'show the contents of <path> as of <date>' conversation per chunk", True
    )
    include_git_log: bool = _help(
        "add 'Summarise commit X' pairs from git log (subject, body, diffstat)", False
    )
    git_log_max: int = _help("most recent commits used when include_git_log is on", 50)
    seed: int = _help(
        "seed of the validation split (export.validation_fraction) and of instruction phrasing",
        42,
    )
    # YAML reads an unquoted 2024-05-01 as a date: accepted, and kept as its ISO string.
    snapshot_date: str | date = _help(
        "date put in file-recall pairs (YYYY-MM-DD); empty = last commit date, else today (UTC)", ""
    )
    exclude: list[str] = _help("extra gitignore-style patterns to skip (excluded)", factory=list)
    entropy_threshold: float = _help(
        "bits per character from which a long mixed-case token counts as a secret; 0 = off", 4.0
    )
    entropy_min_length: int = _help("shortest token checked for entropy", 32)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"ingest.kind={self.kind!r}: use 'repo' or 'docs'")
        if self.max_tokens_per_chunk < 64:
            raise ValueError(
                f"ingest.max_tokens_per_chunk={self.max_tokens_per_chunk!r}: must be at least 64"
            )
        for name in ("max_files", "qa_per_doc", "git_log_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"ingest.{name}={getattr(self, name)!r}: must be 0 or more")
        if self.max_file_bytes < 1:
            raise ValueError(f"ingest.max_file_bytes={self.max_file_bytes!r}: must be positive")
        if self.qa_context_tokens < 32:
            raise ValueError(
                f"ingest.qa_context_tokens={self.qa_context_tokens!r}: must be at least 32"
            )
        if self.qa_max_tokens < 16:
            raise ValueError(f"ingest.qa_max_tokens={self.qa_max_tokens!r}: must be at least 16")
        if not 0.0 <= self.min_answer_support <= 1.0:
            raise ValueError(
                f"ingest.min_answer_support={self.min_answer_support!r}: must be in [0, 1]"
            )
        if isinstance(self.snapshot_date, date) and not isinstance(self.snapshot_date, datetime):
            self.snapshot_date = self.snapshot_date.isoformat()
        if not isinstance(self.snapshot_date, str):
            raise ValueError(f"ingest.snapshot_date={self.snapshot_date!r}: use YYYY-MM-DD")
        if self.snapshot_date:
            try:
                datetime.strptime(self.snapshot_date, "%Y-%m-%d")
            except ValueError:
                raise ValueError(
                    f"ingest.snapshot_date={self.snapshot_date!r}: use YYYY-MM-DD"
                ) from None
        if not all(isinstance(p, str) for p in self.exclude):
            raise ValueError(
                f"ingest.exclude={self.exclude!r}: must be a list of gitignore-style patterns"
            )


# -- raw text ---------------------------------------------------------------------------------


def _one_line(render: Render, name: str, **variables: object) -> str:
    return render(name, **variables).strip("\n")


def _part_label(doc: Document, i: int, render: Render) -> str:
    if len(doc.chunks) == 1:
        return ""
    c = doc.chunks[i]
    return _one_line(
        render,
        "ingest_recall_part",
        first=c.first_line,
        last=c.last_line,
        part=i + 1,
        parts=len(doc.chunks),
    )


def chunk_document(
    doc: Document, max_tokens: int, count: Callable[[str], int], render: Render, repo: str
) -> Document:
    """``doc`` with its token count and its chunks, each small enough that it fits
    ``max_tokens`` together with the longest path header a chunk can get."""
    longest_part = " (lines 100000-100000, part 1000 of 1000)"
    header = _one_line(render, "ingest_raw_header", repo=repo, path=doc.path, part=longest_part)
    budget = max(16, max_tokens - count(header) - 4)
    return dataclasses.replace(
        doc, tokens=count(doc.text), chunks=chunk_lines(doc.text, budget, count)
    )


def raw_records(doc: Document, repo: str, render: Render) -> Iterator[dict]:
    """The ``raw_text.jsonl`` rows of a chunked document: each chunk under its path header."""
    for i, c in enumerate(doc.chunks):
        part = _part_label(doc, i, render)
        header = _one_line(render, "ingest_raw_header", repo=repo, path=doc.path, part=part)
        yield {"text": f"{header}\n\n{c.text}", "source": doc.path}


# -- stage generate: records made without the model -------------------------------------------


def keep_all(records: Iterable[dict], stats: StageStats) -> list[dict]:
    """Records born whole (file recall, commits), each kept as it is born: there is nothing in
    them to reject before the filter stage."""
    return [stats.keep(rec) for rec in records]


def recall_records(
    docs: Iterable[Document], *, repo: str, date: str, what: str, seed: int, render: Render
) -> Iterator[dict]:
    """One "show me this file as of <date>" conversation per chunk of each chunked document;
    the instruction's phrasing is drawn per file from a seeded RNG."""
    for index, doc in enumerate(docs):
        phrasings = [
            ln
            for ln in render(
                "ingest_recall_instruction", path=doc.path, repo=repo, date=date, what=what
            ).splitlines()
            if ln.strip()
        ]
        rng = random.Random(f"{seed}:recall:{doc.path}")
        for i, c in enumerate(doc.chunks):
            part = _part_label(doc, i, render)
            instruction = rng.choice(phrasings)
            if part:
                instruction = (
                    instruction.rstrip(".?") + part + ("?" if instruction.endswith("?") else ".")
                )
            prefix = _one_line(
                render, "ingest_recall_answer", date=date, path=doc.path, repo=repo, part=part
            )
            yield {
                "id": f"f{index}-{i}",
                "instruction": instruction,
                "input": "",
                "output": f"{prefix}\n\n{c.text}",
                "meta": {
                    "kind": "file_recall",
                    "source": doc.path,
                    "lines": [c.first_line, c.last_line],
                    "snapshot": date,
                },
            }


def commit_records(
    commits: Iterable[dict], *, repo: str, render: Render, stats: StageStats
) -> Iterator[dict]:
    """Stage ``git_log``: each commit (``sha``, ``date``, ``subject``, ``body``, ``stat``) as a
    "Summarise commit X" conversation, or dropped as ``secret`` when its text holds a
    credential. The dropped record carries the commit's id and short hash only, never its text."""
    for c in stats.admit({"id": f"c{i}", **c} for i, c in enumerate(commits)):
        short = c["sha"][:10]
        hits = find_secrets("\n".join((c["subject"], c["body"], c["stat"])))
        if hits:
            findings = [{"kind": h.kind, "line": h.line} for h in hits[:20]]
            stats.drop(
                {"id": c["id"], "path": f"commit:{short}"}, REASON_SECRET_COMMIT, findings=findings
            )
            continue
        answer = render(
            "ingest_commit_answer",
            short=short,
            date=c["date"],
            subject=c["subject"],
            body=c["body"],
            stat=c["stat"],
        )
        answer = "\n\n".join(p.strip("\n") for p in answer.split("\n\n") if p.strip())
        yield stats.keep(
            {
                "id": c["id"],
                "instruction": _one_line(
                    render, "ingest_commit_instruction", short=short, repo=repo
                ),
                "input": "",
                "output": answer,
                "meta": {"kind": "commit", "commit": c["sha"], "date": c["date"]},
            }
        )


# -- stage generate: question/answer pairs ----------------------------------------------------


def qa_context_budget(cfg: IngestConfig, context: int | None = None) -> int:
    """Tokens of a document shown in its QA request: ``qa_context_tokens``, and where the
    server's context length is known (the embedded server's), few enough that the prompt, the
    document and the answer fit in it. Our counts run a little above the model's own, and the
    200 tokens for the prompt's own text leave a margin."""
    budget = cfg.qa_context_tokens
    if context:
        budget = min(budget, context - cfg.qa_max_tokens - 200)
    return max(32, budget)


def qa_excerpts(
    docs: Iterable[Document], budget: int, count: Callable[[str], int]
) -> dict[str, str]:
    """Path -> the part of the document the model is shown: its first chunk of ``budget``."""
    return {d.path: chunk_lines(d.text, budget, count)[0].text for d in docs}


def shown_sources(excerpts: Mapping[str, str], repo: str) -> dict[str, str]:
    """Path -> what the model was shown of it, which its answers are checked against: the
    excerpt, and the repository name and the path (answers may use them too)."""
    return {path: f"{repo}\n{path}\n{text}" for path, text in excerpts.items()}


def qa_requests(
    excerpts: Mapping[str, str],
    cfg: IngestConfig,
    render: Render,
    api: str,
    *,
    repo: str,
    what: str,
    top_p: float,
) -> Iterator[Request]:
    """One request per document (in ``excerpts`` order) for ``qa_per_doc`` pairs about it. A
    completion prompt ends inside the first pair, so its reply is parsed with that label in
    front; a stop marker past the last asked-for pair keeps a base-style model from going on."""
    for i, (path, excerpt) in enumerate(excerpts.items()):
        variables = {
            "what": what,
            "path": path,
            "repo": repo,
            "document": excerpt.rstrip("\n"),
            "count": cfg.qa_per_doc,
        }
        params = {
            "temperature": cfg.qa_temperature,
            "top_p": top_p,
            "max_tokens": cfg.qa_max_tokens,
            "seed": cfg.seed * 100003 + i,
        }
        if api == "completion":
            template, prefix = "ingest_qa_completion", "Question 1:"
            params["stop"] = [f"Question {cfg.qa_per_doc + 1}", "\n--- "]
            text = render(template, **variables).rstrip()
            req = Request(kind="qa", prompt=text, params=params, sample=i, api="completion")
        else:
            template, prefix = "ingest_qa_chat", ""
            text = render(template, **variables)
            req = Request(
                kind="qa",
                messages=[{"role": "user", "content": text}],
                params=params,
                sample=i,
                api="chat",
            )
        req.tag = {"index": i, "source": path, "prefix": prefix, "template": template}
        yield req


def qa_instruction(question: str, path: str, repo: str, render: Render) -> str:
    """The question as asked in training: it names the file unless it already does."""
    if path in question or PurePosixPath(path).name in question:
        return question
    return _one_line(render, "ingest_qa_instruction", path=path, repo=repo, question=question)


def parse_qa_replies(
    answers: Iterable[tuple[Request, Response | Failure]],
    stats: StageStats,
    *,
    qa_per_doc: int,
    repo: str,
    render: Render,
) -> Iterator[dict]:
    """Stage ``generate``, QA part: each reply to :func:`qa_requests` parsed into at most
    ``qa_per_doc`` records (a failed request is a rejected record with its error)."""
    for req, resp in answers:
        i, path = req.tag["index"], req.tag["source"]
        if isinstance(resp, Failure):
            meta = {"kind": "qa", "source": path, "request": i, "error": resp.error}
            stats.drop({"id": f"q{i}", "meta": meta}, resp.kind)
            continue
        meta = {
            "kind": "qa",
            "source": path,
            "template": req.tag["template"],
            "model": resp.model,
            "request_id": resp.request_id,
            "finish_reason": resp.finish_reason,
            "usage": {
                "prompt_tokens": resp.prompt_tokens,
                "completion_tokens": resp.completion_tokens,
            },
            "cached": resp.cached,
            "request": i,
        }
        pairs = parse_qa(req.tag["prefix"] + resp.text)[:qa_per_doc]
        if not pairs:
            stats.drop({"id": f"q{i}", "meta": meta, "raw": resp.text}, "unparseable_reply")
            continue
        for j, (question, answer) in enumerate(pairs):
            rec = {
                "id": f"q{i}-{j}",
                "instruction": qa_instruction(question, path, repo, render),
                "input": "",
                "output": answer or "",
                "meta": meta,
            }
            if answer:
                yield stats.keep(rec)
            elif j == len(pairs) - 1 and resp.finish_reason == "length":
                stats.drop(rec, "truncated_generation")
            else:
                stats.drop(rec, "missing_output")


# -- QA replies -------------------------------------------------------------------------------

_QA_MARK = re.compile(
    r"^[ \t>*#\-]*(?:\d+\s*[.)]\s*)?\**\s*(?P<tag>question|answer|q|a)\s*(?P<num>\d+)?\s*\**\s*[:.)]\s*\**[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)


def _clean(text: str) -> str:
    text = text.strip()
    return re.sub(r"^\*\*\s*|\s*\*\*$", "", text).strip()


def parse_qa(text: str) -> list[tuple[str, str | None]]:
    """(question, answer or None) pairs from a reply of ``Question N: / Answer:`` (or ``Q:`` /
    ``A:``) blocks; a question without an answer (cut off) comes back with ``None``."""
    marks = list(_QA_MARK.finditer(text))
    pairs: list[tuple[str, str | None]] = []
    question: str | None = None
    for j, m in enumerate(marks):
        end = marks[j + 1].start() if j + 1 < len(marks) else len(text)
        value = _clean(text[m.end() : end])
        tag = m.group("tag").lower()[0]
        if tag == "q":
            if question is not None:
                pairs.append((question, None))
            question = value
        elif question is not None:
            pairs.append((question, value or None))
            question = None
    if question is not None:
        pairs.append((question, None))
    out = []
    for q, a in pairs:
        if a is None and "\n" in q:
            # "Question 1: ...?\nThe answer text" with the "Answer:" label left out.
            head, _, rest = q.partition("\n")
            if head.rstrip().endswith("?") and rest.strip():
                q, a = head.strip(), _clean(rest)
        if q:
            out.append((q, a))
    return out


# -- groundedness -----------------------------------------------------------------------------

_STOPWORDS = frozenset(
    """about above after again against also although among another because been before being
    below between both cannot could does doing done down during each either else even every
    from further have having here hers herself himself into itself just like made make makes
    many more most much must myself need needs only other ought ours ourselves over same shall
    should since some such than that their theirs them themselves then there these they this
    those through thus under until upon used uses using very want what when where whether which
    while whom whose will with within without would your yours yourself yourselves answer
    question document file page text section following given provides provided include
    includes including contains contain called named allows allow based within describes
    describe described defines define defined specific example instance information function
    functions method methods module modules""".split()
)
_IDENT = re.compile(
    r"`([^`\n]{1,80})`|\b([A-Za-z_][A-Za-z0-9_-]*(?:[._][A-Za-z0-9_-]+)+|[a-z]+[A-Z][A-Za-z0-9]*|[A-Z]{2,}[a-z0-9]+\w*)\b"
)
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w])")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]")


def _stem(word: str) -> str:
    w = word.lower().strip("'-")
    for suffix in ("ingly", "edly", "ing", "ied", "ies", "ed", "es", "ly", "s"):
        if len(w) - len(suffix) >= 4 and w.endswith(suffix):
            return w[: -len(suffix)]
    return w


def key_terms(answer: str) -> tuple[list[str], list[str], list[str]]:
    """(identifiers, numbers, content words) of an answer: what :func:`check` looks up."""
    idents: list[str] = []
    for m in _IDENT.finditer(answer):
        term = (m.group(1) or m.group(2) or "").strip()
        if term and term not in idents:
            idents.append(term)
    numbers = list(dict.fromkeys(_NUMBER.findall(_IDENT.sub(" ", answer))))
    words = [
        w
        for w in dict.fromkeys(x.lower() for x in _WORD.findall(_IDENT.sub(" ", answer)))
        if len(w) >= 4 and w not in _STOPWORDS
    ]
    return idents, numbers, words


def grounding(answer: str, source: str, *, min_support: float = 0.75) -> tuple[str | None, dict]:
    """(None, detail) when every identifier and number of ``answer`` occurs in ``source`` and at
    least ``min_support`` of its content words do (stem match); else (``ungrounded_answer``,
    detail with what was missing)."""
    idents, numbers, words = key_terms(answer)
    if not (idents or numbers or words):
        return REASON_UNGROUNDED, {"missing": [], "why": "no_key_terms"}
    lowered = source.lower()

    def present(term: str) -> bool:
        # A dotted name may be written whole or spelled out ("from pipeline.ingest import main").
        t = term.lower()
        return t in lowered or ("." in t and all(p in lowered for p in t.split(".") if p))

    missing_ids = [t for t in idents if not present(t)]
    source_numbers = set(_NUMBER.findall(source))
    missing_nums = [n for n in numbers if n not in source_numbers]
    source_words = _WORD.findall(source)
    source_stems = {_stem(p) for w in source_words for p in (w, *w.split("-"))}
    missing_words = [w for w in words if _stem(w) not in source_stems]
    support = 1.0 - len(missing_words) / len(words) if words else 1.0
    detail = {"support": round(support, 3)}
    if missing_ids or missing_nums or support < min_support:
        missing = missing_ids + missing_nums + missing_words
        return REASON_UNGROUNDED, {**detail, "missing": missing[:20]}
    return None, detail


def check(record: dict, source_text: str, *, min_support: float = 0.75) -> str | None:
    """The reason to drop a generated QA ``record`` (its ``output`` judged against
    ``source_text``, the text the model was shown), or None to keep it. Pure."""
    return _check(record, source_text, min_support)[0]


def _check(record: dict, source_text: str, min_support: float) -> tuple[str | None, dict]:
    texts = [str(record.get(k, "")) for k in ("instruction", "input", "output")]
    if any(find_secrets(t) for t in texts):
        return REASON_SECRET_OUTPUT, {}
    return grounding(str(record.get("output", "")), source_text, min_support=min_support)


def run_grounding(
    records: Iterable[dict],
    sources: Mapping[str, str],
    stats: StageStats,
    *,
    min_support: float = 0.75,
) -> Iterator[dict]:
    """Keep QA records whose answers are supported by ``sources[record["meta"]["source"]]``."""
    for rec in stats.admit(records):
        source = sources.get(rec.get("meta", {}).get("source", ""), "")
        reason, detail = _check(rec, source, min_support)
        if reason:
            stats.drop(rec, reason, **detail)
        else:
            yield stats.keep(rec)


# -- stage filter: the rules for verbatim records ---------------------------------------------


def verbatim_filter(cfg: FilterConfig) -> FilterConfig:
    """The filter config for file-recall and commit records. A file is an answer as it stands:
    it may end mid-sentence, hold prompt-like markers (this project's own templates do), mention
    URLs or restate its path. Only the rules that judge data rather than prose apply."""
    return dataclasses.replace(
        cfg,
        blocklist=[],
        code_blocklist=[],
        reject_unseen_references=False,
        reject_truncated_outputs=False,
        reject_template_leaks=False,
        restatement_threshold=1.0,
        reject_output_copies_input=False,
        python_must_parse=False,
        non_answer_patterns=[],
    )
