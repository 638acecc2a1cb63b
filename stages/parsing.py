"""Reply parsing: pure text in, fields out. No I/O, no stats.

:func:`parse_tasks` splits a batch reply into tasks tolerantly (misnumbered, merged,
markdown-decorated or truncated items, completion-style or chat-style with preambles, headings,
numbered lists, bold labels, fences and closing remarks); :func:`extract_code` is the project's
one code-fence extractor (generation, filters, ingest and the evaluation harness all use it),
with :func:`extract_tests` and :func:`extract_solution` on top of it for the two code replies;
:func:`is_no_input` is the one "no input" normaliser.
"""

from __future__ import annotations

import ast
import re
import sys
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

# -- batch replies -> tasks ---------------------------------------------------------------------
#
# Two kinds of reply reach the parser. A completion-style reply (SmolLM2, or any model given a
# few-shot prompt that ends inside "Task N\nInstruction:") continues the labelled format, often
# misnumbered, merged or truncated. A chat-style reply (Qwen2.5-Coder and other instruct models)
# wraps the same content in chat habits: a preamble ("Sure! Below are three new problems:"),
# markdown headings ("### Problem 1: Title"), numbered lists ("1. **Title**: text"), bold
# labels, fenced code, and closing chatter ("Let me know if ..."). The rules below remove each
# habit by name, so that neither a preamble nor a bare code fence ever becomes an instruction.

# A task header: "Task 4", "### Task 4:", "**Task 4.**", "Problem 4: Title", and a numbered
# markdown heading or bold line ("### 2. Title", "**2. Title**"). A number followed by running
# lowercase text is a sentence ("Problem 1 and Problem 2 are provided to ..."), not a header.
_HEADER = re.compile(
    r"^[ \t>*#]*(?:task|problem|example|exercise)\s*#?\s*(\d+)(?![ \t]+(?-i:[a-z]))"
    r"\s*[:.)\-]*\**[ \t]*(.*)$"
    r"|^[ \t]*(?:#{1,6}[ \t]*|\*\*[ \t]*)(\d{1,3})[.):][ \t]*\**[ \t]*(.*)$",
    re.I | re.M,
)
_FIELD = re.compile(
    r"^[ \t>*#\-]*(?:\d{1,3}[.)][ \t]*)?\**[ \t]*"
    r"(instructions?|problem statement|problem description|input|expected output"
    r"|output|response|answer)\s*\**\s*[:：]\s*\**[ \t]*",
    re.I | re.M,
)
_CANON = {
    "instruction": "instruction",
    "instructions": "instruction",
    "problem statement": "instruction",
    "problem description": "instruction",
    "input": "input",
    "output": "output",
    "expected output": "output",
    "response": "output",
    "answer": "output",
}
# Free-form items, used only when a reply has neither task headers nor field labels: a
# top-level numbered item, a markdown heading, or a line that is all bold.
_LIST_ITEM = re.compile(r"^[ ]{0,1}(\d{1,3})[.)][ \t]+(.*)$", re.M)
_MD_HEADING = re.compile(r"^[ \t]*(#{1,6})[ \t]+(.*)$", re.M)
_BOLD_LINE = re.compile(r"^[ \t]*\*\*([^*\n]+)\*\*[ \t]*:?[ \t]*$", re.M)
# A line that only carries a list number or a title, left at the end of one task when the next
# task's "Instruction:" was split off it ("2." / "**Task 2**" / "### Second task").
_TRAILING_TITLE = re.compile(r"\n[ \t]*(?:\d{1,3}[.)]|#{1,6}[^\n]*|\*\*[^*\n]+\*\*:?)[ \t]*$")
_FENCE_BLOCK = re.compile(r"```[^\n]*\n.*?(?:```|\Z)", re.S)
_SEPARATOR = re.compile(r"^[ \t]*(?:-{3,}|\*{3,}|_{3,}|={3,})[ \t]*$", re.M)

# The chat habits, as the first words of a paragraph. A preamble introduces the list; a closing
# remark comments on it. Neither is a task.
_PREAMBLE = re.compile(
    r"^\W*(?:sure|certainly|of course|absolutely|okay|ok|great|alright|here(?:'s| is| are)"
    r"|below (?:is|are)|i(?:'ve| have) (?:written|created|come up)|i(?:'d| would) be happy"
    r"|as requested|these are|the following (?:are|is))\b",
    re.I,
)
_CLOSING = re.compile(
    r"^\W*(?:let me know|i hope|hope (?:this|these)|feel free|happy coding|enjoy|good luck"
    r"|if you (?:need|have|want|would)|these (?:new )?(?:tasks|problems|functions|examples|exercises)"
    r"|each (?:of these|task|problem|function)|this (?:set|list|collection)|note:|remember)\b",
    re.I,
)


# A fence that names its language holds code: "# Problem 2" in it is a comment, "input: str"
# an annotation. A bare ``` is not masked: small models open one around prose.
_CODE_FENCE = re.compile(
    r"^[ \t]*```[ \t]*[A-Za-z][\w+-]*[^\n]*\n.*?(?:^[ \t]*```|\Z)", re.S | re.M
)
# "Instruction: Reverse it. Input: abc Output: cba" on one line: a label after a sentence end.
_INLINE_LABEL = re.compile(r"(?<=[.?!\"')\]])[ \t]+(?=(?:Input|Output)[ \t]*:[ \t])")


def _code_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _CODE_FENCE.finditer(text)]


def _outside_code(pattern: re.Pattern, text: str) -> list[re.Match]:
    spans = _code_spans(text)
    return [m for m in pattern.finditer(text) if not any(a <= m.start() < b for a, b in spans)]


def _split_inline_labels(text: str) -> str:
    """Put an "Input:" or "Output:" written mid-line after a sentence on its own line (outside
    code)."""
    out, last = [], 0
    for a, b in _code_spans(text):
        out.append(_INLINE_LABEL.sub("\n", text[last:a]))
        out.append(text[a:b])
        last = b
    out.append(_INLINE_LABEL.sub("\n", text[last:]))
    return "".join(out)


def _is_title(text: str) -> bool:
    """A heading such as "Count Islands in a Grid" or "Classification": a label, not an
    instruction (short, no closing punctuation, mostly capitalised words)."""
    words = re.findall(r"[A-Za-z][\w'-]*", text)
    if not words or len(words) > 12 or text.rstrip().endswith((".", "?", "!")):
        return False
    small = {"a", "an", "the", "of", "in", "on", "for", "to", "and", "or", "with", "from", "by"}
    caps = sum(w[0].isupper() for w in words if w.lower() not in small)
    big = sum(1 for w in words if w.lower() not in small)
    return big > 0 and caps / big >= 0.6


# A function signature in backticks: "`count_paths(grid)`".
_SIGNATURE = re.compile(r"`\s*(?:def\s+)?([A-Za-z_]\w*\s*\([^`]*\))\s*`")
_IMPERATIVE = re.compile(
    r"^\W*(?:write|create|implement|define|build|compute|return|given|make|design|generate"
    r"|convert|find|count|check|parse|sort|classify|rewrite|summari[sz]e|explain|list|name)\b",
    re.I,
)


@dataclass
class Parsed:
    instruction: str | None
    input: str
    output: str | None
    raw: str


def is_chatter(paragraph: str) -> bool:
    """True for a preamble or a closing remark of a chat reply (not a task)."""
    p = _strip_markdown(paragraph).strip()
    if not p:
        return True
    if _PREAMBLE.match(p) or _CLOSING.match(p):
        return True
    # "Three new problems:" / "New tasks:" and other one-line introductions of a list, but not
    # a task that introduces its own list ("Write a function `f(xs)` that returns:").
    return (
        "\n" not in p
        and p.endswith(":")
        and len(p.split()) <= 12
        and not _FIELD.match(paragraph)
        and not _SIGNATURE.search(p)
        and not _IMPERATIVE.match(p)
    )


def _strip_markdown(text: str) -> str:
    # Bold as ** only: "__" is as likely to be part of `__init__`.
    text = text.replace("**", "")
    text = re.sub(r"^[ \t]*#{1,6}[ \t]+", "", text, flags=re.M)
    return text


def _clean(text: str) -> str:
    text = _SEPARATOR.sub("", text).strip()
    # Markdown emphasis the model wraps around whole fields.
    text = re.sub(r"^\*\*\s*|\s*\*\*$", "", text).strip()
    return text


def _split_fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    marks = _outside_code(_FIELD, block)
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


def _free_form_marks(text: str) -> list[re.Match]:
    """Item boundaries of a reply without headers or labels: whichever kind of marker
    (numbered item, markdown heading, bold line) comes first in it."""
    kinds = [_outside_code(r, text) for r in (_LIST_ITEM, _MD_HEADING, _BOLD_LINE)]
    kinds = [k for k in kinds if k]
    if not kinds:
        return []
    return min(kinds, key=lambda k: k[0].start())


def _head_and_body(m: re.Match, text: str, end: int) -> str:
    """A block: the header's own text (its title or inline instruction), then what follows."""
    if m.re is _HEADER:
        title = m.group(2) if m.group(1) is not None else m.group(4)
    elif m.re is _BOLD_LINE:
        title = m.group(1)
    else:
        title = m.group(2)
    return (title or "") + "\n" + text[m.end() : end]


def _task_headers(text: str) -> list[re.Match]:
    """The "Task N" headers outside code, a header repeating the one before it left out
    ("# Problem 4: Title" then "Problem 4" on the next lines is one task, not two)."""
    heads: list[re.Match] = []
    for m in _outside_code(_HEADER, text):
        if heads:
            prev = heads[-1]
            num = m.group(1) or m.group(3)
            between = text[prev.end() : m.start()]
            if num == (prev.group(1) or prev.group(3)) and not _outside_code(_FIELD, between):
                continue
        heads.append(m)
    return heads


def _labels_follow(text: str, m: re.Match) -> bool:
    """A numbered item whose own line, or the next one, is an "Input:"/"Output:" label, or
    whose line is an "Instruction:" label."""
    if _FIELD.match(m.group(2)):
        return True
    nxt = text[m.end() :].lstrip("\n").split("\n", 1)[0]
    f = _FIELD.match(nxt)
    return bool(f) and _CANON[f.group(1).lower()] in ("input", "output")


def _paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def _drop_preamble(text: str) -> str:
    """Leading chatter paragraphs of a reply without task headers, dropped."""
    paras = _paragraphs(text)
    while paras and is_chatter(paras[0]) and not _FIELD.search(paras[0]):
        paras.pop(0)
    return "\n\n".join(paras)


_STRONG_CLOSING = re.compile(
    r"\n[ \t]*\W*(?:let me know|i hope|hope (?:this|these) help|feel free|happy coding)\b[^\n]*$",
    re.I,
)


def _drop_closing(block: str) -> str:
    """A closing remark at the end of the last task ("Let me know if ..."), dropped."""
    block = block.rstrip()
    while m := _STRONG_CLOSING.search(block):
        block = block[: m.start()].rstrip()
    parts = re.split(r"(\n[ \t]*\n)", block)  # text, separator, text, ...
    while len(parts) >= 3 and is_chatter(parts[-1]) and not _FIELD.search(parts[-1]):
        parts = parts[:-2]
    return "".join(parts)


def split_blocks(text: str) -> list[str]:
    """Cut a reply into task blocks at "Task N" headers (and numbered headings), at a repeated
    "Instruction:" when the model merged two tasks without a header, and, in a reply with
    neither, at its numbered items, headings or bold title lines. A preamble before the first
    task and a closing remark after the last are left out."""
    text = _split_inline_labels(text.replace("\r\n", "\n"))
    has_fields = bool(_outside_code(_FIELD, text))
    heads = _task_headers(text)
    if not heads and has_fields:
        # "4. Rewrite the feedback...\nInput: ...\nOutput: ...": numbered items that carry the
        # instruction themselves, each followed by its labelled fields.
        heads = [m for m in _outside_code(_LIST_ITEM, text) if _labels_follow(text, m)]
    if not heads and not has_fields:
        heads = _free_form_marks(text)
        # "Write `f(x)` so that:\n1. ...\n2. ...": a list inside one task, not a list of tasks.
        if heads and not all(is_chatter(p) for p in _paragraphs(text[: heads[0].start()])):
            heads = []
    blocks = []
    if not heads:
        blocks = [text]
    else:
        pre = text[: heads[0].start()]
        # Before the first header: a completion's continuation holds fields; a chat preamble
        # does not.
        if _outside_code(_FIELD, pre):
            blocks.append(pre)
        for j, h in enumerate(heads):
            end = heads[j + 1].start() if j + 1 < len(heads) else len(text)
            # Keep the header's trailing text: "Task 4: Rewrite ..." has the instruction inline.
            blocks.append(_head_and_body(h, text, end))
    out = []
    for b in blocks:
        while True:
            f = _split_fields(b)
            if "_merged_rest" in f:
                idx = b.find(f["_merged_rest"])
                first, rest = b[:idx], f["_merged_rest"]
                # "1. **Instruction:** ... 2. **Instruction:** ...": the "2." belongs to the
                # next task, not to the end of this one's output.
                t = _TRAILING_TITLE.search(first.rstrip())
                if t:
                    first = first.rstrip()[: t.start()]
                out.append(first)
                b = rest
                continue
            out.append(b)
            break
    if out:
        if not heads:
            out[0] = _drop_preamble(out[0])
        out[-1] = _drop_closing(out[-1])
    return [b for b in out if b.strip() and not _SEPARATOR.fullmatch(b.strip())]


def _prose(text: str) -> str:
    """A block's text as one paragraph of prose: code fences, markdown and bullets removed,
    lines joined."""
    text = _FENCE_BLOCK.sub("\n\n", text)
    text = _strip_markdown(_SEPARATOR.sub("", text))
    out = ""
    for line in text.splitlines():
        item = re.match(r"^[ \t]*(?:[-*•+]|\d{1,3}[.)])[ \t]+", line)
        line = line[item.end() :].strip() if item else line.strip()
        if not line:
            continue
        # List items that are not sentences ("- the sum when non-empty") stay apart.
        glue = "; " if item and out and not out.endswith((".", "!", "?", ":", ";", ",")) else " "
        out = f"{out}{glue}{line}" if out else line
    return re.sub(r"\s+", " ", out).strip()


def _call(sig: re.Match) -> str:
    """``name(`` of a matched signature: how a text that already names the function says so."""
    return sig.group(1).split("(")[0].strip() + "("


def _compose(head: str, body: str) -> str | None:
    """The instruction of a task with no "Instruction:" label, from its first line and the rest,
    as one paragraph. A first line that is a label (a title such as "Count Islands in a Grid",
    an introduction such as "New problems:", a bold label before the text) is dropped; one that
    names only a function signature ("**Function `f(x)`:**") becomes "Write a Python function
    `f(x)`." in front of the text, so the problem still names its function."""
    # "**Count Paths**: Write a function ..." / "**`f(x)`** - Return ...": a bold label in front
    # of the text on the same line.
    bold = re.match(r"^[ \t]*\*\*([^*\n]+?)\*\*[ \t]*[:\-–—]?[ \t]*(\S.*)$", head)
    if bold:
        label_sig = _SIGNATURE.search(bold.group(1))
        head = bold.group(2)
        if label_sig and _call(label_sig) not in head + body:
            head = f"Write a Python function `{label_sig.group(1)}`. {head}"
    first = _prose(head)
    bare = re.sub(
        r"\b(?:python|function|method|class|problem|task)\b",
        "",
        _SIGNATURE.sub("", first),
        flags=re.I,
    )
    # A label: a title, a one-line introduction, or only a signature ("Function `f(x)`:").
    label = _is_title(first.rstrip(":")) or is_chatter(first) or not re.search(r"\w", bare)
    paras = _paragraphs(body)
    if paras and is_chatter(paras[0]):
        paras = paras[1:]
    text = _prose("\n\n".join(paras))
    if first and not label:
        text = f"{first} {text}".strip()
    # "... Example:" left dangling where a fence was cut out.
    if text.endswith(":"):
        cut = max(text.rfind(". "), text.rfind("? "), text.rfind("! "))
        text = text[: cut + 1] if cut > 0 else text
    title = first.rstrip(":").strip()
    if not text or text == title:
        # A heading alone ("### Problem 1: Count Islands" over a code block) says too little.
        return None if (not title or is_chatter(head) or _is_title(title)) else title
    sig = _SIGNATURE.search(title) if label else None
    if sig and _call(sig) not in text:
        return f"Write a Python function `{sig.group(1)}`. {text}"
    return text


def _instruction_and_code(instruction: str) -> tuple[str, str]:
    """(prose, code): an instruction field cut at its first code fence."""
    m = _FENCE_BLOCK.search(instruction)
    if not m:
        return instruction, ""
    return instruction[: m.start()], instruction[m.start() :]


def _head_outranks_label(head: str | None, labelled: str) -> bool:
    """True when a header's own text is the task and the "Instruction:" under it is not: the
    header is a sentence (no title, no chatter) and the labelled text does not read as a
    request (no imperative opening, no question)."""
    if not head or _is_title(head) or is_chatter(head) or len(head.split()) < 4:
        return False
    first = _prose(labelled.strip().split("\n", 1)[0])
    return not (_IMPERATIVE.match(first) or first.endswith("?") or first == _prose(head))


def parse_tasks(text: str, *, need_output: bool = True) -> list[Parsed]:
    """Tolerant parse of a batch reply into tasks (fields may be missing; the caller decides).

    ``need_output=True`` is general mode (instruction, input, output); ``False`` is code mode,
    where an instruction is prose only (a code fence in it is the model's solution, dropped)."""
    items = []
    for block in split_blocks(text):
        f = _split_fields(block)
        instruction = f.get("instruction")
        inp = f.get("input", "")
        head = f.get("_head")
        if instruction is None and f:
            # "Task 4: Rewrite the sentence..." with no Instruction: label.
            instruction = head
        elif instruction is not None and _head_outranks_label(head, instruction):
            # "Task 5: Convert each date to ISO 8601.\nInstruction: 5 March 2024 ...": the task
            # is in the header and the label holds its material (general mode: the input).
            if need_output and not normalize_input(_clean(inp)):
                inp = instruction
            instruction = head
        if not f:
            # No labels: the task is the block's prose; its code (a solution the model wrote
            # instead of a problem) is never the instruction.
            prose = _FENCE_BLOCK.sub("\n\n", block).strip("\n")
            head, _, body = prose.partition("\n")
            instruction = _compose(head, body)
        if instruction is not None:
            instruction, code = _instruction_and_code(instruction)
            if code and need_output and not inp.strip():
                inp = code  # "Explain what this code does:\n```python ...```" without Input:
            instruction = _clean(instruction)
            if instruction and not f.get("instruction"):
                # Taken from a header, not a label: a preamble or a bare title is no task.
                if is_chatter(instruction) or _is_title(instruction):
                    instruction = None
        items.append(
            Parsed(
                instruction=instruction or None,
                input=normalize_input(_clean(inp)),
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


# -- tests and solutions -----------------------------------------------------------------------


def _dropped_lines(node: ast.stmt) -> range:
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return range(first - 1, node.end_lineno or node.lineno)


def _imports_one_of(node: ast.stmt, names: set[str]) -> bool:
    """``from solution import f`` (any module outside the standard library): the sandbox has
    no such module; the candidate is already defined in the same namespace."""
    if isinstance(node, ast.ImportFrom):
        top = (node.module or "").split(".")[0]
        return top not in sys.stdlib_module_names and any(
            a.name in names or a.name == "*" for a in node.names
        )
    return False


def extract_tests(text: str, under_test: str | Iterable[str] | None = None) -> str:
    """A unit-test reply's code without the code under test: chat models often paste their
    own ``def f(...)`` (or ``class C``) above the asserts, and that copy would shadow the
    candidate (the verify stage rejects such tests as ``tests_call_nothing``), so top-level
    definitions of the names in ``under_test`` (a name, or several: the function, or a class
    and its methods) and imports of them from a non-standard module are dropped."""
    code = extract_code(text)
    names = {under_test} if isinstance(under_test, str) else set(under_test or ())
    names.discard("")
    if not names:
        return code
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return code
    drop: set[int] = set()
    for node in tree.body:
        own = (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and node.name in names
        )
        if own or _imports_one_of(node, names):
            drop.update(_dropped_lines(node))
    if not drop:
        return code
    if all(i in drop for n in tree.body for i in _dropped_lines(n)):
        return ""  # nothing but the model's own copy: no tests (comments alone are none)
    lines = [x for i, x in enumerate(code.splitlines()) if i not in drop]
    return "\n".join(lines).strip("\n")


# A top-level line that starts a demonstration after the definitions: prints, asserts, a main
# guard, or a comment announcing tests, examples or usage.
_DEMO = re.compile(
    r"^(?:print\s*\(|assert\b|if\s+__name__\s*==|#.*\b(?:tests?|test cases?|examples?|usage|demo|output)\b)",
    re.I,
)
_TOP_DEF = re.compile(r"^(?:async\s+def|def|class|@)\b|^@")


def extract_solution(text: str) -> str:
    """A solution reply's code without the demonstration chat models append after the function
    (``# Test cases`` / ``print(f(...))`` / ``if __name__ == "__main__":``): it is not part of
    the solution, it prints into the verification run, and a syntax error in it (a missing
    parenthesis in a ``print``) fails a correct function. Line-based, so such a tail is cut even
    where the whole does not parse."""
    code = extract_code(text)
    lines = code.splitlines()
    last_def = max((i for i, x in enumerate(lines) if _TOP_DEF.match(x)), default=None)
    if last_def is None:
        return code
    defined = set(
        re.findall(r"^(?:async\s+)?def\s+([A-Za-z_]\w*)|^class\s+([A-Za-z_]\w*)", code, re.M)
    )
    names = {a or b for a, b in defined}
    calls = (
        re.compile(r"^(?:[A-Za-z_]\w*\s*=\s*)?(?:" + "|".join(map(re.escape, names)) + r")\s*\(")
        if names
        else None
    )
    for i in range(last_def + 1, len(lines)):
        line = lines[i]
        if not line.strip() or line[0] in " \t)]}":
            continue  # inside the last definition (or closing its brackets)
        if _DEMO.match(line) or (calls and calls.match(line)):
            return "\n".join(lines[:i]).rstrip()
    return code
