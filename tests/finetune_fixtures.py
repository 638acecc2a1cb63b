"""A tiny causal LM for the trainer's tests: a byte-level BPE tokenizer trained in the test on a
few hundred words and a 2-layer Llama (hidden 32) built from a config with random weights."""

from __future__ import annotations

import json
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
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(out_dir, pad_is_eos=pad_is_eos)
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
        pad_token_id=tok.pad_token_id,
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
