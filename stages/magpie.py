"""Magpie: the model writes the user turn itself. A raw completion request sends only the chat
template's prefix up to the user turn (for ChatML ``<|im_start|>user\\n``) and stops at the
end-of-turn token; what comes back is an instruction the model's own chat tuning makes likely.
It is then answered in chat (the ``answer`` stage), like any other new instruction.

Why a table of template prefixes (:data:`TEMPLATES`) rather than rendering the model's chat
template with a sentinel message: the OpenAI-compatible API exposes no chat template (vLLM and
llama.cpp's server do not return it, OpenAI has none to give), so a stage that must work on any
endpoint cannot read one; and the families are few (ChatML covers SmolLM2 and Qwen2.5). With
``template: auto`` the family follows the model name; an unknown name is an error naming
``generation.magpie.template``.

Request ``i`` is a function of ``(seed, i)`` only (the sampling seed), so reruns pay nothing.

Writes records with ``id`` ``g<request>-0``, ``instruction`` (the written user turn), ``input``
(""), ``output`` ("": answered in chat later), ``meta``: ``strategy: magpie``, ``template``,
``round``.

Reject reasons (stage ``generate``), decided by :func:`check`: ``magpie_empty`` (nothing but
whitespace came back), ``magpie_truncated`` (the user turn was cut by the length limit: the
model never ended its turn), ``magpie_template_leak`` (the reply holds template markup or writes
the assistant's turn: the model ran past its user turn), ``magpie_code_only`` (the
"user" wrote a program and no request: code models do this from a bare user prefix),
``magpie_too_short`` (fewer than ``min_words`` words: a greeting, not a task); plus
``request_failed``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from stages.base import Failure, Request, Response, StageStats, help_field

# family -> (prefix up to the user turn's text, end-of-turn markers to stop at)
TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "chatml": ("<|im_start|>user\n", ("<|im_end|>", "<|im_start|>")),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
        ("<|eot_id|>", "<|start_header_id|>"),
    ),
    "gemma": ("<bos><start_of_turn>user\n", ("<end_of_turn>", "<start_of_turn>")),
    "phi3": ("<|user|>\n", ("<|end|>", "<|assistant|>")),
}
# model-name fragment -> family, for ``template: auto``
_FAMILY = (
    ("smollm", "chatml"),
    ("qwen", "chatml"),
    ("llama-3", "llama3"),
    ("llama3", "llama3"),
    ("gemma", "gemma"),
    ("phi-3", "phi3"),
)
# Markup of any family, and "assistant" turn headers small models write in plain text.
_LEAK = re.compile(
    r"<\|[a-z_]+\|>|<(?:start|end)_of_turn>|^\s*(?:assistant|user|system)\s*:?\s*$", re.I | re.M
)
_WORD = re.compile(r"[A-Za-z0-9]+")
_CODE_LINE = re.compile(
    r"^\s*(?:def |class |import\b|from \S+ import |return\b|for .*:|if .*:|while .*:|#include|"
    r"using |fn |let |const |var |function |public |print\(|[\w.\[\]]+\s*[-+*/]?=[^=]|[{}]\s*$|//|/\*|```)"
)


@dataclass
class MagpieConfig:
    template: str = help_field(
        f"chat template family whose user-turn prefix is sent: auto (from the model name) | {' | '.join(TEMPLATES)}",
        "auto",
    )
    temperature: float = help_field(
        "sampling temperature for the user turn (Magpie samples it hot for variety)", 1.0
    )
    max_tokens: int = help_field("completion tokens for the user turn", 128)
    min_words: int = help_field("magpie_too_short: fewer words than this in the instruction", 4)

    def __post_init__(self) -> None:
        if self.template != "auto" and self.template not in TEMPLATES:
            raise ValueError(
                f"generation.magpie.template={self.template!r}: use auto or one of {', '.join(TEMPLATES)}"
            )
        if self.max_tokens < 8:
            raise ValueError(f"generation.magpie.max_tokens={self.max_tokens!r}: use at least 8")
        if self.min_words < 1:
            raise ValueError(f"generation.magpie.min_words={self.min_words!r}: must be at least 1")


def family(cfg: MagpieConfig, model: str) -> str:
    """The template family for ``model``; a ValueError naming the setting when unknown."""
    if cfg.template != "auto":
        return cfg.template
    name = model.lower()
    for fragment, fam in _FAMILY:
        if fragment in name:
            return fam
    raise ValueError(
        f"generation.magpie.template=auto: no chat template family known for model {model!r}; "
        f"set generation.magpie.template to one of {', '.join(TEMPLATES)}"
    )


def request(i: int, seed: int, cfg: MagpieConfig, model: str, *, top_p: float) -> Request:
    fam = family(cfg, model)
    prefix, stops = TEMPLATES[fam]
    params = {
        "temperature": cfg.temperature,
        "top_p": top_p,
        "max_tokens": cfg.max_tokens,
        "seed": seed * 100003 + i,
        "stop": list(stops),
    }
    req = Request(kind="magpie", prompt=prefix, params=params, sample=i, api="completion")
    req.tag = {"index": i, "strategy": "magpie", "template": f"magpie_{fam}", "cfg": cfg}
    return req


def check(text: str, finish_reason: str, cfg: MagpieConfig) -> str | None:
    """Whether a written user turn is a usable instruction (None keeps)."""
    if not text.strip():
        return "magpie_empty"
    if _LEAK.search(text):
        return "magpie_template_leak"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if sum(bool(_CODE_LINE.match(ln)) for ln in lines) * 2 > len(lines):
        return "magpie_code_only"
    if finish_reason == "length":
        return "magpie_truncated"
    if len(_WORD.findall(text)) < cfg.min_words:
        return "magpie_too_short"
    return None


def parse(req: Request, resp: Response | Failure, stats: StageStats, meta: dict) -> Iterator[dict]:
    i = req.tag["index"]
    prov = {**meta, "strategy": "magpie", "template": req.tag["template"], "request": i}
    if isinstance(resp, Failure):
        stats.drop({"id": f"g{i}", "meta": {**prov, "error": resp.error}}, resp.kind)
        return
    rec = {
        "id": f"g{i}-0",
        "instruction": resp.text.strip(),
        "input": "",
        "output": "",
        "meta": {**prov, "finish_reason": resp.finish_reason},
    }
    reason = check(resp.text, resp.finish_reason, req.tag["cfg"])
    if reason:
        stats.drop({**rec, "raw": resp.text}, reason)
        return
    yield stats.keep(rec)
