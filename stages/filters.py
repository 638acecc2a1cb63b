"""Filter stage: drop records a model should not be trained on, each with its own reason.

Reads ``instruction``, ``input``, ``output``, ``meta.finish_reason`` and, in code mode,
``language``. :func:`normalize` rewrites ``input`` ("no input" spelled any of a dozen ways
becomes ""); nothing else is changed. Every rule has a toggle or parameter in
:class:`FilterConfig`; the first rule that fires is the record's reason, checked in this order:

Record: ``missing_instruction`` (absent or not a string), ``humaneval_contaminated`` (shares a
13-gram with a HumanEval prompt or canonical solution; checked first so every contaminated
record is counted as such), ``control_characters``.

Instruction (Alpaca's rules): ``too_short``, ``too_long`` (word counts),
``starts_with_punctuation``, ``non_ascii_start``, ``blocklisted_word`` (asks for something a
text model cannot produce: an image, a plot, audio...), ``program_request`` ("Write a program",
general mode only), ``unseen_reference`` (points at a URL, image, file or attachment the model
cannot see).

Output (skipped in code mode for a problem that has no output yet: no ``output`` key, or
``stage_hint == "problem"``): ``invalid_output`` (not a string), ``truncated_generation``
(``meta.finish_reason == "length"``), ``empty_output``, ``non_answer`` (N/A, refusals),
``output_copies_input``, ``output_restates_instruction``, ``template_leak`` (the next task's
"Instruction:" / "###" or chat tokens merged into the output), ``truncated_output`` (ends
mid-sentence or inside an open code block), ``python_syntax_error`` (code mode: the Python does
not parse).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from stages.base import StageStats
from stages.parsing import NO_INPUT_SPELLINGS, fenced_blocks, normalize_input

MODES = ("general", "code")

# Alpaca's list: tasks asking for output a text-only model cannot produce.
ALPACA_BLOCKLIST = [
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
]
# In code mode "file", "map", "plot", "graph" and "draw" are ordinary programming words
# (read a file, Python's map, a graph algorithm), so only true modalities stay.
CODE_BLOCKLIST = [
    "image",
    "images",
    "picture",
    "pictures",
    "photo",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
    "go to",
]
# Whole-output non-answers and refusals (matched against the stripped, lower-cased output).
NON_ANSWER_PATTERNS = [
    r"(n/?a|none|null|nil|unknown|tbd|todo|empty|no output|no answer|not applicable|nooutput"
    r"|no response|[-.?_ ]*)[.!]?",
    r"<\s*no\s*output\s*>.*",
    r"(i'?m sorry|i am sorry|sorry, (but )?i|i apologi[sz]e|unfortunately,? i|as an ai\b"
    r"|i (cannot|can ?not|can't|am unable to|am not able to|'m unable to|do not have the ability"
    r"|don't have the ability)).*",
]


def _help(text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"help": text})
    return dataclasses.field(default=default, metadata={"help": text})


@dataclass
class FilterConfig:
    mode: str = _help("general | code (set from generation.mode)", "general")
    min_words: int = _help("instructions with fewer words are rejected (too_short)", 3)
    max_words: int = _help("instructions with more words are rejected (too_long)", 150)
    reject_punctuation_start: bool = _help(
        "reject instructions whose first character is punctuation (starts_with_punctuation)", True
    )
    reject_non_ascii_start: bool = _help(
        "reject instructions whose first character is not ASCII (non_ascii_start)", True
    )
    blocklist: list[str] = _help(
        "general mode: words/phrases (whole-word, any case) asking for output a text model "
        "cannot give (blocklisted_word); [] = off",
        factory=lambda: list(ALPACA_BLOCKLIST),
    )
    code_blocklist: list[str] = _help(
        "code mode: the same rule with a list fit for programming tasks; [] = off",
        factory=lambda: list(CODE_BLOCKLIST),
    )
    reject_program_requests: bool = _help(
        "general mode: reject instructions starting 'Write a program' (program_request)", True
    )
    reject_unseen_references: bool = _help(
        "reject records pointing at a URL, image, file or attachment the model cannot see: an "
        "input that is only such a pointer, or (general mode) an instruction naming one "
        "(unseen_reference)",
        True,
    )
    reject_control_characters: bool = _help(
        "reject records with control characters other than tab/newline (control_characters)", True
    )
    reject_finish_length: bool = _help(
        "reject records whose meta.finish_reason is 'length' (truncated_generation)", True
    )
    reject_empty_output: bool = _help("reject empty or blank outputs (empty_output)", True)
    non_answer_patterns: list[str] = _help(
        "regexes that, matched against the whole stripped lower-cased output, mark an N/A or a "
        "refusal (non_answer); [] = off",
        factory=lambda: list(NON_ANSWER_PATTERNS),
    )
    reject_output_copies_input: bool = _help(
        "reject outputs equal to the (non-empty) input after stripping (output_copies_input)",
        True,
    )
    restatement_threshold: float = _help(
        "reject outputs whose ROUGE-L F with the instruction is above this "
        "(output_restates_instruction); 1.0 = off",
        0.8,
    )
    reject_template_leaks: bool = _help(
        "reject outputs holding prompt-format markers: the next task's 'Instruction:', "
        "'### Response', chat tokens (template_leak)",
        True,
    )
    reject_truncated_outputs: bool = _help(
        "reject outputs ending mid-sentence or inside an unclosed code block (truncated_output)",
        True,
    )
    python_must_parse: bool = _help(
        "code mode: Python outputs (a ```python fence stripped first) must pass ast.parse "
        "(python_syntax_error)",
        True,
    )
    normalize_no_input: bool = _help("rewrite 'no input' spellings of input to ''", True)
    no_input_spellings: list[str] = _help(
        "input values meaning 'no input' (compared lower-cased, brackets/dots/dashes as spaces)",
        factory=lambda: list(NO_INPUT_SPELLINGS),
    )
    decontaminate: bool = _help(
        "reject records sharing an n-gram with a HumanEval prompt or canonical solution "
        "(humaneval_contaminated)",
        True,
    )
    decontam_ngram: int = _help("decontamination n-gram length, in word tokens", 13)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"filter.mode={self.mode!r}: use 'general' or 'code'")
        if not isinstance(self.min_words, int) or self.min_words < 0:
            raise ValueError(f"filter.min_words={self.min_words!r}: use a word count >= 0")
        if not isinstance(self.max_words, int) or self.max_words < self.min_words:
            raise ValueError(
                f"filter.max_words={self.max_words!r}: must be >= filter.min_words "
                f"({self.min_words})"
            )
        if not 0.0 <= self.restatement_threshold <= 1.0:
            raise ValueError(
                f"filter.restatement_threshold={self.restatement_threshold!r}: must be in "
                "[0, 1] (1.0 turns the rule off)"
            )
        if not isinstance(self.decontam_ngram, int) or self.decontam_ngram < 4:
            raise ValueError(
                f"filter.decontam_ngram={self.decontam_ngram!r}: use at least 4 (13 is usual)"
            )
        for name in ("blocklist", "code_blocklist", "non_answer_patterns", "no_input_spellings"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"filter.{name}={value!r}: must be a list of strings")
        for p in self.non_answer_patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(
                    f"filter.non_answer_patterns: {p!r} is not a valid regex ({e})"
                ) from None


# --- compiled helpers (cached on the config's values, so check() stays pure and cheap) ---


@lru_cache(maxsize=16)
def _word_regex(words: tuple[str, ...]) -> re.Pattern | None:
    if not words:
        return None
    alts = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b(?:{alts})\b", re.IGNORECASE)


@lru_cache(maxsize=16)
def _full_regex(patterns: tuple[str, ...]) -> re.Pattern | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.DOTALL)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_PROGRAM = re.compile(r"\s*write a program\b", re.IGNORECASE)
_PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")

# Things the model cannot open: links, attachments, media referred to as present.
_POINTER = (
    r"https?://\S+|www\.\S+"
    r"|[\w-]+\.(?:png|jpe?g|gif|bmp|svg|webp|pdf|docx?|pptx?|xlsx?|mp3|mp4|wav|mov|avi|zip)"
    r"|[<\[](?:image|img|photo|picture|file|attachment|video|audio|link|url)[^>\]]{0,40}[>\]]"
)
# In an instruction: a link, an attachment, or media spoken of as present ("this image").
_UNSEEN_INSTRUCTION = re.compile(
    rf"{_POINTER}|\b(?:attached|attachment|enclosed|uploaded)\b"
    r"|\b(?:this|the|following|given|above|below|provided)\s+(?:image|photo|photograph|picture"
    r"|screenshot|video|audio|recording|podcast|pdf|spreadsheet|webpage|web page|website|link"
    r"|url|chart)s?\b",
    re.IGNORECASE,
)
# An input is text to work on, and may well mention "the photos" or "click the link"; it is a
# defect only when the whole input is a pointer ("Image: cat.jpg", "<image>", a bare URL).
_UNSEEN_INPUT = re.compile(
    r"\s*(?:(?:image|photo|picture|file|link|url|video|audio|attachment|document|see)\s*:?\s*)?"
    rf"(?:{_POINTER}|\(?(?:see )?(?:the )?attached(?: \w+)?\)?)[.\s]*",
    re.IGNORECASE,
)


def _unseen(text: str, inp: str, mode: str) -> str | None:
    if m := _UNSEEN_INPUT.fullmatch(inp):
        return m.group(0).strip()
    if mode == "general" and (m := _UNSEEN_INSTRUCTION.search(text)):
        return m.group(0)
    return None


# The next task's header or a chat/template token inside an output: the model ran on past
# its answer (Alpaca's "2. Instruction:" format, Alpaca/Vicuna "### Response:", ChatML, Llama).
_LEAK = re.compile(
    r"^\s*(?:#{2,}\s*)?(?:\d+\s*[.)]\s*)?(?:new\s+)?instruction\s*:"
    r"|^\s*#{2,}\s*(?:input|output|response|instruction|task)\b"
    r"|<\|(?:im_start|im_end|user|assistant|system|endoftext|eot_id|start_header_id)\|>"
    r"|\[/?INST\]|</s>|<noinput>|<nooutput>",
    re.IGNORECASE | re.MULTILINE,
)

# Endings no finished English answer has: a dangling conjunction, article or preposition.
_DANGLING = {
    "and",
    "or",
    "but",
    "the",
    "a",
    "an",
    "of",
    "to",
    "with",
    "for",
    "in",
    "on",
    "that",
    "which",
    "is",
    "are",
    "was",
    "were",
    "by",
    "as",
    "at",
    "from",
    "because",
    "such",
    "including",
    "like",
    "into",
    "their",
    "its",
    "your",
    "our",
    "this",
    "these",
    "whose",
    "than",
}


def _truncated(output: str, mode: str) -> bool:
    text = output.rstrip()
    if text.count("```") % 2 == 1:
        return True  # an opened code block never closed
    last_line = text.rsplit("\n", 1)[-1]
    if text.endswith(("(", "[", "{", "\\")):
        return True
    # "Kind regards," or "Ingredients:" on a line of their own end letters and lists.
    if text.endswith((",", ";", ":", "-")) and len(last_line.split()) >= 3:
        return True
    # Prose only: code legitimately ends in "return a" or "x = the".
    if mode == "code" or last_line[:1].isspace() or any(c in last_line for c in "=(){}[];"):
        return False
    words = text.split()
    last = re.sub(r"\W+$", "", words[-1]) if words else ""
    # Short answers ("a", "In the morning or") are too ambiguous; judge sentences only.
    return len(words) >= 5 and text[-1].isalpha() and last in _DANGLING


def python_source(output: str) -> str:
    """The Python in an output: the first ```python (or bare ```) fenced block, else all of it."""
    blocks = fenced_blocks(output)
    return blocks[0] if blocks else output


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


def _output_pending(record: dict, cfg: FilterConfig) -> bool:
    """Code mode filters problems before solutions exist: their output is not yet generated."""
    if cfg.mode != "code":
        return False
    return "output" not in record or record.get("stage_hint") == "problem"


def _contamination(record: dict, cfg: FilterConfig) -> str | None:
    from stages.decontam import humaneval_index

    index = humaneval_index(cfg.decontam_ngram)
    parts = [record.get(k) for k in ("instruction", "input", "output")]
    return index.match("\n".join(p for p in parts if isinstance(p, str)))


def _check(record: dict, cfg: FilterConfig) -> tuple[str | None, dict]:
    instruction = record.get("instruction")
    if not isinstance(instruction, str):
        return "missing_instruction", {}
    inp = record.get("input") if isinstance(record.get("input"), str) else ""
    output = record.get("output")
    pending = _output_pending(record, cfg)
    out_text = output if isinstance(output, str) else ""

    if cfg.decontaminate:
        task = _contamination(record, cfg)
        if task:
            return "humaneval_contaminated", {"task_id": task}
    if cfg.reject_control_characters and any(
        _CONTROL.search(s) for s in (instruction, inp, out_text)
    ):
        return "control_characters", {}

    # Instruction side.
    text = instruction.strip()
    n = len(text.split())
    if n < cfg.min_words:
        return "too_short", {"words": n}
    if n > cfg.max_words:
        return "too_long", {"words": n}
    if cfg.reject_punctuation_start and text[0] in _PUNCT:
        return "starts_with_punctuation", {}
    if cfg.reject_non_ascii_start and not text[0].isascii():
        return "non_ascii_start", {}
    words = _word_regex(tuple(cfg.blocklist if cfg.mode == "general" else cfg.code_blocklist))
    if words is not None and (m := words.search(text)):
        return "blocklisted_word", {"word": m.group(0).lower()}
    if cfg.mode == "general" and cfg.reject_program_requests and _PROGRAM.match(text):
        return "program_request", {}
    if cfg.reject_unseen_references and (found := _unseen(text, inp, cfg.mode)):
        return "unseen_reference", {"match": found}

    # Output side.
    if pending:
        return None, {}
    if not isinstance(output, str):
        return "invalid_output", {"type": type(output).__name__}
    meta = record.get("meta")
    if (
        cfg.reject_finish_length
        and isinstance(meta, dict)
        and meta.get("finish_reason") == "length"
    ):
        return "truncated_generation", {}
    stripped = output.strip()
    if not stripped:
        return ("empty_output", {}) if cfg.reject_empty_output else (None, {})
    non_answer = _full_regex(tuple(cfg.non_answer_patterns))
    if non_answer is not None and non_answer.fullmatch(stripped.lower()):
        return "non_answer", {}
    # Exact (after stripping): changing only case or spacing is the task for some inputs.
    if cfg.reject_output_copies_input and inp.strip() and stripped == inp.strip():
        return "output_copies_input", {}
    if cfg.restatement_threshold < 1.0:
        from stages.rouge import rouge_l

        if stripped == text or rouge_l(text, stripped) > cfg.restatement_threshold:
            return "output_restates_instruction", {}
    if cfg.reject_template_leaks and (m := _LEAK.search(output)):
        return "template_leak", {"match": m.group(0).strip()}
    if cfg.reject_truncated_outputs and _truncated(output, cfg.mode):
        return "truncated_output", {}
    if (
        cfg.mode == "code"
        and cfg.python_must_parse
        and str(record.get("language", "python")).lower() in ("python", "py", "python3")
        and not _parses(python_source(output))
    ):
        return "python_syntax_error", {}
    return None, {}


def check(record: dict, cfg: FilterConfig) -> str | None:
    """The reason to drop ``record`` (a snake_case constant), or None to keep it. Pure."""
    return _check(record, cfg)[0]


def normalize(record: dict, cfg: FilterConfig) -> dict:
    """A copy with ``input`` made a string and "no input" spellings (<noinput>, N/A, None, -,
    (empty), Not applicable, ...) rewritten to ""."""
    out = dict(record)
    inp = out.get("input")
    if inp is None:
        out["input"] = ""
    elif isinstance(inp, str) and cfg.normalize_no_input:
        out["input"] = normalize_input(inp, cfg.no_input_spellings)
    return out


def run(records: Iterable[dict], cfg: FilterConfig, stats: StageStats) -> Iterator[dict]:
    """Normalize and check each record; yield the kept, drop the rest with their reason."""
    for rec in stats.admit(records):
        rec = normalize(rec, cfg)
        reason, detail = _check(rec, cfg)
        if reason:
            stats.drop(rec, reason, **detail)
        else:
            yield stats.keep(rec)
