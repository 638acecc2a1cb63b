"""Reply parsing: pure text in, fields out. No I/O, no stats.

:func:`parse_tasks` splits a batch reply into tasks tolerantly (misnumbered, merged,
markdown-decorated or truncated items); :func:`extract_code` is the project's one code-fence
extractor (generation, filters, ingest and the evaluation harness all use it);
:func:`is_no_input` is the one "no input" normaliser.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Compared after lower-casing and turning brackets, dots, dashes, quotes and underscores into
# spaces; "<noinput>" -> "noinput", "(empty)" -> "empty", "-" -> "".
NO_INPUT_SPELLINGS = [
    "",
    "noinput",
    "no input",
    "no_input",
    "n/a",
    "na",
    "n a",
    "none",
    "null",
    "nil",
    "empty",
    "blank",
    "nothing",
    "not applicable",
    "no input required",
    "no input needed",
    "no input provided",
    "no additional input",
    "not needed",
    "no input necessary",
]

# A task header: "Task 4", "### Task 4:", "**Task 4.**", "4. " at a line start, "Problem 4".
_HEADER = re.compile(
    r"^[ \t>*#]*(?:task|problem|example)\s*#?\s*(\d+)\s*[:.)\-]*\**[ \t]*(.*)$", re.I | re.M
)
_FIELD = re.compile(
    r"^[ \t>*#\-]*(instructions?|input|output|response|answer)\s*\**\s*[:：]\s*\**[ \t]*",
    re.I | re.M,
)
_CANON = {
    "instruction": "instruction",
    "instructions": "instruction",
    "input": "input",
    "output": "output",
    "response": "output",
    "answer": "output",
}


@dataclass
class Parsed:
    instruction: str | None
    input: str
    output: str | None
    raw: str


def _clean(text: str) -> str:
    text = text.strip()
    # Markdown emphasis the model wraps around whole fields.
    text = re.sub(r"^\*\*\s*|\s*\*\*$", "", text).strip()
    return text


def _split_fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    marks = list(_FIELD.finditer(block))
    if not marks:
        return fields
    head = block[: marks[0].start()].strip()
    if head:
        fields["_head"] = head
    for j, m in enumerate(marks):
        name = _CANON[m.group(1).lower()]
        end = marks[j + 1].start() if j + 1 < len(marks) else len(block)
        value = block[m.end() : end]
        # An "Instruction:" after other fields starts a merged next task: cut there.
        if name == "instruction" and any(k in fields for k in ("instruction", "input", "output")):
            fields["_merged_rest"] = block[m.start() :]
            break
        if name in fields:
            continue
        fields[name] = value
    return fields


def split_blocks(text: str) -> list[str]:
    """Cut a reply into task blocks at "Task N" headers, and at a repeated "Instruction:" when
    the model merged two tasks without a header."""
    heads = list(_HEADER.finditer(text))
    blocks = []
    if not heads:
        blocks = [text]
    else:
        if text[: heads[0].start()].strip():
            blocks.append(text[: heads[0].start()])
        for j, h in enumerate(heads):
            end = heads[j + 1].start() if j + 1 < len(heads) else len(text)
            # Keep the header's trailing text: "Task 4: Rewrite ..." has the instruction inline.
            blocks.append(h.group(2) + "\n" + text[h.end() : end])
    out = []
    for b in blocks:
        while True:
            f = _split_fields(b)
            if "_merged_rest" in f:
                idx = b.find(f["_merged_rest"])
                out.append(b[:idx])
                b = f["_merged_rest"]
                continue
            out.append(b)
            break
    return [b for b in out if b.strip()]


def parse_tasks(text: str, *, need_output: bool = True) -> list[Parsed]:
    """Tolerant parse of a batch reply into tasks (fields may be missing; the caller decides)."""
    items = []
    for block in split_blocks(text):
        f = _split_fields(block)
        instruction = f.get("instruction")
        if instruction is None and f.get("_head"):
            instruction = f["_head"]  # "Task 4: Rewrite the sentence..." with no Instruction: label
        if instruction is None and not f:
            instruction = block if not need_output else None
        inp = _clean(f.get("input", ""))
        items.append(
            Parsed(
                instruction=_clean(instruction) if instruction and _clean(instruction) else None,
                input=normalize_input(inp),
                output=_clean(f["output"])
                if f.get("output") is not None and _clean(f["output"])
                else None,
                raw=block.strip(),
            )
        )
    return items


PYTHON_FENCES = ("python", "py", "python3", "py3", "")
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_NO_INPUT_PUNCT = re.compile(r"[\s<>()\[\]{}.\-_:;\"'`*]+")


def no_input_key(text: str) -> str:
    return _NO_INPUT_PUNCT.sub(" ", text.casefold()).strip()


_NO_INPUT_KEYS = frozenset(no_input_key(s) for s in NO_INPUT_SPELLINGS)


def is_no_input(text: str, spellings: Iterable[str] | None = None) -> bool:
    """True for the spellings models and seed files use for "this task has no input"."""
    keys = _NO_INPUT_KEYS if spellings is None else {no_input_key(s) for s in spellings}
    return no_input_key(text) in keys


def normalize_input(text: str, spellings: Iterable[str] | None = None) -> str:
    """The one "no input" normaliser: "" for any spelling of none, else the text unchanged."""
    return "" if is_no_input(text, spellings) else text


def fenced_blocks(text: str, languages: tuple[str, ...] | None = PYTHON_FENCES) -> list[str]:
    """Bodies of Markdown code fences whose language is in ``languages`` (None: any), a fence
    cut off by the token limit included."""
    return [
        body
        for lang, body in _FENCE.findall(text)
        if languages is None or lang.lower() in languages
    ]


def extract_code(text: str) -> str:
    """Python source from a reply: the first fenced block, else an unterminated fence's body
    (completion prompts open the fence themselves), else the text as it is."""
    m = re.search(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", text, re.S | re.I)
    if m:
        return m.group(1).strip("\n")
    m = re.search(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*)$", text, re.S | re.I)
    if m:
        return m.group(1).strip("\n")
    return text.strip("\n").split("```")[0].rstrip()


