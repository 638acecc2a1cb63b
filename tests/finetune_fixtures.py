"""A tiny causal LM for the trainer's tests: a byte-level BPE tokenizer trained in the test on a
few hundred words and a 2-layer Llama (hidden 32) built from a config with random weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

WORDS = (
    "apple banana cherry grape lemon mango olive peach pear plum "
    "red green blue yellow black white orange purple brown pink "
    "one two three four five six seven eight nine ten "
    "cat dog bird fish horse mouse tiger lion bear wolf "
    "run walk jump swim read write sing dance cook sleep "
    "repeat the word twice reverse list sort count letters numbers "
    "instruction input response task reply carries out following together context gives with "
    "def return print python function code value true false none "
).split()

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def require_torch():
    """``torch``, or skip the caller where it is not installed, and fail it on CI (``CI=true``):
    there a missing trainer stack is a broken machine, not a reason to test less."""
    import pytest

    try:
        import torch
    except ImportError as e:
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(f"CI: the trainer tests need torch (pip install -e '.[train]'): {e}")
        pytest.skip(f"torch is not installed: {e}", allow_module_level=True)
    return torch


def corpus() -> list[str]:
    """A few hundred words of text, plus the Alpaca template so its words are whole tokens."""
    from pipeline.prompts import alpaca_prompt

    lines = [" ".join(WORDS[i : i + 10]) for i in range(0, len(WORDS), 3)]
    lines += [f"Repeat the word {w} twice" for w in WORDS]
    lines += [alpaca_prompt("Repeat the word", "apple"), alpaca_prompt("Sort the list")]
    return lines * 3


def make_tokenizer(out_dir: Path, *, pad_is_eos: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<bos>", "<eos>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<eos>" if pad_is_eos else "<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def make_tiny_model(out_dir: str | Path, *, pad_is_eos: bool = False, seed: int = 0) -> Path:
    """Save a tokenizer and a random 2-layer Llama into ``out_dir``; return it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _tiny_llama(out_dir, make_tokenizer(out_dir, pad_is_eos=pad_is_eos), seed)


def _tiny_llama(out_dir: Path, tok, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        tie_word_embeddings=False,
        # Wide enough that a LoRA on 32-dim layers can move the output distribution in a few
        # steps (at 0.02 the logits cannot leave ~uniform and the loss barely falls).
        initializer_range=0.3,
    )
    LlamaForCausalLM(cfg).save_pretrained(out_dir)
    return out_dir


def write_alpaca_data(path: Path, n: int = 48) -> Path:
    """A learnable toy task: repeat a word twice (half the examples carry an input)."""
    rows = []
    for i in range(n):
        w = WORDS[i % 40]
        if i % 2:
            rows.append({"instruction": "Repeat the word twice.", "input": w, "output": f"{w} {w}"})
        else:
            rows.append(
                {"instruction": f"Repeat the word {w} twice.", "input": "", "output": f"{w} {w}"}
            )
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


# ---------------------------------------------------------------- FIM tokenizer families

CODE_LINES = [
    "def add(a, b):",
    "    return a + b",
    "print(add(1, 2))",
    "for i in range(10):",
    "    if i % 2 == 0:",
    "        total = total + i",
    "class Point:",
    "    def __init__(self, x, y):",
    "        self.x = x",
    "import os",
    "from typing import List",
    "# héllo wörld, 中文 and ☃ stay whole",
    "    numbers = sorted(numbers)",
    "    return [x for x in numbers if x > threshold]",
]

FIM_FAMILIES = {
    # family: (specials in vocabulary order, eos, bos or None, byte-level BPE?)
    "starcoder": (
        ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"],
        "<|endoftext|>",
        None,
        True,
    ),
    "qwen": (
        [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|fim_prefix|>",
            "<|fim_middle|>",
            "<|fim_suffix|>",
            "<|fim_pad|>",
        ],
        "<|endoftext|>",
        None,
        True,
    ),
    "codellama": (
        ["<unk>", "<s>", "</s>", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"],
        "</s>",
        "<s>",
        False,
    ),
}


def make_fim_tokenizer(out_dir: Path, family: str):
    """A small tokenizer carrying one family's FIM sentinels: StarCoder's and Qwen's are
    byte-level BPE without BOS; Code Llama's is SentencePiece-style (a ``▁`` put before the text,
    spaces as ``▁``) with BOS, as Llama's tokenizer behaves."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials, eos, bos, byte_level = FIM_FAMILIES[family]
    text = CODE_LINES * 20 + ["\n".join(CODE_LINES)] * 10 + [" ".join(WORDS)] * 5
    if byte_level:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted(set("".join(text)) | {"☺", "\n"})
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(text, trainer=trainer)
    if bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos,
        bos_token=bos,
        unk_token="<unk>" if "<unk>" in specials else None,
        additional_special_tokens=[s for s in specials if s not in (eos, bos, "<unk>")],
    )
    fast.save_pretrained(out_dir)
    return fast


def make_fim_tiny_model(out_dir: str | Path, family: str, *, seed: int = 0) -> Path:
    """A random 2-layer Llama whose tokenizer carries ``family``'s FIM sentinels."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _tiny_llama(out_dir, make_fim_tokenizer(out_dir, family), seed)


def make_tiny_falcon(out_dir: str | Path, *, seed: int = 0) -> Path:
    """A random 2-layer Falcon (its attention is one fused ``query_key_value`` projection, as in
    Falcon-40B) with the test tokenizer."""
    import torch
    from transformers import FalconConfig, FalconForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(out_dir)
    torch.manual_seed(seed)
    cfg = FalconConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_kv_heads=2,
        new_decoder_architecture=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.3,
    )
    FalconForCausalLM(cfg).save_pretrained(out_dir)
    return out_dir
