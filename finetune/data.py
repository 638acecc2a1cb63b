"""Training examples from the pipeline's output: read, format, tokenize, split.

Input: ``data.json`` (the Alpaca/CodeAlpaca JSON array of ``instruction``, ``input``, ``output``)
or ``messages.jsonl`` (one ``{"messages": [{"role", "content"}, ...]}`` per line, ending with the
assistant turn that is learned). A malformed record is a :class:`pipeline.records.RecordError`
naming the file, the line and the field.

Formats (``data.prompt_format``):

- ``alpaca``: the prompt is ``pipeline.prompts.alpaca_prompt(instruction, input)`` (the template
  in ``prompts/``, shared with export and evaluation), tokenized with the tokenizer's special
  tokens (BOS where the model uses one); the response follows it, then EOS. For a messages record
  the last user turn is the instruction and the last assistant turn the response.
- ``chat_template``: the tokenizer's own template; the prompt is every turn before the last
  assistant turn rendered with ``add_generation_prompt=True``, the response is what the full
  rendering adds after it, cut at the template's end-of-turn token (EOS).

We tokenize here rather than letting TRL do it, for three defects seen in popular scripts:

- EOS lost to truncation: TRL truncates ``keep_start`` after adding EOS, so a long example loses
  it and the model never learns to stop on long answers. We cut the *response* to fit and then
  append EOS, so every example ends with EOS.
- EOS masked because pad == EOS: we build ``labels`` ourselves (-100 exactly over the prompt); the
  collator pads labels by position with -100, never by token id, so EOS stays learned.
- Prompt masking off by one: the prompt is tokenized alone, as it is at inference, and the
  response tokens are appended, so the mask boundary is exact and training sees the very token
  sequence generation starts from.

An example whose prompt alone leaves no room for one response token and EOS is dropped and
counted (``prompt_too_long``), never silently.

Fill-in-the-middle (``data.fim.rate``, :mod:`finetune.fim`): a seeded share of the code examples
is replaced by FIM rows of its code. Code is a record with ``language`` set (the pipeline's code
records, e.g. ``04_verify.jsonl``; every record with ``data.fim.assume_code``), whose document is
its output (the first fenced block if it has one), and a raw-text chunk whose ``source`` has a
code suffix. A document longer than one row is cut into windows first (by token offsets), so a
FIM row holds a whole window; the rest of the code examples keep their usual form.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pipeline.prompts import alpaca_prompt
from pipeline.records import RecordError, enumerate_jsonl, read_records, require

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
T = TypeVar("T")


@dataclass
class Example:
    """One training example before tokenization: either Alpaca fields or chat messages."""

    instruction: str = ""
    input: str = ""
    output: str = ""
    messages: list[dict[str, str]] | None = None
    source: str = ""  # file:line, for error messages
    language: str = ""  # set on code records: their output is a FIM document


@dataclass
class DataStats:
    total: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    fim: dict[str, int] = field(default_factory=dict)  # FIM rows by mode (psm, spm)

    def as_dict(self) -> dict[str, Any]:
        out = {
            "total": self.total,
            "kept": self.kept,
            "truncated": self.truncated,
            "dropped": dict(self.dropped),
        }
        if self.fim:
            out["fim"] = dict(self.fim)
        return out


# ---------------------------------------------------------------- reading


def _check_messages(messages: Any, path: str, line: int) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise RecordError(path, line, "messages", "expected a non-empty list of {role, content}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RecordError(
                path, line, f"messages[{i}]", "expected an object with role and content"
            )
        if m.get("role") not in ROLES:
            raise RecordError(
                path,
                line,
                f"messages[{i}].role",
                f"expected one of {', '.join(ROLES)}, got {m.get('role')!r}",
            )
        if not isinstance(m.get("content"), str):
            raise RecordError(path, line, f"messages[{i}].content", "missing or not a string")
    if messages[-1]["role"] != "assistant":
        raise RecordError(
            path, line, "messages", "the last message must be the assistant's (it is learned)"
        )
    if not any(m["role"] == "user" for m in messages):
        raise RecordError(path, line, "messages", "no user message")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_examples(path: str | Path) -> list[Example]:
    """Read ``data.json`` (Alpaca array) or ``messages.jsonl``; errors name file, line, field."""
    path = str(path)
    out: list[Example] = []
    for line, rec in enumerate(read_records(path), 1):
        where = f"{path}:{line}"
        language = rec.get("language") or ""
        if not isinstance(language, str):
            raise RecordError(
                path, line, "language", f"expected str, got {type(language).__name__}"
            )
        if "messages" in rec:
            msgs = _check_messages(rec["messages"], path, line)
            out.append(Example(messages=msgs, source=where, language=language))
            continue
        instruction = require(rec, "instruction", str, path, line)
        inp = rec.get("input", "")
        if inp is None:
            inp = ""
        if not isinstance(inp, str):
            raise RecordError(path, line, "input", f"expected str, got {type(inp).__name__}")
        output = require(rec, "output", str, path, line)
        if not instruction.strip():
            raise RecordError(path, line, "instruction", "empty")
        out.append(
            Example(
                instruction=instruction, input=inp, output=output, source=where, language=language
            )
        )
    if not out:
        raise ValueError(f"{path}: no examples")
    return out


def _empty(path: Path) -> bool:
    """A run that kept nothing writes ``[]``; it is no candidate for the latest data."""
    return path.stat().st_size < 16 and path.read_text(encoding="utf-8").strip() in ("", "[]")


def latest_data(outputs_dir: str | Path = "outputs") -> Path:
    """The ``data.json`` of the most recently written run under ``outputs_dir`` that kept records."""
    found = [p for p in Path(outputs_dir).glob("*/data.json") if p.is_file() and not _empty(p)]
    if not found:
        raise FileNotFoundError(
            f"no run with a data.json under {outputs_dir}/: run `make generate` first or pass --data PATH"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


# ---------------------------------------------------------------- formatting


def _fmt(prompt_format: str | dict) -> dict[str, Any]:
    fmt = {"format": prompt_format} if isinstance(prompt_format, str) else dict(prompt_format)
    if fmt.get("format") not in ("alpaca", "chat_template"):
        raise ValueError(f"prompt_format {fmt.get('format')!r}: use 'alpaca' or 'chat_template'")
    return fmt


def _chat_prompt_messages(instruction: str, input: str, system_prompt: str) -> list[dict[str, str]]:
    content = f"{instruction}\n\n{input}" if input and input.strip() else instruction
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": content}]


def format_prompt(instruction: str, input: str, tokenizer: Any, prompt_format: str | dict) -> str:
    """The exact training prompt for an instruction (and optional input), without the response.

    ``prompt_format`` is ``"alpaca"``, ``"chat_template"`` or the dict saved in an adapter's
    ``prompt_format.json`` (``{"format": ..., "system_prompt": ...}``). The alpaca prompt carries
    no special tokens: tokenize it with ``add_special_tokens=True`` (BOS where the model has one),
    as training does. The chat-template prompt already holds its special tokens: tokenize it with
    ``add_special_tokens=False``.
    """
    fmt = _fmt(prompt_format)
    if fmt["format"] == "alpaca":
        return alpaca_prompt(instruction, input)
    msgs = _chat_prompt_messages(instruction, input, fmt.get("system_prompt", ""))
    return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def prompt_add_special_tokens(prompt_format: str | dict) -> bool:
    """Whether the rendered prompt is tokenized with the tokenizer's special tokens (BOS)."""
    return _fmt(prompt_format)["format"] == "alpaca"


def split_example(ex: Example, tokenizer: Any, prompt_format: str | dict) -> tuple[str, str]:
    """(prompt text, response text) for one example in the given format."""
    fmt = _fmt(prompt_format)
    if ex.messages is None:
        if fmt["format"] == "alpaca":
            return format_prompt(ex.instruction, ex.input, tokenizer, fmt), ex.output
        msgs = _chat_prompt_messages(ex.instruction, ex.input, fmt.get("system_prompt", ""))
    else:
        if fmt["format"] == "alpaca":
            user = [m["content"] for m in ex.messages[:-1] if m["role"] == "user"][-1]
            return alpaca_prompt(user, ""), ex.messages[-1]["content"]
        msgs = ex.messages[:-1]
        if fmt.get("system_prompt") and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": fmt["system_prompt"]}, *msgs]
    answer = ex.output if ex.messages is None else ex.messages[-1]["content"]
    prompt = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        [*msgs, {"role": "assistant", "content": answer}], tokenize=False
    )
    if not full.startswith(prompt):
        raise ValueError(
            f"{ex.source}: the chat template renders the conversation differently from its prompt; "
            "use prompt_format: alpaca for this model"
        )
    response = full[len(prompt) :]
    # Cut what the template puts after the end-of-turn token (often a newline): generation stops
    # at EOS, so tokens after it are never produced at inference.
    eos = tokenizer.eos_token
    if eos and eos in response:
        response = response[: response.index(eos)]
    return prompt, response


# ---------------------------------------------------------------- tokenizing


def tokenize_example(
    prompt: str,
    response: str,
    tokenizer: Any,
    *,
    max_length: int,
    train_on_inputs: bool = False,
    add_special_tokens: bool = True,
) -> dict[str, Any] | None:
    """``{"input_ids", "labels", "truncated"}``; None when the prompt leaves no room.

    ``labels`` is -100 over the prompt tokens (unless ``train_on_inputs``) and equal to the
    input ids over the response and the final EOS. The response is cut to fit ``max_length``
    and EOS is appended after the cut, so it is always the last token.
    """
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError(
            "the tokenizer has no EOS token: set one (tokenizer.eos_token) before training"
        )
    prompt_ids = list(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
    # Some tokenizers' post-processors append EOS to every encoding; the prompt must not end there.
    while prompt_ids and prompt_ids[-1] == eos_id and add_special_tokens:
        prompt_ids.pop()
    response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    while response_ids and response_ids[-1] == eos_id:
        response_ids.pop()
    room = max_length - len(prompt_ids) - 1
    if room < 1:
        return None
    truncated = len(response_ids) > room
    response_ids = response_ids[:room] + [eos_id]
    input_ids = prompt_ids + response_ids
    prompt_labels = list(prompt_ids) if train_on_inputs else [IGNORE_INDEX] * len(prompt_ids)
    return {"input_ids": input_ids, "labels": prompt_labels + response_ids, "truncated": truncated}


class FimPlan:
    """Which code examples become fill-in-the-middle rows, and those rows: one seeded RNG draws,
    in data order, whether an example is transformed, its mode and its two cut points."""

    # The parts are tokenized apart after the cut, which can cost a token at each of the cuts
    # and the window's ends; rows are sized with this margin so they rarely need trimming.
    SLACK = 8

    def __init__(self, fim_cfg: Any, tokenizer: Any, max_length: int, *, stream: int = 0):
        from finetune.fim import FimEncoder, resolve_fim_tokens

        self.cfg = fim_cfg
        self.tokenizer = tokenizer
        self.encoder = FimEncoder(tokenizer, resolve_fim_tokens(tokenizer, fim_cfg.overrides()))
        self.max_length = max_length
        self.budget = max_length - self.encoder.overhead - self.SLACK
        if self.budget < 8:
            raise ValueError(
                f"data.max_length={max_length}: too short for fill-in-the-middle rows "
                f"({self.encoder.overhead + self.SLACK} tokens go to sentinels and margin)"
            )
        # Train and validation draw from separate streams so that one's size moves no choice
        # of the other.
        self.rng = random.Random(f"{fim_cfg.seed}:{stream}")

    @property
    def tokens(self) -> Any:
        return self.encoder.tokens

    def takes(self) -> bool:
        return self.cfg.rate > 0 and self.rng.random() < self.cfg.rate

    def is_code_source(self, source: str) -> bool:
        return Path(source).suffix.lower() in {s.lower() for s in self.cfg.code_suffixes}

    def is_code_example(self, ex: Example) -> bool:
        return bool(ex.language) or self.cfg.assume_code

    def row(self, piece: str, stats: DataStats) -> dict[str, Any]:
        from finetune.fim import choose_mode, split_document

        mode = choose_mode(self.rng, self.cfg.spm_rate)
        prefix, middle, suffix = split_document(piece, self.rng)
        row = self.encoder.row(
            prefix,
            middle,
            suffix,
            mode,
            max_length=self.max_length,
            loss_on_context=self.cfg.loss_on_context,
        )
        stats.fim[mode] = stats.fim.get(mode, 0) + 1
        stats.truncated += int(row.pop("truncated"))
        return row

    def pieces(self, document: str) -> list[str]:
        from finetune.fim import windows

        return windows(document, self.tokenizer, self.budget)

    def rows(self, document: str, stats: DataStats) -> list[dict[str, Any]]:
        """FIM rows of a whole document, one per window of it."""
        return [self.row(piece, stats) for piece in self.pieces(document)]


def code_document(ex: Example) -> str:
    """The code of a code record: its answer's first fenced block, else the whole answer."""
    from stages.parsing import fenced_blocks

    answer = ex.output if ex.messages is None else ex.messages[-1]["content"]
    blocks = fenced_blocks(answer, languages=None)
    return blocks[0] if blocks and blocks[0].strip() else answer


def tokenize_examples(
    examples: list[Example],
    tokenizer: Any,
    *,
    prompt_format: str | dict,
    max_length: int,
    train_on_inputs: bool = False,
    stats: DataStats | None = None,
    fim: FimPlan | None = None,
) -> list[dict[str, Any]]:
    """Rows of every example; with ``fim``, a seeded share of the code examples becomes FIM rows
    of their code instead (:class:`FimPlan`)."""
    stats = stats if stats is not None else DataStats()
    special = prompt_add_special_tokens(prompt_format)
    rows = []
    for ex in examples:
        stats.total += 1
        if fim is not None and fim.is_code_example(ex) and fim.takes():
            fim_rows = fim.rows(code_document(ex), stats)
            if fim_rows:
                stats.kept += 1
                rows.extend(fim_rows)
                continue
        prompt, response = split_example(ex, tokenizer, prompt_format)
        row = tokenize_example(
            prompt,
            response,
            tokenizer,
            max_length=max_length,
            train_on_inputs=train_on_inputs,
            add_special_tokens=special,
        )
        if row is None:
            stats.dropped["prompt_too_long"] = stats.dropped.get("prompt_too_long", 0) + 1
            continue
        stats.kept += 1
        stats.truncated += int(row.pop("truncated"))
        rows.append(row)
    return rows


def split_validation(examples: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Seeded shuffle, then the first ``fraction`` (at least one, if fraction > 0) is validation."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = 0 if fraction <= 0 else max(1, round(len(examples) * fraction))
    if n_val >= len(examples):
        n_val = len(examples) - 1
    val = [examples[i] for i in order[:n_val]]
    train = [examples[i] for i in order[n_val:]]
    return train, val


def read_raw_records(path: str | Path) -> list[tuple[str, str]]:
    """``(text, source)`` of each non-blank line of a ``raw_text.jsonl`` (``{"text", "source"}``
    per line, as ``pipeline ingest`` writes it); a line without a string ``text`` is a
    RecordError naming file, line and field (``source`` may be missing: then it is not code)."""
    out = []
    for line, rec in enumerate_jsonl(path):
        text = require(rec, "text", str, str(path), line)
        source = rec.get("source") or ""
        if not isinstance(source, str):
            raise RecordError(path, line, "source", f"expected str, got {type(source).__name__}")
        if text.strip():
            out.append((text, source))
    if not out:
        raise ValueError(f"{path}: no raw text")
    return out


def read_raw_text(path: str | Path) -> list[str]:
    """Texts of a ``raw_text.jsonl`` (see :func:`read_raw_records`)."""
    return [text for text, _ in read_raw_records(path)]


def tokenize_raw_text(texts: list[str], tokenizer: Any, *, max_length: int) -> list[dict[str, Any]]:
    """Continued-pretraining rows: each text's tokens (BOS where the model uses one) and EOS, cut
    into windows of at most ``max_length``, with ``labels`` equal to ``input_ids`` (loss on every
    token). A one-token tail window is widened by one token, since it would hold no target."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError(
            "the tokenizer has no EOS token: set one (tokenizer.eos_token) before training"
        )
    rows = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        while ids and ids[-1] == eos_id:
            ids.pop()
        ids.append(eos_id)
        windows = [ids[i : i + max_length] for i in range(0, len(ids), max_length)]
        if len(windows) > 1 and len(windows[-1]) < 2:
            windows[-1] = ids[-2:]
        rows.extend({"input_ids": w, "labels": list(w)} for w in windows if len(w) >= 2)
    return rows


def tokenize_raw_records(
    records: Iterable[tuple[str, str]],
    tokenizer: Any,
    *,
    max_length: int,
    fim: FimPlan | None = None,
    stats: DataStats | None = None,
) -> list[dict[str, Any]]:
    """:func:`tokenize_raw_text` rows; with ``fim``, a code file's text is cut into windows of
    the FIM budget and a seeded share of the windows become FIM rows, the others plain rows
    (BOS where the model uses one, EOS after the text's last window)."""
    stats = stats if stats is not None else DataStats()
    rows: list[dict[str, Any]] = []
    for text, source in records:
        stats.total += 1
        stats.kept += 1
        if fim is None or fim.cfg.rate <= 0 or not fim.is_code_source(source):
            rows.extend(tokenize_raw_text([text], tokenizer, max_length=max_length))
            continue
        pieces = fim.pieces(text)
        for i, piece in enumerate(pieces):
            if fim.takes():
                rows.append(fim.row(piece, stats))
                continue
            ids = [*fim.encoder.lead, *tokenizer(piece, add_special_tokens=False)["input_ids"]]
            if i == len(pieces) - 1:
                ids.append(tokenizer.eos_token_id)
            ids = ids[:max_length]
            if len(ids) >= 2:
                rows.append({"input_ids": ids, "labels": list(ids)})
    return rows


def build_datasets(data_cfg: Any, tokenizer: Any, path: str | Path | None) -> tuple[Any, Any, dict]:
    """(train Dataset, eval Dataset or None, stats dict) of ``input_ids``/``labels`` rows.

    ``path`` None trains on ``data_cfg.raw_text`` alone, with a seeded validation share of its
    texts held out."""
    from datasets import Dataset

    fim_cfg = getattr(data_cfg, "fim", None)
    use_fim = fim_cfg is not None and fim_cfg.rate > 0

    def plan(stream: int) -> FimPlan | None:
        return FimPlan(fim_cfg, tokenizer, data_cfg.max_length, stream=stream) if use_fim else None

    train_plan, val_plan = plan(0), plan(1)
    if path is None:
        if not getattr(data_cfg, "raw_text", None):
            raise ValueError("no training data: give --data PATH, data.path or data.raw_text")
        return _raw_only(data_cfg, tokenizer, train_plan, val_plan)
    examples = read_examples(path)
    if data_cfg.max_examples:
        random.Random(data_cfg.seed).shuffle(examples)
        examples = examples[: data_cfg.max_examples]
    if data_cfg.validation_path:
        train_ex, val_ex = examples, read_examples(data_cfg.validation_path)
    else:
        train_ex, val_ex = split_validation(examples, data_cfg.validation_fraction, data_cfg.seed)
    fmt = prompt_format_dict(data_cfg)
    kw = {
        "prompt_format": fmt,
        "max_length": data_cfg.max_length,
        "train_on_inputs": data_cfg.train_on_inputs,
    }
    train_stats, val_stats = DataStats(), DataStats()
    train_rows = tokenize_examples(train_ex, tokenizer, stats=train_stats, fim=train_plan, **kw)
    val_rows = tokenize_examples(val_ex, tokenizer, stats=val_stats, fim=val_plan, **kw)
    if not train_rows:
        raise ValueError(
            f"{path}: no training example fits data.max_length={data_cfg.max_length} "
            f"(dropped: {train_stats.dropped})"
        )
    stats = {"path": str(path), "train": train_stats.as_dict(), "validation": val_stats.as_dict()}
    if getattr(data_cfg, "raw_text", None):
        # Raw chunks join the training rows only: validation stays conversations, as held out.
        records = read_raw_records(data_cfg.raw_text)
        raw_stats = DataStats()
        raw_rows = tokenize_raw_records(
            records, tokenizer, max_length=data_cfg.max_length, fim=train_plan, stats=raw_stats
        )
        train_rows = train_rows + raw_rows
        stats["raw_text"] = {
            "path": str(data_cfg.raw_text),
            "texts": len(records),
            "rows": len(raw_rows),
            **({"fim": raw_stats.fim} if raw_stats.fim else {}),
        }
    if train_plan is not None:
        stats["fim"] = train_plan.tokens.as_dict()
    train_ds = Dataset.from_list(train_rows)
    val_ds = Dataset.from_list(val_rows) if val_rows else None
    return train_ds, val_ds, stats


def _raw_only(
    data_cfg: Any, tokenizer: Any, train_plan: FimPlan | None, val_plan: FimPlan | None
) -> tuple[Any, Any, dict]:
    from datasets import Dataset

    records = read_raw_records(data_cfg.raw_text)
    train_rec, val_rec = split_validation(records, data_cfg.validation_fraction, data_cfg.seed)
    train_stats, val_stats = DataStats(), DataStats()
    kw = {"max_length": data_cfg.max_length}
    train_rows = tokenize_raw_records(train_rec, tokenizer, fim=train_plan, stats=train_stats, **kw)
    val_rows = tokenize_raw_records(val_rec, tokenizer, fim=val_plan, stats=val_stats, **kw)
    if not train_rows:
        raise ValueError(f"{data_cfg.raw_text}: no training rows")
    stats = {
        "path": None,
        "train": train_stats.as_dict(),
        "validation": val_stats.as_dict(),
        "raw_text": {
            "path": str(data_cfg.raw_text),
            "texts": len(records),
            "rows": len(train_rows),
        },
    }
    if train_plan is not None:
        stats["fim"] = train_plan.tokens.as_dict()
    return Dataset.from_list(train_rows), Dataset.from_list(val_rows) if val_rows else None, stats


def prompt_format_dict(data_cfg: Any) -> dict[str, Any]:
    """What an adapter's ``prompt_format.json`` records about the prompt (base model added later)."""
    fmt: dict[str, Any] = {"format": data_cfg.prompt_format}
    if data_cfg.prompt_format == "alpaca":
        fmt["templates"] = ["prompts/alpaca_input.txt", "prompts/alpaca_no_input.txt"]
    else:
        fmt["system_prompt"] = data_cfg.system_prompt
    return fmt
