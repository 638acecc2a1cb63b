"""Fill-in-the-middle examples: exact PSM/SPM token layouts for three tokenizer families (built
here, each carrying its family's sentinels), labels only on the middle and END, cuts that never
fall inside a character, the data path's choice of code records, and config errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune.config import ConfigError, load_train_config
from finetune.data import IGNORE_INDEX, build_datasets
from finetune.fim import FimEncoder, resolve_fim_tokens, split_document, windows
from tests.finetune_fixtures import make_fim_tokenizer, make_tokenizer, require_torch

REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "configs" / "train-tiny-test.yaml"

PREFIX = "def add(a, b):\n    "
MIDDLE = "return a + b"
SUFFIX = "\n\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def family_tokenizers(tmp_path_factory):
    from finetune.model import load_tokenizer

    out = {}
    for family in ("starcoder", "qwen", "codellama"):
        d = tmp_path_factory.mktemp(family)
        make_fim_tokenizer(d, family)
        out[family] = load_tokenizer(d)
    return out


# The decoded rows, written out by hand from the two papers' layouts: PSM is
# PRE prefix SUF suffix MID middle END; SPM is PRE SUF suffix MID prefix middle END.
EXPECTED = {
    ("starcoder", "psm"): "<fim_prefix>def add(a, b):\n    <fim_suffix>\n\nprint(add(1, 2))\n"
    "<fim_middle>return a + b<|endoftext|>",
    ("starcoder", "spm"): "<fim_prefix><fim_suffix>\n\nprint(add(1, 2))\n<fim_middle>"
    "def add(a, b):\n    return a + b<|endoftext|>",
    ("qwen", "psm"): "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n\nprint(add(1, 2))\n"
    "<|fim_middle|>return a + b<|endoftext|>",
    ("qwen", "spm"): "<|fim_prefix|><|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>"
    "def add(a, b):\n    return a + b<|endoftext|>",
}


@pytest.mark.parametrize("family", ["starcoder", "qwen"])
@pytest.mark.parametrize("mode", ["psm", "spm"])
def test_byte_level_families_exact_layout(family_tokenizers, family, mode):
    tok = family_tokenizers[family]
    tokens = resolve_fim_tokens(tok)
    assert tokens.family == family
    row = FimEncoder(tok, tokens).row(PREFIX, MIDDLE, SUFFIX, mode, max_length=256)
    ids, labels = row["input_ids"], row["labels"]
    assert tok.decode(ids) == EXPECTED[(family, mode)]
    # Token by token: each part is the tokenizer's own tokenization of that part alone.
    pre, suf, mid = tokens.names[:3]
    parts = {"p": tok.tokenize(PREFIX), "s": tok.tokenize(SUFFIX), "m": tok.tokenize(MIDDLE)}
    if mode == "psm":
        layout = [pre, *parts["p"], suf, *parts["s"], mid, *parts["m"], "<|endoftext|>"]
    else:
        layout = [pre, suf, *parts["s"], mid, *parts["p"], *parts["m"], "<|endoftext|>"]
    assert tok.convert_ids_to_tokens(ids) == layout
    # Only the middle and END are learned.
    n_target = len(parts["m"]) + 1
    assert labels[:-n_target] == [IGNORE_INDEX] * (len(ids) - n_target)
    assert labels[-n_target:] == ids[-n_target:]
    assert tok.decode(labels[-n_target:]) == MIDDLE + "<|endoftext|>"
    assert not row["truncated"]


@pytest.mark.parametrize("mode", ["psm", "spm"])
def test_codellama_family_layout_bos_eot_and_no_dummy_space_inside(family_tokenizers, mode):
    tok = family_tokenizers["codellama"]
    tokens = resolve_fim_tokens(tok)
    assert tokens.family == "codellama" and tokens.names[3] == "▁<EOT>"
    row = FimEncoder(tok, tokens).row(PREFIX, MIDDLE, SUFFIX, mode, max_length=256)
    pieces = tok.convert_ids_to_tokens(row["input_ids"])
    # SentencePiece puts "▁" before an encoding: the prefix starts with it (as in Code Llama's
    # own prompt), but the suffix and the middle continue text and must not.
    prefix_toks = tok.tokenize(PREFIX)  # ['▁def', ...]
    middle_toks = [p for p in pieces[pieces.index("▁<MID>") + 1 :]]
    if mode == "psm":
        assert pieces[:2] == ["<s>", "▁<PRE>"]
        assert pieces[2 : 2 + len(prefix_toks)] == prefix_toks
        after_suf = pieces[pieces.index("▁<SUF>") + 1]
        assert after_suf == "\n" and middle_toks[0] == "re"
    else:
        assert pieces[:3] == ["<s>", "▁<PRE>", "▁<SUF>"]
        assert middle_toks[: len(prefix_toks)] == prefix_toks
        middle_toks = middle_toks[len(prefix_toks) :]
    assert middle_toks[-1] == "▁<EOT>"
    assert "".join(middle_toks[:-1]).replace("▁", " ") == MIDDLE
    labels = row["labels"]
    learned = [i for i, x in enumerate(labels) if x != IGNORE_INDEX]
    assert len(learned) == len(middle_toks)
    assert learned == list(range(len(labels) - len(learned), len(labels)))
    assert row["input_ids"][-1] == tokens.end


def test_loss_on_context_learns_everything_but_bos(family_tokenizers):
    tok = family_tokenizers["codellama"]
    enc = FimEncoder(tok, resolve_fim_tokens(tok))
    row = enc.row(PREFIX, MIDDLE, SUFFIX, "psm", max_length=256, loss_on_context=True)
    assert row["labels"][0] == IGNORE_INDEX and row["labels"][1:] == row["input_ids"][1:]


def test_too_long_rows_cut_far_context_first_and_keep_end(family_tokenizers):
    tok = family_tokenizers["starcoder"]
    enc = FimEncoder(tok, resolve_fim_tokens(tok))
    full = enc.row(PREFIX * 5, MIDDLE, SUFFIX * 5, "psm", max_length=512)
    short = enc.row(PREFIX * 5, MIDDLE, SUFFIX * 5, "psm", max_length=len(full["input_ids"]) - 6)
    assert len(short["input_ids"]) == len(full["input_ids"]) - 6 and not short["truncated"]
    assert tok.decode(short["input_ids"]).endswith("<fim_middle>return a + b<|endoftext|>")
    # The prefix lost its start (farthest from the middle), the suffix is whole.
    assert full["input_ids"][1 + 6 :] == short["input_ids"][1:]
    tiny = enc.row(PREFIX, MIDDLE * 20, SUFFIX, "psm", max_length=20)
    assert len(tiny["input_ids"]) == 20 and tiny["truncated"]
    assert tiny["input_ids"][-1] == tiny["labels"][-1] == tok.eos_token_id


TEXT = st.text(
    alphabet=st.sampled_from(list("ab c\n\t(é中☃😀ß") + ["\u0301"]), min_size=0, max_size=60
)


@settings(max_examples=60, deadline=None)
@given(text=TEXT, seed=st.integers(0, 10_000))
def test_cuts_never_fall_inside_a_character(family_tokenizers, text, seed):
    tok = family_tokenizers["qwen"]
    prefix, middle, suffix = split_document(text, random.Random(seed))
    assert prefix + middle + suffix == text
    enc = FimEncoder(tok, resolve_fim_tokens(tok))
    row = enc.row(prefix, middle, suffix, "psm", max_length=4096)
    # Each part alone decodes to itself: no byte of a character landed in another part.
    for part in (prefix, middle, suffix):
        part.encode("utf-8")  # a cut inside a surrogate pair would raise here
        assert tok.decode(enc.parts(part, "", "")[0]) == part
    learned = [x for x in row["labels"] if x != IGNORE_INDEX]
    assert tok.decode(learned[:-1]) == middle


def test_windows_rejoin_and_respect_the_budget(family_tokenizers):
    tok = family_tokenizers["starcoder"]
    text = ("def f(x):  # ünïcødé 中文 😀\n    return x\n" * 40).strip()
    pieces = windows(text, tok, 25)
    assert "".join(pieces) == text and len(pieces) > 5
    # Re-tokenized alone, a piece may differ from its span of the whole by a merge at its ends.
    assert all(len(tok(p, add_special_tokens=False)["input_ids"]) <= 25 + 2 for p in pieces)
    assert windows("", tok, 25) == [] and windows("x", tok, 25) == ["x"]


def test_no_fim_tokens_is_an_error_naming_the_field(tmp_path):
    from finetune.model import load_tokenizer

    make_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    with pytest.raises(
        ValueError, match=r"data\.fim\.prefix_token: the tokenizer has no fill.*data\.fim\.rate=0"
    ):
        resolve_fim_tokens(tok)
    with pytest.raises(ValueError, match=r"data\.fim\.prefix_token='<nope>': not a single token"):
        resolve_fim_tokens(tok, {"prefix": "<nope>", "suffix": "<bos>", "middle": "<pad>"})
    # Any three tokens of the vocabulary can be named instead.
    got = resolve_fim_tokens(tok, {"prefix": "<|user|>", "suffix": "<|system|>", "middle": "<pad>"})
    assert got.family == "custom" and got.end == tok.eos_token_id


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"data\.fim\.rate=1\.5"):
        load_train_config(None, ["data.fim.rate=1.5"])
    with pytest.raises(ConfigError, match=r"data\.fim\.middle_token: empty"):
        load_train_config(None, ["data.fim.prefix_token=<a>", "data.fim.suffix_token=<b>"])
    with pytest.raises(ConfigError, match=r"unknown config key.*data\.fim\.ratio"):
        load_train_config(None, ["data.fim.ratio=0.5"])


def _fim_cfg(*over: str):
    return load_train_config(TINY_CONFIG, ["data.validation_fraction=0", *over])


def test_data_path_transforms_code_records_only_and_is_seeded(family_tokenizers, tmp_path):
    tok = family_tokenizers["starcoder"]
    code = "def add(a, b):\n    return a + b\n"
    rows = [{"instruction": "Add two numbers.", "output": code, "language": "python"}] * 20
    rows += [{"instruction": "Say hi.", "output": "hi"}] * 5
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fim_id = tok.convert_tokens_to_ids("<fim_prefix>")

    def build(*over: str):
        ds, _, stats = build_datasets(_fim_cfg(*over).data, tok, path)
        return [ds[i] for i in range(len(ds))], stats

    all_fim, stats = build("data.fim.rate=1.0")
    fim_rows = [r for r in all_fim if r["input_ids"][0] == fim_id]
    assert len(fim_rows) == 20 and len(all_fim) == 25  # the 5 plain records are untouched
    assert sum(stats["train"]["fim"].values()) == 20 and stats["fim"]["family"] == "starcoder"
    assert 4 <= stats["train"]["fim"].get("spm", 0) <= 16  # spm_rate 0.5
    for r in fim_rows:
        learned = [x for x in r["labels"] if x != IGNORE_INDEX]
        context = [x for x, y in zip(r["input_ids"], r["labels"], strict=True) if y == IGNORE_INDEX]
        # The learned middle is a piece of the code, and context + middle hold the whole code.
        assert tok.decode(learned[:-1]) in code and learned[-1] == tok.eos_token_id
        assert sorted(tok.decode(context + learned[:-1], skip_special_tokens=True)) == sorted(code)
    half, _ = build("data.fim.rate=0.5")
    again, _ = build("data.fim.rate=0.5")
    other, _ = build("data.fim.rate=0.5", "data.fim.seed=1")
    assert half == again and half != other
    assert 3 <= sum(r["input_ids"][0] == fim_id for r in half) <= 17
    none, stats0 = build("data.fim.rate=0")
    assert not any(r["input_ids"][0] == fim_id for r in none) and "fim" not in stats0


def test_raw_text_code_files_get_fim_and_docs_do_not(family_tokenizers, tmp_path):
    tok = family_tokenizers["qwen"]
    raw = tmp_path / "raw_text.jsonl"
    code = "import os\n\n\ndef add(a, b):\n    return a + b\n" * 30
    raw.write_text(
        json.dumps({"text": code, "source": "pkg/mod.py"})
        + "\n"
        + json.dumps({"text": "read the word list twice " * 20, "source": "README.md"})
        + "\n"
    )
    cfg = _fim_cfg("data.fim.rate=1.0", f"data.raw_text={raw}", "data.max_length=64")
    ds, val, stats = build_datasets(cfg.data, tok, None)  # raw text alone
    assert val is None and stats["raw_text"]["texts"] == 2
    fim_id = tok.convert_tokens_to_ids("<|fim_prefix|>")
    rows = [ds[i] for i in range(len(ds))]
    fim_rows = [r for r in rows if r["input_ids"][0] == fim_id]
    plain = [r for r in rows if r["input_ids"][0] != fim_id]
    assert len(fim_rows) > 5 and plain and all(r["labels"] == r["input_ids"] for r in plain)
    assert all(len(r["input_ids"]) <= 64 for r in rows)
    middles = [[x for x in r["labels"] if x != IGNORE_INDEX][:-1] for r in fim_rows]
    assert sum(stats["train"]["fim"].values()) == len(fim_rows)
    assert all(tok.decode(m) in code for m in middles)


def test_fim_training_runs_and_records_the_sentinels(tmp_path):
    """A tiny Llama whose tokenizer carries StarCoder's sentinels trains a few steps on FIM rows;
    the adapter's prompt_format.json names the sentinels evaluation must prompt with."""
    require_torch()
    from finetune.train import run_training
    from tests.finetune_fixtures import make_fim_tiny_model

    tiny = make_fim_tiny_model(tmp_path / "tiny", "starcoder")
    code = "def add(a, b):\n    return a + b\n"
    data = tmp_path / "code.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": "Add.", "output": code, "language": "python"}) + "\n"
            for _ in range(16)
        )
    )
    cfg = load_train_config(
        TINY_CONFIG,
        [
            f"model.name_or_path={tiny}",
            "data.fim.rate=1.0",
            "training.max_steps=3",
            "data.validation_fraction=0",
        ],
    )
    trainer, summary = run_training(cfg, data, output_dir=tmp_path / "adapter")
    assert summary["global_step"] == 3 and all(loss == loss for _, loss in summary["losses"])
    assert sum(summary["data"]["train"]["fim"].values()) == 16
    fmt = json.loads((tmp_path / "adapter" / "prompt_format.json").read_text())
    assert fmt["fim"]["prefix"] == "<fim_prefix>" and fmt["fim"]["end"] == "<|endoftext|>"
    row = trainer.train_dataset[0]
    assert row["input_ids"][0] == trainer.processing_class.convert_tokens_to_ids("<fim_prefix>")
