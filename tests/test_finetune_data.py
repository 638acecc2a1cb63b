"""Example building for the trainer: prompt masking, EOS, truncation, formats, split, config."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from finetune.config import ConfigError, load_train_config
from finetune.data import (
    IGNORE_INDEX,
    DataStats,
    Example,
    format_prompt,
    latest_data,
    read_examples,
    split_example,
    split_validation,
    tokenize_example,
    tokenize_examples,
)
from pipeline.prompts import PROMPTS_DIR
from pipeline.records import RecordError
from tests.finetune_fixtures import make_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from finetune.model import load_tokenizer

    d = tmp_path_factory.mktemp("tok")
    make_tokenizer(d)
    return load_tokenizer(d)


@pytest.fixture(scope="module")
def tok_pad_eos(tmp_path_factory):
    from finetune.model import load_tokenizer

    d = tmp_path_factory.mktemp("tok_pad_eos")
    make_tokenizer(d, pad_is_eos=True)
    return load_tokenizer(d)


def test_alpaca_prompt_is_the_shared_template(tok):
    raw = (PROMPTS_DIR / "alpaca_no_input.txt").read_text()
    assert format_prompt("Sort the list.", "", tok, "alpaca") == raw.replace(
        "${instruction}", "Sort the list."
    )
    raw_in = (PROMPTS_DIR / "alpaca_input.txt").read_text()
    expected = raw_in.replace("${instruction}", "Sort it.").replace("${input}", "3 1 2")
    assert format_prompt("Sort it.", "3 1 2", tok, {"format": "alpaca"}) == expected


def test_labels_mask_exactly_the_prompt_and_learn_response_and_eos(tok):
    prompt = format_prompt("Repeat the word apple twice.", "", tok, "alpaca")
    row = tokenize_example(prompt, "apple apple", tok, max_length=256)
    n_prompt = len(tok(prompt)["input_ids"])  # BOS + prompt, exactly as inference tokenizes it
    ids, labels = row["input_ids"], row["labels"]
    assert ids[0] == tok.bos_token_id
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert all(x != IGNORE_INDEX for x in labels[n_prompt:])
    assert ids[-1] == labels[-1] == tok.eos_token_id
    assert tok.decode(ids[n_prompt:-1]) == "apple apple"
    # The first learned token is the first response token: no off-by-one at the boundary.
    assert ids[:n_prompt] == tok(prompt)["input_ids"]
    assert tok.decode(ids[n_prompt:], skip_special_tokens=True) == "apple apple"
    assert not row["truncated"]


def test_train_on_inputs_learns_everything(tok):
    prompt = format_prompt("Repeat the word.", "pear", tok, "alpaca")
    row = tokenize_example(prompt, "pear pear", tok, max_length=256, train_on_inputs=True)
    assert row["labels"] == row["input_ids"]


def test_eos_survives_truncation(tok):
    prompt = format_prompt("Count the numbers.", "", tok, "alpaca")
    long = " ".join(["one two three four five six seven eight nine ten"] * 20)
    n_prompt = len(tok(prompt)["input_ids"])
    row = tokenize_example(prompt, long, tok, max_length=n_prompt + 10)
    assert row["truncated"]
    assert len(row["input_ids"]) == n_prompt + 10
    assert row["input_ids"][-1] == tok.eos_token_id
    assert row["labels"][-1] == tok.eos_token_id
    assert row["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert tok.decode(row["input_ids"][n_prompt:-1]).startswith("one two three")


def test_prompt_too_long_is_dropped_and_counted(tok):
    ex = [
        Example(instruction="cat " * 200, output="dog", source="x:1"),
        Example(instruction="Repeat the word lion twice.", output="lion lion", source="x:2"),
    ]
    stats = DataStats()
    rows = tokenize_examples(ex, tok, prompt_format="alpaca", max_length=64, stats=stats)
    assert len(rows) == 1
    assert stats.dropped == {"prompt_too_long": 1}
    assert stats.total == 2 and stats.kept == 1


def test_pad_equal_to_eos_keeps_eos_learned(tok_pad_eos):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tok = tok_pad_eos
    assert tok.pad_token_id == tok.eos_token_id
    rows = [
        tokenize_example(
            format_prompt("Repeat the word fish twice.", "", tok, "alpaca"), r, tok, max_length=256
        )
        for r in ("fish fish", "fish fish fish fish fish fish fish fish")
    ]
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(rows)
    short = len(rows[0]["input_ids"])
    labels, ids, mask = batch["labels"][0], batch["input_ids"][0], batch["attention_mask"][0]
    # The short row's real EOS is learned; the padding after it (the same token id) is not.
    assert ids[short - 1] == tok.eos_token_id and labels[short - 1] == tok.eos_token_id
    assert (ids[short:] == tok.pad_token_id).all() and (labels[short:] == IGNORE_INDEX).all()
    assert mask[:short].all() and not mask[short:].any()  # right padding
    assert batch["labels"][1][-1] == tok.eos_token_id


def test_chat_template_format_masks_prompt_and_ends_with_eos(tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Repeat the word owl twice."},
        {"role": "assistant", "content": "owl owl"},
    ]
    prompt, response = split_example(Example(messages=msgs), tok, "chat_template")
    assert prompt.endswith("<|assistant|>\n") and prompt.startswith("<|system|>\nBe brief.<eos>")
    assert response == "owl owl"
    row = tokenize_example(prompt, response, tok, max_length=256, add_special_tokens=False)
    n = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert row["labels"][:n] == [IGNORE_INDEX] * n
    assert row["input_ids"][-1] == row["labels"][-1] == tok.eos_token_id
    assert tok.decode(row["labels"][n:-1]) == "owl owl"
    # The same prompt is what evaluation builds for an instruction.
    assert (
        format_prompt(
            "Repeat the word owl twice.",
            "",
            tok,
            {"format": "chat_template", "system_prompt": "Be brief."},
        )
        == prompt
    )


def test_messages_in_alpaca_format_use_last_user_turn(tok):
    msgs = [
        {"role": "user", "content": "Sort the list."},
        {"role": "assistant", "content": "1 2 3"},
    ]
    prompt, response = split_example(Example(messages=msgs), tok, "alpaca")
    assert prompt == format_prompt("Sort the list.", "", tok, "alpaca")
    assert response == "1 2 3"


def test_read_examples_both_formats(tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
    assert read_examples(data)[0].output == "b"
    msgs = tmp_path / "messages.jsonl"
    msgs.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
        )
        + "\n"
    )
    assert read_examples(msgs)[0].messages[-1]["content"] == "a"


@pytest.mark.parametrize(
    "content, where",
    [
        ('[{"instruction": "a", "input": ""}]', ":1: field 'output'"),
        (
            '[{"instruction": "a", "output": "b"}, {"instruction": 3, "output": "b"}]',
            ":2: field 'instruction'",
        ),
        ('[{"instruction": "a", "input": 5, "output": "b"}]', ":1: field 'input'"),
    ],
)
def test_bad_alpaca_records_name_file_line_field(tmp_path, content, where):
    p = tmp_path / "data.json"
    p.write_text(content)
    with pytest.raises(RecordError) as e:
        read_examples(p)
    assert str(p) in str(e.value) and where in str(e.value)


def test_bad_messages_name_file_line_field(tmp_path):
    p = tmp_path / "messages.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]}
    p.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"messages.jsonl:2: field 'messages\[1\].role'"):
        read_examples(p)
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    with pytest.raises(RecordError, match=r":1: field 'messages'.*last message"):
        read_examples(p)


def test_validation_split_is_seeded_disjoint_and_complete():
    ex = [Example(instruction=str(i), output=str(i)) for i in range(50)]
    tr1, va1 = split_validation(ex, 0.2, seed=7)
    tr2, va2 = split_validation(ex, 0.2, seed=7)
    _, va3 = split_validation(ex, 0.2, seed=8)
    ids = lambda xs: [x.instruction for x in xs]  # noqa: E731
    assert ids(va1) == ids(va2) and ids(tr1) == ids(tr2)
    assert ids(va1) != ids(va3)
    assert len(va1) == 10 and sorted(ids(tr1) + ids(va1), key=int) == [str(i) for i in range(50)]
    assert split_validation(ex, 0.0, 1)[1] == []


def test_latest_data_picks_newest_run(tmp_path):
    for i, run in enumerate(["a", "b", "c", "d"]):
        (tmp_path / run).mkdir()
        if run != "c":
            f = tmp_path / run / "data.json"
            f.write_text(
                '[{"instruction": "a", "input": "", "output": "b"}]' if run != "d" else "[]"
            )
            t = time.time() - 100 + i * 10
            os.utime(f, (t, t))
    # "d" is the newest but kept nothing; "c" has no data.json at all
    assert latest_data(tmp_path) == tmp_path / "b" / "data.json"
    with pytest.raises(FileNotFoundError, match="make generate"):
        latest_data(tmp_path / "c")


def test_config_sections_overrides_and_errors(tmp_path):
    cfg = load_train_config(
        Path("configs/train-tiny-test.yaml"),
        ["lora.r=4", "training.learning_rate=0.001", "lora.target_modules=[q_proj,v_proj]"],
    )
    assert cfg.lora.r == 4 and cfg.training["learning_rate"] == 0.001
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="unknown config key.*lora.rank"):
        load_train_config(None, ["lora.rank=4"])
    with pytest.raises(ConfigError, match="data.max_length"):
        load_train_config(None, ["training.max_length=64"])
    with pytest.raises(ConfigError, match="model.quantization='2bit'"):
        load_train_config(None, ["model.quantization=2bit"])
    with pytest.raises(ConfigError, match="lora.r: expected int"):
        load_train_config(None, ["lora.r=big"])
