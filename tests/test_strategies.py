"""The generation strategies' pure parts: the ``generation.strategy`` config and its seeded mix,
each strategy's request, and one test per reject reason built from a real bad reply of the
embedded models (SmolLM2-135M-Instruct unless marked Qwen2.5-Coder-0.5B-Instruct), plus keeps.
"""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.prompts import render
from stages import classify, evol, generate, magpie, oss, strategies
from stages.base import Failure, Request, Response, StageStats

HAIKU = "Write a haiku about waiting for a bus on a cold winter morning."
SHOP = (
    "Write a short, persuasive product description (three or four sentences) for an online "
    "shop, using only the product details given."
)


def resp(text: str, finish: str = "stop") -> Response:
    return Response(text, finish, 10, 20, "SmolLM2-135M-Instruct.Q4_1", "cmpl-1")


# -- config and mix ---------------------------------------------------------------------------
def test_a_single_strategy_and_a_weighted_mix_are_read_from_config():
    g = load_config(None, ["generation.strategy=evol"]).generation
    assert g.strategy_mix() == {"evol": 1.0}
    g = load_config(None, ["generation.strategy={alpaca: 5, evol: 3, magpie: 2}"]).generation
    assert g.strategy_mix() == {"alpaca": 0.5, "evol": 0.3, "magpie": 0.2}


def test_the_mix_assigns_requests_by_a_seeded_rng_on_the_index():
    g = load_config(None, ["generation.strategy={alpaca: 0.5, evol: 0.3, magpie: 0.2}"]).generation
    picks = [g.strategy_for(i) for i in range(2000)]
    assert picks == [g.strategy_for(i) for i in range(2000)], "same index, same strategy"
    shares = Counter(picks)
    assert abs(shares["alpaca"] / 2000 - 0.5) < 0.04 and abs(shares["magpie"] / 2000 - 0.2) < 0.04
    other = load_config(None, ["generation.seed=7", "generation.strategy={alpaca: 1, evol: 1}"])
    assert [other.generation.strategy_for(i) for i in range(50)] != [
        g.strategy_for(i) for i in range(50)
    ]


@pytest.mark.parametrize(
    "value, words",
    [
        ("wizard", "'wizard' is not a general-mode strategy"),
        ("oss", "oss needs mode code"),
        ("{alpaca: -1}", "generation.strategy.alpaca=-1"),
        ("{alpaca: 0}", "at least one strategy a share above 0"),
    ],
)
def test_a_bad_strategy_is_an_error_naming_the_key(value, words):
    with pytest.raises(ConfigError, match="generation.strategy") as e:
        load_config(None, [f"generation.strategy={value}"])
    assert words in str(e.value)


def test_code_mode_refuses_magpie_and_classification():
    with pytest.raises(ConfigError, match="'magpie' is not a code-mode strategy"):
        load_config(None, ["generation.mode=code", "generation.strategy=magpie"])
    assert load_config(None, ["generation.mode=code", "generation.strategy=oss"])


def test_nested_strategy_settings_reject_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="generation.evol.depth"):
        load_config(None, ["generation.evol.depth=2"])
    with pytest.raises(ConfigError, match=r"generation.evol.rounds=0"):
        load_config(None, ["generation.evol.rounds=0"])
    with pytest.raises(ConfigError, match="generation.magpie.template='vicuna'"):
        load_config(None, ["generation.magpie.template=vicuna"])
    with pytest.raises(ConfigError, match="min_lines <= max_lines"):
        load_config(None, ["generation.oss.max_lines=0"])


def test_alpaca_requests_are_unchanged_by_the_strategy_dispatch():
    g = load_config(None, ["generation.strategy={alpaca: 1, evol: 0}"]).generation
    seeds = [
        {"id": f"s{i}", "instruction": f"Name {i} rivers.", "input": "", "output": "x", "meta": {}}
        for i in range(5)
    ]
    plain = generate.round_requests(0, 3, g, seeds, render, "completion")
    mixed = strategies.round_requests(0, 3, g, seeds, render, "completion", model="m", round_no=0)
    assert [r.key("m", "completion") for r in plain] == [r.key("m", "completion") for r in mixed]
    assert all(r.tag["meta"] == {"strategy": "alpaca", "round": 0} for r in mixed)


# -- evol -------------------------------------------------------------------------------------
def test_evol_request_picks_parent_and_operation_by_the_index():
    cfg = evol.EvolConfig()
    parents = [
        {"id": "a", "instruction": HAIKU, "input": ""},
        {"id": "b", "instruction": SHOP, "input": "Bottle: 750 ml"},
    ]
    reqs = [
        evol.request(i, 42, cfg, parents, render, temperature=0.9, top_p=0.95) for i in range(12)
    ]
    again = [
        evol.request(i, 42, cfg, parents, render, temperature=0.9, top_p=0.95) for i in range(12)
    ]
    assert [r.key("m", "chat") for r in reqs] == [r.key("m", "chat") for r in again]
    assert {r.tag["operation"] for r in reqs} <= set(evol.OPERATIONS)
    b = next(r for r in reqs if r.tag["parent"]["id"] == "b")
    assert b.messages[0]["content"].endswith(f"Task: {SHOP}\nInput: Bottle: 750 ml")
    assert b.api == "chat" and b.params["max_tokens"] == cfg.max_tokens


def test_evol_prompt_renders_exactly():
    text = render("evol_constraints", instruction=HAIKU, input_line="").strip()
    assert text == (
        "Rewrite the task below into a harder version of itself by adding one more requirement "
        "or constraint that the answer has to respect (about 10 to 20 extra words). Keep the "
        "rewritten task readable and answerable by a person. Reply with the rewritten task only."
        f"\n\nTask: {HAIKU}"
    )


@pytest.mark.parametrize(
    "reply, parent, reason",
    [
        # SmolLM2, evol_complicate_input on SHOP: talks about the prompt instead of a task.
        (
            "To achieve this challenge, I will provide the rewritten task with only the product "
            "details and a list of values in the table or list at the top.",
            SHOP,
            "evol_copied_prompt",
        ),
        # SmolLM2, evol_constraints: "Here's a rewritten version of the task ..."
        (
            "Here's a rewritten version of the task with an extra requirement or constraint:\n\n"
            'Rewrite: "To brew a great black tea, you need to know the basic steps and ingredients."',
            "Explain how to brew black tea.",
            "evol_copied_prompt",
        ),
    ],
)
def test_evol_elimination_rule_on_a_real_reply(reply, parent, reason):
    assert evol.check(evol.clean(reply), parent, evol.EvolConfig()) == reason


QWEN = "Qwen2.5-Coder-0.5B-Instruct"


@pytest.mark.parametrize(
    "reply, parent, reason",
    [
        # Qwen, evol_constraints on a seed: the rewrite only dropped words ("fact or").
        (
            "Label the statement as opinion.",
            "Label the statement as fact or opinion.",
            "evol_no_new_information",
        ),
        # Qwen, evol_deepen: the parent again, under a "Rewritten task:" label.
        (
            "Rewritten task:\n\nExplain the greenhouse effect to secondary-school students in one paragraph.",
            "Explain the greenhouse effect to secondary-school students in one paragraph.",
            "evol_no_new_information",
        ),
        # Qwen, evol_constraints: it echoed the evolving prompt itself.
        (
            "Rewrite the task into a harder version by adding one more requirement or constraint "
            "that the answer has to respect (about 10 to 20 extra words). Keep the rewritten task "
            "readable and answerable by a person.",
            "Using the table, answer the question.",
            "evol_copied_prompt",
        ),
    ],
    ids=["dropped-words", "same-task", "echoed-prompt"],
)
def test_evol_elimination_rule_on_a_real_qwen_reply(reply, parent, reason):
    assert evol.check(evol.clean(reply), parent, evol.EvolConfig()) == reason


def test_evol_too_short_on_a_real_reply():
    # SmolLM2 at temperature 1.3, evol_complicate_input: one word, then something else.
    reply = 'Clarify.\n\nTranslate: Sentence: "The power of education lies not only in'
    assert evol.check(evol.clean(reply), HAIKU, evol.EvolConfig()) == "evol_too_short"


# No refusal or punctuation-only evolution turned up in ~150 sampled evolutions of the
# two embedded models; these are the shapes WizardLM's rules name, constructed here.
@pytest.mark.parametrize(
    "reply, reason",
    [
        ("I'm sorry, but I can't make this task harder.", "evol_refusal"),
        ("As an AI language model, I cannot write haikus.", "evol_refusal"),
        ("...?!", "evol_punctuation_only"),
        ("the and of", "evol_punctuation_only"),
    ],
)
def test_evol_constructed_defects(reply, reason):
    assert evol.check(evol.clean(reply), HAIKU, evol.EvolConfig()) == reason


def test_evol_keeps_a_real_harder_rewrite():
    reply = (
        "If someone says, 'I'm going to the movies tonight,' and it turns out that I'll be "
        "watching a horror movie."
    )
    assert evol.check(evol.clean(reply), HAIKU, evol.EvolConfig()) is None


def _evol_reply(text: str, finish: str = "stop") -> list[dict]:
    cfg = evol.EvolConfig()
    parent = {"id": "seed_task_1", "instruction": HAIKU, "input": "", "meta": {"source": "seed"}}
    req = evol.request(3, 42, cfg, [parent], render, temperature=0.9, top_p=0.95)
    req.tag["round"] = 1
    st = StageStats(stage="generate", sink=(rej := []).append)
    kept = list(evol.parse(req, resp(text, finish), st, {"round": 1}))
    return kept, rej, st


def test_an_evolved_record_carries_parent_operation_depth_and_round():
    kept, rej, st = _evol_reply(
        "Write a haiku about a bus stop at dawn in Oslo, in the present tense."
    )
    assert not rej and st.kept == 1
    meta = kept[0]["meta"]
    assert (meta["strategy"], meta["parent"], meta["depth"], meta["round"]) == (
        "evol",
        "seed_task_1",
        1,
        1,
    )
    assert meta["operation"] in evol.OPERATIONS and kept[0]["id"] == "g3-0"


def test_a_length_cut_evolution_is_truncated_with_its_raw_text():
    # SmolLM2, evol_constraints on HAIKU with max_tokens=60.
    raw = "Imam Bariya, ava-mohana, jiye bharatika, iheet kyebil\nImam Bariya, ave miihahaa, vaazad alkhaya\nWaiting for a bus, aeon is"
    kept, rej, st = _evol_reply(raw, "length")
    assert not kept and rej[0]["reject"]["reason"] == "truncated_generation"
    assert rej[0]["raw"] == raw


def test_a_failed_evol_request_is_a_reject_not_a_crash():
    cfg = evol.EvolConfig()
    parent = {"id": "p", "instruction": HAIKU, "input": ""}
    req = evol.request(0, 42, cfg, [parent], render, temperature=0.9, top_p=0.95)
    st = StageStats(stage="generate", sink=(rej := []).append)
    assert not list(evol.parse(req, Failure("HTTP 500 after 7 tries"), st, {"round": 0}))
    assert rej[0]["reject"]["reason"] == "request_failed" and rej[0]["meta"]["parent"] == "p"


def test_evol_parents_stop_at_the_configured_depth():
    g = load_config(None, ["generation.strategy=evol", "generation.evol.rounds=2"]).generation
    seeds = [{"id": "s", "instruction": HAIKU}]
    kept = [
        {"id": "g1-0", "instruction": "x y z", "meta": {"strategy": "evol", "depth": 1}},
        {"id": "g2-0", "instruction": "x y z w", "meta": {"strategy": "evol", "depth": 2}},
        {"id": "g3-0", "instruction": "a b c", "meta": {"strategy": "alpaca"}},
    ]
    assert [p["id"] for p in strategies.parents_for_evol(seeds, kept, g)] == ["s", "g1-0", "g3-0"]


# -- magpie -----------------------------------------------------------------------------------
def test_magpie_sends_only_the_chatml_user_prefix_and_stops_at_end_of_turn():
    req = magpie.request(5, 42, magpie.MagpieConfig(), "SmolLM2-135M-Instruct.Q4_1", top_p=0.95)
    assert req.prompt == "<|im_start|>user\n" and req.api == "completion"
    assert req.params["stop"][0] == "<|im_end|>"
    assert req.messages is None


def test_magpie_template_auto_fails_on_an_unknown_model_naming_the_setting():
    with pytest.raises(ValueError, match="set generation.magpie.template"):
        magpie.family(magpie.MagpieConfig(), "gpt-4o-mini")
    assert magpie.family(magpie.MagpieConfig(template="llama3"), "gpt-4o-mini") == "llama3"


@pytest.mark.parametrize(
    "reply, finish",
    [
        # SmolLM2 answered past its turn for 96 tokens and never closed it.
        (
            "no \nIn the case of a population where there is no known treatment (i.e., a large "
            "sample), if all patients are randomly assigned to a treatment group",
            "length",
        ),
    ],
)
def test_magpie_truncated_on_a_real_reply(reply, finish):
    assert magpie.check(reply, finish, magpie.MagpieConfig()) == "magpie_truncated"


@pytest.mark.parametrize(
    "reply",
    [
        # SmolLM2: a program instead of a request.
        "def find_max(lst):\n    max = lst[0]\n    for num in lst:\n        if num > max:\n"
        "            max = num\n    return max\n```",
        # Qwen2.5-Coder: from a bare user prefix a code model writes code.
        'n = int(input("Enter a number: "))\nfor i in range(1,n+1):\n    if n%i == 0:\n'
        '        print(f"{i} is a divisor of {n}.")\n```',
    ],
)
def test_magpie_code_only_on_real_replies(reply):
    assert magpie.check(reply, "stop", magpie.MagpieConfig()) == "magpie_code_only"


def test_magpie_too_short_on_a_real_reply():
    # SmolLM2 opened a code fence and closed its turn.
    assert magpie.check("python\n```", "stop", magpie.MagpieConfig()) == "magpie_too_short"


# No reply of these defects turned up in ~150 sampled replies of the two embedded models (their
# servers stop at the end-of-turn token and drop special tokens); they are the shapes other
# servers (no special-token stop, vLLM with skip_special_tokens=false) return, constructed here.
@pytest.mark.parametrize(
    "reply, reason",
    [
        ("", "magpie_empty"),
        ("  \n ", "magpie_empty"),
        ("What is a haiku?<|im_end|>\n<|im_start|>assistant\nA haiku is", "magpie_template_leak"),
        (
            "Name three rivers.\nassistant\nThe Nile, the Niger and the Congo.",
            "magpie_template_leak",
        ),
    ],
)
def test_magpie_constructed_defects(reply, reason):
    assert magpie.check(reply, "stop", magpie.MagpieConfig()) == reason


def test_magpie_keeps_a_real_user_turn():
    reply = (
        "I need a custom Python function that takes an integer as input and returns the largest "
        "prime divisor of that integer."
    )
    assert magpie.check(reply, "stop", magpie.MagpieConfig()) is None


# -- classification ---------------------------------------------------------------------------
@pytest.mark.parametrize("reply", ["Can the task below", "Kyoun, no kyuu", '"At the **Sinopac'])
def test_unparseable_decision_on_real_replies(reply):
    assert classify.check_decision(reply) == (None, "unparseable_decision")


@pytest.mark.parametrize("reply, flag", [("Yes", True), ("No", False), ("yes.", True)])
def test_a_decision_is_read_from_a_real_yes_or_no(reply, flag):
    assert classify.check_decision(reply) == (flag, None)


@pytest.mark.parametrize(
    "reply",
    [
        "1. car\n2. apple",
        "Label: bird",
        "1. Positive\n2. Negative\n3. Neutral",
        '2\nSentence: "The new employee was hired yesterday and will be working on Friday."\nOutput: Exclamatory',
    ],
)
def test_unparseable_instances_on_real_replies(reply):
    assert classify.check_instances(classify.parse_instances(reply)) == "unparseable_instances"


def test_output_first_pairs_are_parsed_and_one_label_is_not_a_class_set():
    reply = (
        "Label: positive\nInput: The kettle boils in a minute and looks great.\n\n"
        "**Label:** negative\n**Input:** The lid cracked on the second day."
    )
    pairs = classify.parse_instances(reply)
    assert pairs == [
        ("positive", "The kettle boils in a minute and looks great."),
        ("negative", "The lid cracked on the second day."),
    ]
    assert classify.check_instances(pairs) is None
    assert classify.check_instances(pairs[:1]) == "single_label"


@pytest.mark.parametrize(
    "reply",
    [
        # Qwen, spam-or-not seed: one label, one input.
        "Label: Spam\nInput: Hello, how are you?",
        # Qwen, leap-year seed.
        "Label: leap year\nInput: 1900",
    ],
)
def test_single_label_on_real_replies(reply):
    assert classify.check_instances(classify.parse_instances(reply)) == "single_label"


def test_a_real_two_label_reply_is_kept():
    # Qwen, customer-email intent seed.
    reply = (
        "Label: request\nInput: Customer wants to purchase a new smartphone.\n\n"
        "Label: complaint\nInput: The customer is concerned about the battery life of their phone."
    )
    pairs = classify.parse_instances(reply)
    assert [lab for lab, _ in pairs] == ["request", "complaint"]
    assert classify.check_instances(pairs) is None


# -- oss --------------------------------------------------------------------------------------
SRC = [
    ("pkg/tide.py", "import math\n\n\ndef tide(h):\n    return math.cos(h)\n"),
    ("notes.txt", "x"),
]


def test_oss_draws_consecutive_lines_by_the_index():
    cfg = oss.OssConfig(max_lines=3)
    sources = oss.usable_sources(SRC, cfg)
    assert [p for p, _ in sources] == ["pkg/tide.py"]
    a = [oss.draw_snippet(i, 42, sources, cfg) for i in range(20)]
    assert a == [oss.draw_snippet(i, 42, sources, cfg) for i in range(20)]
    lines = SRC[0][1].splitlines()
    for s in a:
        assert 1 <= s["end"] - s["start"] + 1 <= 3
        assert s["text"] == "\n".join(lines[s["start"] - 1 : s["end"]])


def test_oss_snippet_checks():
    assert (
        oss.check_snippet({"text": "\n   \n# only a comment"}, lambda t: None)[0] == "snippet_blank"
    )
    from stages.decontam import humaneval_problems

    prompt = humaneval_problems()["HumanEval/0"][0]
    from stages.decontam import humaneval_index

    reason, detail = oss.check_snippet({"text": prompt}, humaneval_index().match)
    assert (reason, detail) == ("snippet_contaminated", {"task_id": "HumanEval/0"})
    assert oss.check_snippet({"text": "return math.cos(h)"}, humaneval_index().match) == (None, {})


@pytest.mark.parametrize(
    "reply, reason",
    [
        # SmolLM2 on a snippet of stages/verify.py: a (broken) solution, no problem statement.
        (
            "```python\ndef verify_workers(num: int, max_worker=None) -> int | None  # returns the "
            "number of workers that can be verified without a maximum limit.\n"
            "verify_workers((max_worker=1), -3, False)\n```",
            "oss_code_only",
        ),
        # SmolLM2: it offered help instead of writing a problem.
        (
            "I'm ready to assist. What kind of Python code would you like help with? Is there a "
            "specific problem or project in mind that requires your creative problem-solving skills?",
            "oss_no_problem",
        ),
        # SmolLM2: an example solution, introduced as such.
        (
            "Here is an example of a Python function that uses a loop to close a file:\n```python\n"
            "# Using a while loop, it returns None when the file cannot be closed\n```",
            "oss_no_problem",
        ),
    ],
)
def test_oss_reject_on_a_real_reply(reply, reason):
    assert oss.check_problem(reply, oss.clean(reply)) == reason


def test_oss_problem_checks():
    assert oss.check_problem("", "") == "oss_no_problem"
    code = "```python\ndef tide(h):\n    return h\n```"
    assert oss.check_problem(code, oss.clean(code)) == "oss_code_only"
    ok = "Problem: Write a function `tide(h)` that returns the cosine of `h` hours."
    assert oss.clean(ok) == "Write a function `tide(h)` that returns the cosine of `h` hours."
    assert oss.check_problem(ok, oss.clean(ok)) is None


# -- the answer stage of a mix ----------------------------------------------------------------
def test_the_mixed_answer_stage_asks_only_what_needs_an_output_and_keeps_order():
    g = load_config(None, ["generation.strategy={alpaca: 1, magpie: 1}"]).generation
    recs = [
        {
            "id": "a",
            "instruction": "Say hi.",
            "input": "",
            "output": "Hi.",
            "meta": {"strategy": "alpaca"},
        },
        {
            "id": "m",
            "instruction": "Name a river.",
            "input": "",
            "output": "",
            "meta": {"strategy": "magpie"},
        },
        {
            "id": "b",
            "instruction": "Say bye.",
            "input": "",
            "output": "Bye.",
            "meta": {"strategy": "alpaca"},
        },
        {
            "id": "n",
            "instruction": "Name a lake.",
            "input": "",
            "output": "",
            "meta": {"strategy": "magpie"},
        },
    ]
    asked = []

    def llm(requests):
        for r in requests:
            asked.append(r.tag[0]["id"])
            yield r, (Failure("boom") if r.tag[0]["id"] == "n" else resp("The Nile."))

    st = StageStats(stage="answer", sink=(rej := []).append)
    out = list(strategies.answer(recs, llm, render, g, st, answer_mode="inline"))
    assert asked == ["m", "n"]
    assert [r["id"] for r in out] == ["a", "m", "b"] and out[1]["output"] == "The Nile."
    assert [r["id"] for r in rej] == ["n"] and st.balance_error() is None


def test_parse_replies_routes_each_strategy_and_balances():
    g = load_config(None, ["generation.strategy={evol: 1, magpie: 1}"]).generation
    seeds = [{"id": "s", "instruction": HAIKU, "input": "", "output": "x", "meta": {}}]
    reqs = strategies.round_requests(
        0, 6, g, seeds, render, "completion", model="SmolLM2", round_no=2
    )
    replies = {
        "evol": "Write a haiku about a night bus in Lagos, with a kigo for the rainy season.",
        "magpie": "",
    }
    st = StageStats(stage="generate", sink=(rej := []).append)
    out = list(strategies.parse_replies(((r, resp(replies[r.tag["strategy"]])) for r in reqs), st))
    n_evol = sum(r.tag["strategy"] == "evol" for r in reqs)
    assert len(out) == n_evol and all(r["meta"]["round"] == 2 for r in out + rej)
    assert {r["reject"]["reason"] for r in rej} == {"magpie_empty"}
    assert st.total == 6 and st.balance_error() is None


def test_classification_requests_draw_on_the_flagged_seeds():
    g = load_config(None, ["generation.strategy=classification"]).generation
    seeds = [
        {
            "id": f"c{i}",
            "instruction": f"Classify {i}.",
            "input": "",
            "output": "x",
            "meta": {"is_classification": True},
        }
        for i in range(3)
    ] + [
        {"id": f"o{i}", "instruction": f"Write {i}.", "input": "", "output": "x", "meta": {}}
        for i in range(9)
    ]
    reqs = strategies.round_requests(0, 4, g, seeds, render, "completion", model="m", round_no=0)
    assert all(set(r.tag["seeds"]) <= {"c0", "c1", "c2"} for r in reqs)
    # Instructions only: the output comes from the output-first request.
    assert all(r.params["stop"][0] == "Output:" for r in reqs)


def test_the_classify_stage_passes_other_strategies_and_fills_labels():
    recs = [
        {
            "id": "x",
            "instruction": "Say hi.",
            "input": "",
            "output": "Hi.",
            "meta": {"strategy": "alpaca"},
        },
        {
            "id": "c",
            "instruction": "Is the review positive or negative?",
            "input": "",
            "output": "",
            "meta": {"strategy": "classification"},
        },
        {
            "id": "d",
            "instruction": "Write a poem.",
            "input": "",
            "output": "",
            "meta": {"strategy": "classification"},
        },
    ]
    answers = {
        "classify:c": "Yes",
        "classify:d": "No",
        "classify_instances:c": "Label: positive\nInput: Lovely.\nLabel: negative\nInput: Awful.",
    }

    def llm(requests):
        for r in requests:
            yield r, resp(answers[f"{r.kind}:{r.tag['id']}"])

    st = StageStats(stage="classify")
    out = list(classify.run(recs, llm, render, classify.ClassifyConfig(), 42, 0.95, st))
    assert [r["id"] for r in out] == ["x", "c", "d"]
    assert out[1]["output"] in ("positive", "negative") and out[1]["meta"]["labels"] == [
        "negative",
        "positive",
    ]
    assert out[2]["meta"]["is_classification"] is False and out[2]["output"] == ""
    assert classify.label_balance(out) == {out[1]["output"]: 1}
    assert st.balance_error() is None


def test_a_request_is_never_a_function_of_timing():
    g = load_config(None, ["generation.strategy={alpaca: 1, evol: 1, magpie: 1}"]).generation
    seeds = [
        {"id": f"s{i}", "instruction": f"Name {i} rivers.", "input": "", "output": "x", "meta": {}}
        for i in range(4)
    ]
    kept = [
        {
            "id": "g0-0",
            "instruction": "Name a lake.",
            "input": "",
            "output": "y",
            "meta": {"strategy": "alpaca"},
        }
    ]
    one = strategies.round_requests(
        4, 8, g, seeds, render, "completion", model="SmolLM2", round_no=1, generated=kept
    )
    two = strategies.round_requests(
        4, 8, g, seeds, render, "completion", model="SmolLM2", round_no=1, generated=kept
    )
    assert [r.key("m", "completion") for r in one] == [r.key("m", "completion") for r in two]
    assert isinstance(one[0], Request)


# -- magpie on a chat-only endpoint -----------------------------------------------------------
def test_magpie_on_a_chat_endpoint_is_an_error_naming_the_setting(tmp_path):
    from pipeline.run import Run
    from tests.fake_openai import FakeOpenAI, echo_script

    with FakeOpenAI(echo_script()) as srv:
        cfg = load_config(
            None,
            [
                f"output_dir={tmp_path}",
                f"llm.base_url={srv.base_url}",
                "llm.model=gpt-4o-mini",
                "generation.strategy={alpaca: 0.5, magpie: 0.5}",
            ],
        )
        with pytest.raises(ConfigError, match="llm.api=completion") as e:
            Run(cfg, progress=False).execute()
        assert "resolves to 'chat'" in str(e.value) and "magpie" in str(e.value)
        assert srv.requests == [], "no request is sent before the error"


def test_magpie_with_an_unknown_model_names_the_template_setting(tmp_path):
    from pipeline.run import Run
    from tests.fake_openai import FakeOpenAI, echo_script

    with FakeOpenAI(echo_script()) as srv:
        cfg = load_config(
            None,
            [
                f"output_dir={tmp_path}",
                f"llm.base_url={srv.base_url}",
                "llm.model=my-finetune",
                "llm.api=completion",
                "generation.strategy=magpie",
            ],
        )
        with pytest.raises(ConfigError, match="set generation.magpie.template"):
            Run(cfg, progress=False).execute()
        assert srv.requests == []
