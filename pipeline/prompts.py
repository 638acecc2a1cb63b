"""Prompt templates live in ``prompts/*.txt``; this renders them. Templates use
``string.Template`` placeholders (``${name}``) so that code and JSON braces need no escaping."""

from __future__ import annotations

import string
from functools import cache
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"


@cache
def load(name: str) -> string.Template:
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.txt")))
        raise FileNotFoundError(f"no prompt template '{name}' in {PROMPTS_DIR} (known: {known})")
    return string.Template(path.read_text(encoding="utf-8"))


def render(name: str, **variables: object) -> str:
    """Render ``prompts/<name>.txt``; a placeholder without a value is a KeyError naming it."""
    try:
        return load(name).substitute({k: str(v) for k, v in variables.items()})
    except KeyError as e:
        raise KeyError(f"prompt '{name}' needs a value for {e.args[0]!r}") from None


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca training/inference prompt (with or without input), shared by export,
    the trainer and the evaluation harness so that all three format examples identically."""
    if input and input.strip():
        return render("alpaca_input", instruction=instruction, input=input)
    return render("alpaca_no_input", instruction=instruction)
