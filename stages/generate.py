"""Generation stages: requests built from sampled seeds, replies parsed into records, and the
follow-up requests that complete them. Each is an operator under the stage contract
(:mod:`stages.base`); the LLM comes in as a ``llm`` stream and prompt rendering as ``render``.

- :func:`batch_request` / :func:`round_requests`: the batch requests of one round. Request ``i``
  samples its examples with an RNG seeded by ``(seed, i)`` and, for ``mix_generated``, from
  the records kept before the round began, so the requests of a run are a function of the
  answers it got, never of timing.
- :func:`parse_replies` (stage ``generate``): batch replies into records. General mode
  (Alpaca-style) asks for ``Task N / Instruction: / Input: / Output:`` blocks; code mode
  (CodeAlpaca + Code Llama's recipe) asks for problems.
- :func:`answer` (stage ``answer``, general mode with ``answer_mode=chat``): Self-Instruct's
  second step, each new instruction answered by the chat endpoint.
- :func:`solve` (stage ``solve``, code mode): for each problem, separate sampled requests for
  unit tests and for k candidate solutions, stored on the record for the verify stage.
- :func:`next_round_size`: how many batch requests the next round sends.

Writes records with ``id`` (``g<request>-<item>``, stable across reruns), ``instruction``,
``input``, ``output``, ``meta`` (``request``, ``seeds``, ``template``, ``model``,
``request_id``, ``finish_reason``, ``usage``); code records add ``language``, and after
:func:`solve` ``tests`` and ``candidates``.

Reject reasons: ``request_failed`` (retries exhausted; the error is kept), ``budget_exhausted``
(the run's cost or token budget ran out before the request was sent), ``unparseable_reply``
(no task found; raw text kept), ``missing_instruction``, ``missing_output``,
``truncated_generation`` (the last item of a reply cut by ``finish_reason=length``);
``solve``: ``no_tests`` and ``no_candidates`` (nothing usable came back; request errors kept).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from stages import prompting, seeds
from stages.base import Failure, Render, Request, Response, StageStats, Stream, help_field
from stages.classify import ClassifyConfig
from stages.evol import EvolConfig
from stages.magpie import MagpieConfig
from stages.oss import OssConfig
from stages.parsing import extract_solution, extract_tests, parse_tasks

_help = help_field


@dataclass
class GenerationConfig:
    mode: str = _help(
        "general (Alpaca-style tasks) | code (problems + unit tests + candidate solutions)",
        "general",
    )
    num: int = _help("records wanted in data.json", 20)
    seed: int = _help("RNG seed for seed sampling and request order", 42)
    seeds_path: str = _help("seed task file (self-instruct schema, JSONL)", "seed_tasks.jsonl")
    num_prompt_tasks: int = _help("seed tasks shown as examples in each request", 3)
    tasks_per_request: int = _help("new tasks asked for in each general-mode request", 5)
    mix_generated: float = _help(
        "share of prompt examples drawn from already kept generated tasks (self-instruct style); 0 = seeds only",
        0.0,
    )
    temperature: float = _help("sampling temperature", 0.9)
    top_p: float = _help("nucleus sampling", 0.95)
    max_tokens: int = _help("completion tokens per request", 768)
    answer_mode: str = _help(
        "general mode: inline (use the output written in the batch) | chat (ask the chat endpoint to answer each new instruction, Self-Instruct's two-step recipe) | auto (chat for the embedded model, inline otherwise)",
        "auto",
    )
    answer_temperature: float = _help("sampling temperature for answers in answer_mode=chat", 0.3)
    max_requests: int = _help("hard cap on generation requests in one run; 0 = 50 x num", 0)
    round_size: int = _help(
        "general mode: most batch requests in one round (a round's requests are built from the records kept before it; the next round is sized from the yield so far)",
        64,
    )
    num_candidates: int = _help("code mode: candidate solutions sampled per problem", 4)
    num_test_samples: int = _help(
        "code mode: unit-test suites sampled per problem (first usable one is kept)", 1
    )
    code_overgenerate: float = _help(
        "code mode: problems generated per wanted record in a round", 2.0
    )
    code_rounds: int = _help(
        "code mode: rounds of problem generation before giving up on reaching num", 4
    )
    strategy: str | dict[str, float] = _help(
        "how new tasks are made: alpaca | classification | evol | oss | magpie, or a weighted mix such as {alpaca: 0.5, evol: 0.3, magpie: 0.2} (request i is given a strategy by an RNG seeded on i)",
        "alpaca",
    )
    evol: EvolConfig = _help("strategy evol: Evol-Instruct rewrites", factory=EvolConfig)
    magpie: MagpieConfig = _help(
        "strategy magpie: the model writes the user turn from its chat template's prefix",
        factory=MagpieConfig,
    )
    oss: OssConfig = _help(
        "strategy oss: code problems grounded in real snippets (code mode)", factory=OssConfig
    )
    classification: ClassifyConfig = _help(
        "strategy classification: Self-Instruct's output-first instances", factory=ClassifyConfig
    )

    def __post_init__(self) -> None:
        if self.mode not in ("general", "code"):
            raise ValueError(f"generation.mode={self.mode!r}: use 'general' or 'code'")
        self.strategy_mix()  # validates generation.strategy
        if self.answer_mode not in ("inline", "chat", "auto"):
            raise ValueError(
                f"generation.answer_mode={self.answer_mode!r}: use 'inline', 'chat' or 'auto'"
            )
        if self.mode not in ("general", "code"):
            raise ValueError(f"generation.mode={self.mode!r}: use 'general' or 'code'")
        if self.num < 1:
            raise ValueError(f"generation.num={self.num!r}: must be at least 1")
        if self.num_prompt_tasks < 1:
            raise ValueError(
                f"generation.num_prompt_tasks={self.num_prompt_tasks!r}: must be at least 1"
            )
        if self.tasks_per_request < 1:
            raise ValueError(
                f"generation.tasks_per_request={self.tasks_per_request!r}: must be at least 1"
            )
        if not 0.0 <= self.mix_generated <= 1.0:
            raise ValueError(
                f"generation.mix_generated={self.mix_generated!r}: must be between 0 and 1"
            )
        if self.num_candidates < 1:
            raise ValueError(
                f"generation.num_candidates={self.num_candidates!r}: must be at least 1"
            )
        if self.round_size < 1:
            raise ValueError(f"generation.round_size={self.round_size!r}: must be at least 1")
        if self.max_requests < 0:
            raise ValueError(
                f"generation.max_requests={self.max_requests!r}: use 0 (50 x num) or a positive cap"
            )

    @property
    def request_cap(self) -> int:
        return self.max_requests or 50 * self.num

    def strategy_mix(self) -> dict[str, float]:
        """``generation.strategy`` as ``{name: share}`` with shares summing to 1."""
        raw = {self.strategy: 1.0} if isinstance(self.strategy, str) else dict(self.strategy)
        allowed = STRATEGIES[self.mode]
        for name, w in raw.items():
            if name not in allowed:
                hint = " (oss needs mode code)" if name == "oss" else ""
                raise ValueError(
                    f"generation.strategy: {name!r} is not a {self.mode}-mode strategy{hint}; use {', '.join(allowed)}"
                )
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ValueError(f"generation.strategy.{name}={w!r}: a share must be a number >= 0")
        total = sum(raw.values())
        if not raw or total <= 0:
            raise ValueError(
                f"generation.strategy={self.strategy!r}: give at least one strategy a share above 0"
            )
        return {k: w / total for k, w in raw.items() if w > 0}

    def strategy_for(self, i: int) -> str:
        """The strategy of request ``i``: an RNG seeded on ``(seed, i)`` over the mix's shares."""
        mix = self.strategy_mix()
        if len(mix) == 1:
            return next(iter(mix))
        x = random.Random(f"{self.seed}:strategy:{i}").random()
        acc = 0.0
        for name, share in mix.items():
            acc += share
            if x < acc:
                return name
        return name


# Strategies each mode can run: OSS-Instruct makes code problems only; classification and
# Magpie make general tasks (their instructions carry no function to test).
STRATEGIES = {
    "general": ("alpaca", "classification", "evol", "magpie"),
    "code": ("alpaca", "evol", "oss"),
}


# -- batch requests ---------------------------------------------------------------------------
def batch_request(
    i: int,
    cfg: GenerationConfig,
    pool: list[dict],
    render: Render,
    api: str,
    *,
    generated: list[dict] | None = None,
    answer_mode: str = "inline",
) -> Request:
    """Batch request ``i`` (new tasks in general mode, new problems in code mode). A completion
    prompt ends inside the next block, so its reply is parsed with that header in front."""
    if cfg.mode == "general":
        rng = random.Random(f"{cfg.seed}:general:{i}")
        examples = seeds.sample_seeds(
            pool, cfg.num_prompt_tasks, rng, generated or [], cfg.mix_generated
        )
        template, text = prompting.general_prompt(render, examples, cfg.tasks_per_request, api)
        header, max_tokens = "Task", cfg.max_tokens
    else:
        rng = random.Random(f"{cfg.seed}:code:{i}")
        examples = seeds.sample_seeds(pool, cfg.num_prompt_tasks, rng)
        template, text = prompting.code_problem_prompt(render, examples, cfg.tasks_per_request, api)
        header, max_tokens = "Problem", min(cfg.max_tokens, 512)
    # A per-request sampling seed makes runs reproducible where the server honours it.
    params = {
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_tokens": max_tokens,
        "seed": cfg.seed * 100003 + i,
    }
    if api == "completion":
        # One stop marker past the asked-for batch keeps a base-style model from rambling.
        params["stop"] = [f"{header} {len(examples) + cfg.tasks_per_request + 1}"]
        if cfg.mode == "general" and answer_mode == "chat":
            # The output is asked for separately: stop at the first "Output:" and spend no
            # tokens on an answer that would be thrown away.
            params["stop"] = ["Output:", f"\nTask {len(examples) + 2}"]
            params["max_tokens"] = min(cfg.max_tokens, 160)
        req = Request(kind="generate", prompt=text, params=params, sample=i)
    else:
        req = Request(
            kind="generate", messages=[{"role": "user", "content": text}], params=params, sample=i
        )
    req.tag = {
        "template": template,
        "seeds": [e["id"] for e in examples],
        "index": i,
        "prefix": f"{header} {len(examples) + 1}\nInstruction:" if api == "completion" else "",
    }
    return req


def round_requests(
    start: int,
    count: int,
    cfg: GenerationConfig,
    pool: list[dict],
    render: Render,
    api: str,
    *,
    generated: list[dict] | None = None,
    answer_mode: str = "inline",
) -> list[Request]:
    """Requests ``start .. start+count-1``; ``generated`` is what was kept before the round."""
    frozen = list(generated or [])
    return [
        batch_request(i, cfg, pool, render, api, generated=frozen, answer_mode=answer_mode)
        for i in range(start, start + count)
    ]


def next_round_size(cfg: GenerationConfig, kept: int, requests_sent: int) -> int:
    """Batch requests for the next general-mode round: what the yield so far says is needed to
    reach ``num`` (the first round assumes every asked-for task is kept), within
    ``round_size`` and the request cap. 0 when nothing more is to be sent."""
    wanted = cfg.num - kept
    left = cfg.request_cap - requests_sent
    if wanted <= 0 or left <= 0:
        return 0
    if requests_sent:
        # A little over the measured yield: one round too many costs a round trip of latency,
        # a few records too many cost only their tokens (they are kept as over_target rejects).
        need = math.ceil(1.15 * wanted / max(kept / requests_sent, 0.05))
    else:
        need = math.ceil(wanted / cfg.tasks_per_request)
    return max(1, min(need, cfg.round_size, left))


# -- stage: generate --------------------------------------------------------------------------
def _usage(resp: Response) -> dict:
    return {"prompt_tokens": resp.prompt_tokens, "completion_tokens": resp.completion_tokens}


def parse_replies(
    answers: Iterable[tuple[Request, Response | Failure]],
    stats: StageStats,
    *,
    mode: str = "general",
    require_output: bool = True,
) -> Iterator[dict]:
    """The ``generate`` stage: each batch reply parsed into records (a failed request is a
    rejected record with its error)."""
    for req, resp in answers:
        i = req.tag["index"]
        if isinstance(resp, Failure):
            stats.drop({"id": f"g{i}", "meta": {"request": i, "error": resp.error}}, resp.kind)
            continue
        meta = {
            **req.tag.get("meta", {}),
            "template": req.tag["template"],
            "seeds": req.tag["seeds"],
            "model": resp.model,
            "request_id": resp.request_id,
            "usage": _usage(resp),
            "cached": resp.cached,
        }
        yield from records_from_reply(
            resp.text,
            request_index=i,
            finish_reason=resp.finish_reason,
            meta=meta,
            stats=stats,
            mode=mode,
            prefix=req.tag["prefix"],
            require_output=require_output,
        )


def records_from_reply(
    text: str,
    *,
    request_index: int,
    finish_reason: str,
    meta: dict,
    stats: StageStats,
    mode: str = "general",
    prefix: str = "",
    require_output: bool = True,
) -> Iterator[dict]:
    """Parse one reply into records; drops go to ``stats`` with the raw text kept."""
    items = parse_tasks(prefix + text, need_output=(mode == "general"))
    base = {**meta, "request": request_index, "reply_finish_reason": finish_reason}
    if not items:
        rec = {"id": f"g{request_index}", "meta": {**base, "finish_reason": finish_reason}}
        stats.drop({**rec, "raw": text}, "unparseable_reply")
        return
    for j, item in enumerate(items):
        last = j == len(items) - 1
        # Only the last item of a reply cut by the length limit is cut; the ones before it were
        # followed by another item, so they are complete.
        rec = {
            "id": f"g{request_index}-{j}",
            "instruction": item.instruction or "",
            "input": item.input,
            "meta": {**base, "finish_reason": finish_reason if last else "stop"},
        }
        if mode == "general":
            rec["output"] = item.output or ""
        # A cut-off last item is truncated even when only its output would be lost, unless the
        # output is re-asked anyway and the instruction itself is complete (it has a next field).
        if (
            last
            and finish_reason == "length"
            and (require_output or not (item.input or item.output))
        ):
            stats.drop({**rec, "raw": item.raw}, "truncated_generation")
        elif not item.instruction:
            stats.drop({**rec, "raw": item.raw}, "missing_instruction")
        elif mode == "general" and require_output and not item.output:
            stats.drop({**rec, "raw": item.raw}, "missing_output")
        else:
            if mode == "code":
                # A problem is its first paragraph: small models append rambling "rules" after
                # a blank line that contradict the problem and poison the tests and solutions
                # prompts.
                rec["instruction"] = rec["instruction"].split("\n\n")[0].strip()
                rec["language"] = "python"
            yield stats.keep(rec)


# -- stage: answer ----------------------------------------------------------------------------
def answer(
    records: Iterable[dict],
    llm: Stream,
    render: Render,
    cfg: GenerationConfig,
    stats: StageStats,
) -> Iterator[dict]:
    """The ``answer`` stage: Self-Instruct's second step. Each new instruction (with its input)
    goes to the chat endpoint and the reply becomes the output. Small instruction-tuned models
    answer far better in chat than they continue a few-shot block."""

    def requests() -> Iterator[Request]:
        for rec in stats.admit(records):
            yield answer_request(rec, render, cfg)

    for req, resp in llm(requests()):
        rec = req.tag
        if isinstance(resp, Failure):
            stats.drop({**rec, "meta": {**rec["meta"], "error": resp.error}}, resp.kind)
            continue
        yield stats.keep(answered(rec, resp))


def answer_request(rec: dict, render: Render, cfg: GenerationConfig) -> Request:
    """The chat request that answers ``rec`` (its ``tag`` is the record)."""
    params = {
        "temperature": cfg.answer_temperature,
        "top_p": cfg.top_p,
        "max_tokens": cfg.max_tokens,
        "seed": cfg.seed,
    }
    text = prompting.answer_prompt(render, rec)
    return Request(
        kind="answer",
        messages=[{"role": "user", "content": text}],
        params=params,
        tag=rec,
        api="chat",
    )


def answered(rec: dict, resp: Response) -> dict:
    """``rec`` with the chat reply as its output and the answer's provenance in ``meta``."""
    meta = {
        **rec["meta"],
        "inline_output": rec.get("output", ""),
        "answer": {
            "finish_reason": resp.finish_reason,
            "request_id": resp.request_id,
            "usage": _usage(resp),
        },
        "finish_reason": resp.finish_reason,
    }
    return {**rec, "output": resp.text.strip(), "meta": meta}


# -- stage: solve (code mode) -----------------------------------------------------------------
def code_request(
    kind: str, text: str, sample: int, problem_id: str, cfg: GenerationConfig, api: str
) -> Request:
    params = {
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_tokens": cfg.max_tokens,
        "seed": (cfg.seed * 100003 + sample * 7919 + sum(map(ord, problem_id))) % (2**31),
    }
    if api == "completion":
        params["stop"] = ["```", "### Problem"]
        return Request(kind=kind, prompt=text.rstrip("\n") + "\n", params=params, sample=sample)
    return Request(
        kind=kind, messages=[{"role": "user", "content": text}], params=params, sample=sample
    )


def solve(
    problems: Iterable[dict],
    llm: Stream,
    render: Render,
    cfg: GenerationConfig,
    examples: list[dict],
    api: str,
    stats: StageStats,
) -> Iterator[dict]:
    """The ``solve`` stage: ``num_test_samples`` unit-test suites and ``num_candidates``
    candidate solutions per problem, each its own sampled request, attached to the record.
    Answers arrive in request order, so a problem is complete when its last request lands."""
    prefix = "```python\n" if api == "completion" else ""

    def requests() -> Iterator[Request]:
        for p in stats.admit(problems):
            ex = random.Random(f"{cfg.seed}:ex:{p['id']}").choice(examples)
            subs = []
            for s in range(cfg.num_test_samples):
                _, text = prompting.code_tests_prompt(render, p, ex, api)
                subs.append(code_request("tests", text, s, p["id"], cfg, api))
            for s in range(cfg.num_candidates):
                _, text = prompting.code_solution_prompt(render, p, ex, api)
                subs.append(code_request("solutions", text, s, p["id"], cfg, api))
            for j, req in enumerate(subs):
                req.tag = (p, j == len(subs) - 1)
                yield req

    got: dict[str, list[str]] = {"tests": [], "solutions": []}
    failed: dict[str, list[Failure]] = {"tests": [], "solutions": []}
    for req, resp in llm(requests()):
        problem, last = req.tag
        if isinstance(resp, Failure):
            failed[req.kind].append(resp)
        else:
            text = prefix + resp.text
            got[req.kind].append(
                extract_tests(text, prompting.names_under_test(problem["instruction"]))
                if req.kind == "tests"
                else extract_solution(text)
            )
        if not last:
            continue
        rec = attach_code(problem, got["tests"], got["solutions"])
        errors = [f"{k}: {f.error}" for k, fs in failed.items() for f in fs]
        if errors:
            rec["meta"] = {**rec.get("meta", {}), "request_errors": errors}
        missing = "tests" if not rec["tests"] else "solutions" if not rec["candidates"] else None
        if missing is None:
            yield stats.keep(rec)
        elif failed[missing] and not got[missing]:
            # Nothing came back because every request failed: say so, not "no tests".
            stats.drop(rec, failed[missing][0].kind)
        else:
            stats.drop(rec, "no_tests" if missing == "tests" else "no_candidates")
        got = {"tests": [], "solutions": []}
        failed = {"tests": [], "solutions": []}


def attach_code(problem: dict, tests: Iterable[str], candidates: Iterable[str]) -> dict:
    """The problem record with its first non-empty test suite and its non-empty candidates."""
    tests = [t for t in (t.strip() for t in tests) if t]
    return {
        **problem,
        "tests": tests[0] if tests else "",
        "candidates": [c for c in candidates if c.strip()],
        "output": "",
    }
