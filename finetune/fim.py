"""Fill-in-the-middle (FIM) training examples and prompts, as in "Efficient Training of Language
Models to Fill in the Middle" (Bavarian et al., 2022) and Code Llama.

A code document is cut at two points drawn uniformly over its characters (Python ``str``
indices, so a cut never falls inside a multi-byte UTF-8 character) into prefix, middle and
suffix, and reordered around the model's own sentinel tokens:

- PSM: ``[BOS] PRE prefix SUF suffix MID middle END``
- SPM: ``[BOS] PRE SUF suffix MID prefix middle END``

SPM is the paper's Appendix D variant that Code Llama and StarCoder train: the prefix comes
straight before the middle, so the middle is a plain continuation of it, and both modes share
the sentinels. ``END`` is the tokenizer's EOS, or the family's own end-of-infill token where it
has one (Code Llama's ``▁<EOT>``). The labels are -100 everywhere but the middle and ``END``
unless ``data.fim.loss_on_context``.

Each part is tokenized on its own, exactly as a prompt is at inference (where the middle is what
the model generates after the last context token), so the label boundary is exact. Tokenizers
that put SentencePiece's dummy space before every encoding (Llama's) get it only before the
prefix, as Code Llama's own infilling prompt does; the suffix and the middle, which continue
text, are encoded without it.

Sentinels are looked up in the tokenizer (:data:`FAMILIES`) unless ``data.fim.prefix_token``,
``suffix_token`` and ``middle_token`` name them; each must be one token of the vocabulary. A
tokenizer with none is an error naming those fields.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100
MODES = ("psm", "spm")

# (family, prefix, suffix, middle, end or None for EOS)
FAMILIES: tuple[tuple[str, str, str, str, str | None], ...] = (
    ("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", None),
    ("qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", None),
    ("codellama", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"),
    ("deepseek", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", None),
)

# A character that no merge joins to its neighbours (Code Llama uses the same trick): text
# encoded after it carries no dummy space, and the sentinel's own ids are cut off again.
_SENTINEL = "☺"


@dataclass(frozen=True)
class FimTokens:
    """The four token ids of a FIM layout and their names (for ``prompt_format.json``)."""

    prefix: int
    suffix: int
    middle: int
    end: int
    names: tuple[str, str, str, str]
    family: str

    def as_dict(self) -> dict[str, str]:
        return dict(zip(("prefix", "suffix", "middle", "end"), self.names, strict=True)) | {
            "family": self.family
        }


def single_token_id(tokenizer: Any, text: str) -> int | None:
    """The id of ``text`` when it is exactly one token of the vocabulary, else None."""
    vocab = tokenizer.get_vocab()
    if text in vocab:
        return int(vocab[text])
    return None


DATA_FIELDS = {k: f"data.fim.{k}_token" for k in ("prefix", "suffix", "middle", "end")}
DATA_FIX = (
    "set data.fim.prefix_token, data.fim.suffix_token and data.fim.middle_token to single "
    "tokens of its vocabulary, or data.fim.rate=0"
)


def resolve_fim_tokens(
    tokenizer: Any,
    override: dict[str, str | None] | None = None,
    *,
    fields: dict[str, str] | None = None,
    fix: str = DATA_FIX,
) -> FimTokens:
    """The FIM sentinels: ``override`` (``prefix``/``suffix``/``middle``[/``end``] token names),
    else the first family of :data:`FAMILIES` the tokenizer holds. Errors name the setting
    (``fields``: the config field or flag of each sentinel) and say how to fix it (``fix``)."""
    fields = fields or DATA_FIELDS
    override = {k: v for k, v in (override or {}).items() if v}
    if override:
        missing = [k for k in ("prefix", "suffix", "middle") if k not in override]
        if missing:
            raise ValueError(
                f"{fields[missing[0]]}: not set; name the prefix, suffix and middle sentinels "
                "all three, or none to use the tokenizer's own"
            )
        names = (override["prefix"], override["suffix"], override["middle"], override.get("end"))
        family = "custom"
    else:
        found = next(
            (f for f in FAMILIES if all(single_token_id(tokenizer, t) is not None for t in f[1:4])),
            None,
        )
        if found is None:
            looked = "; ".join(" ".join(f[1:4]) for f in FAMILIES)
            raise ValueError(
                f"{fields['prefix']}: the tokenizer has no fill-in-the-middle tokens (looked for "
                f"{looked}); {fix}"
            )
        family, pre, suf, mid, end = found
        if end is not None and single_token_id(tokenizer, end) is None:
            end = None
        names = (pre, suf, mid, end)
    end_name = names[3] or tokenizer.eos_token
    if end_name is None:
        raise ValueError(f"{fields['end']}: the tokenizer has no EOS token; name an end token")
    ids = []
    for key, name in zip(
        ("prefix", "suffix", "middle", "end"), (*names[:3], end_name), strict=True
    ):
        tid = single_token_id(tokenizer, name)
        if tid is None:
            raise ValueError(
                f"{fields[key]}={name!r}: not a single token of the tokenizer's vocabulary "
                "(a new token would need new embedding rows; name one the model has)"
            )
        ids.append(tid)
    if len(set(ids[:3])) < 3:
        raise ValueError(
            f"{fields['prefix']}: the prefix, suffix and middle sentinels must differ, got "
            f"{names[:3]}"
        )
    return FimTokens(*ids, names=(*names[:3], end_name), family=family)


def split_document(text: str, rng: random.Random) -> tuple[str, str, str]:
    """(prefix, middle, suffix): two cut points drawn uniformly from ``0..len(text)``."""
    a, b = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    return text[:a], text[a:b], text[b:]


def _adds_dummy_prefix(tokenizer: Any) -> bool:
    ids = tokenizer("a", add_special_tokens=False)["input_ids"]
    toks = tokenizer.convert_ids_to_tokens(ids) if ids else []
    return bool(toks) and str(toks[0]).startswith("▁")


def lead_ids(tokenizer: Any) -> list[int]:
    """The special ids the tokenizer puts before every text (BOS where the model uses one)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return list(full[:i])
    return []


class FimEncoder:
    """Builds FIM rows and prompts for one tokenizer and one set of sentinels."""

    def __init__(self, tokenizer: Any, tokens: FimTokens):
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.lead = lead_ids(tokenizer)
        self.dummy = _adds_dummy_prefix(tokenizer)
        self._sentinel = self._encode(_SENTINEL, continuation=False) if self.dummy else []

    @property
    def overhead(self) -> int:
        """Tokens a FIM row holds besides the three parts."""
        return len(self.lead) + 4

    def _encode(self, text: str, *, continuation: bool) -> list[int]:
        if not text:
            return []
        if continuation and self.dummy:
            ids = list(self.tokenizer(_SENTINEL + text, add_special_tokens=False)["input_ids"])
            n = len(self._sentinel)
            if ids[:n] == self._sentinel:
                return ids[n:]
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def parts(self, prefix: str, middle: str, suffix: str) -> tuple[list[int], ...]:
        return (
            self._encode(prefix, continuation=False),
            self._encode(middle, continuation=True),
            self._encode(suffix, continuation=True),
        )

    def decode_middle(self, ids: Sequence[int]) -> str:
        """Generated middle ids as text. A SentencePiece decoder drops the space a text starts
        with (taking it for the dummy prefix), which would unindent a middle's first line; it is
        decoded after the sentinel character and that is cut off again, as Code Llama does."""
        ids = [i for i in ids if i not in (self.tokens.end, self.tokenizer.eos_token_id)]
        if self.dummy:
            text = self.tokenizer.decode([*self._sentinel, *ids], skip_special_tokens=True)
            i = text.find(_SENTINEL)
            if i != -1:
                return text[i + 1 :]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def prompt_ids(self, prefix: str, suffix: str, mode: str = "psm") -> list[int]:
        """The ids an infilling prompt ends with; the model generates the middle, then END."""
        p, _, s = self.parts(prefix, "", suffix)
        return self._context(p, s, mode)

    def _context(self, p: list[int], s: list[int], mode: str) -> list[int]:
        t = self.tokens
        if mode == "psm":
            return [*self.lead, t.prefix, *p, t.suffix, *s, t.middle]
        if mode == "spm":
            return [*self.lead, t.prefix, t.suffix, *s, t.middle, *p]
        raise ValueError(f"FIM mode {mode!r}: use one of {', '.join(MODES)}")

    def row(
        self,
        prefix: str,
        middle: str,
        suffix: str,
        mode: str,
        *,
        max_length: int,
        loss_on_context: bool = False,
    ) -> dict[str, Any]:
        """``{"input_ids", "labels", "truncated"}`` of one FIM example of at most ``max_length``.

        Too long: the prefix loses tokens from its start and the suffix from its end (the
        context farthest from the middle) before the middle is cut, and END stays last.
        """
        p, m, s = self.parts(prefix, middle, suffix)
        over = self.overhead + len(p) + len(m) + len(s) - max_length
        truncated = False
        if over > 0:
            cut = min(over, len(p))
            p, over = p[cut:], over - cut
        if over > 0:
            cut = min(over, len(s))
            s, over = s[: len(s) - cut], over - cut
        if over > 0:
            m, truncated = m[: max(0, len(m) - over)], True
        context = self._context(p, s, mode)
        target = [*m, self.tokens.end]
        ids = context + target
        if loss_on_context:
            labels = [IGNORE_INDEX] * len(self.lead) + ids[len(self.lead) :]
        else:
            labels = [IGNORE_INDEX] * len(context) + target
        return {"input_ids": ids, "labels": labels, "truncated": truncated}


def windows(text: str, tokenizer: Any, budget: int) -> list[str]:
    """``text`` cut into consecutive pieces of at most ``budget`` tokens each (by the tokenizer's
    character offsets, so a piece never ends inside a character); together they are ``text``."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if len(ids) <= budget:
        return [text] if text else []
    bounds, pos = [0], 0
    while pos + budget < len(ids):
        end = pos + budget
        # Byte-level tokens of one character share its offsets: step back to the character's
        # first token so the character starts the next piece whole.
        while end > pos + 1 and offsets[end][0] == offsets[end - 1][0]:
            end -= 1
        bounds.append(offsets[end][0])
        pos = end
    bounds.append(len(text))
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    return [p for p in pieces if p]


def choose_mode(rng: random.Random, spm_rate: float) -> str:
    return "spm" if rng.random() < spm_rate else "psm"


def fim_text(prefix: str, suffix: str, names: Sequence[str], mode: str = "psm") -> str:
    """The infilling prompt as text (for an endpoint's completion API, which tokenizes it)."""
    pre, suf, mid = names[:3]
    if mode == "psm":
        return f"{pre}{prefix}{suf}{suffix}{mid}"
    if mode == "spm":
        return f"{pre}{suf}{suffix}{mid}{prefix}"
    raise ValueError(f"FIM mode {mode!r}: use one of {', '.join(MODES)}")
