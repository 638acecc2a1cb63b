"""Generation strategies: which operator makes request ``i`` of a round, and the routing of its
reply. ``generation.strategy`` names one strategy or a weighted mix
(:meth:`stages.generate.GenerationConfig.strategy_for` picks request ``i``'s by an RNG seeded on
``i``), so a run's requests stay a function of the answers it got.

- ``alpaca``: :func:`stages.generate.batch_request` (the few-shot brainstorm), unchanged;
- ``classification``: the same brainstorm over the classification seeds (``meta.is_classification``)
  asking for instructions only; the ``classify`` stage (:mod:`stages.classify`) then decides and
  fills the instances output-first;
- ``evol``: :mod:`stages.evol`; ``magpie``: :mod:`stages.magpie`; ``oss``: :mod:`stages.oss`.

Every record carries its provenance in ``meta``: ``strategy``, ``parent`` (evol), ``round``.
:func:`parse_replies` is the ``generate`` stage over a mixed round; :func:`answer` is the
``answer`` stage that asks only the records that still need an output and passes the others
through, in input order. Reject reasons are those of each strategy's module.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

from stages import evol, generate, magpie, oss
from stages.base import Failure, Render, Request, Response, StageStats, Stream
from stages.generate import GenerationConfig

# Strategies whose instruction comes without an output: the answer stage writes it.
ANSWERED_IN_CHAT = ("evol", "magpie")


def parents_for_evol(pool: list[dict], generated: list[dict], cfg: GenerationConfig) -> list[dict]:
    """Seeds and the records kept before the round that may still be evolved (depth below
    ``evol.rounds``); in code mode only problems (their tests are written later)."""
    kept = [r for r in generated if evol.depth_of(r) < cfg.evol.rounds and r.get("instruction")]
    return list(pool) + kept


def round_requests(
    start: int,
    count: int,
    cfg: GenerationConfig,
    pool: list[dict],
    render: Render,
    api: str,
    *,
    model: str,
    round_no: int,
    generated: list[dict] | None = None,
    answer_mode: str = "inline",
    snippets: list[tuple[str, list[str]]] | None = None,
    stats: StageStats | None = None,
    contaminated: Callable[[str], str | None] | None = None,
) -> list[Request]:
    """Requests ``start .. start+count-1``, each made by its strategy. An OSS snippet that fails
    :func:`stages.oss.check_snippet` is dropped through ``stats`` (stage ``generate``) and no
    request is sent for it."""
    frozen = list(generated or [])
    cls_pool = [s for s in pool if (s.get("meta") or {}).get("is_classification")] or pool
    evol_parents = parents_for_evol(pool, frozen, cfg)
    out = []
    for i in range(start, start + count):
        name = cfg.strategy_for(i)
        prov = {"strategy": name, "round": round_no}
        if name in ("alpaca", "classification"):
            is_cls = name == "classification"
            req = generate.batch_request(
                i, cfg, cls_pool if is_cls else pool, render, api,
                generated=[r for r in frozen if (r.get("meta") or {}).get("label")] if is_cls else frozen,
                answer_mode="chat" if is_cls else answer_mode,
            )  # fmt: skip
            req.tag["meta"] = prov
            req.tag["strategy"] = name
        elif name == "evol":
            req = evol.request(
                i, cfg.seed, cfg.evol, evol_parents, render,
                temperature=cfg.temperature, top_p=cfg.top_p,
            )  # fmt: skip
        elif name == "magpie":
            req = magpie.request(i, cfg.seed, cfg.magpie, model, top_p=cfg.top_p)
        else:
            snippet = oss.draw_snippet(i, cfg.seed, snippets or [], cfg.oss)
            reason, detail = oss.check_snippet(snippet, contaminated or (lambda _t: None))
            if reason:
                if stats is not None:
                    rec = {"id": f"g{i}", "meta": {**prov, "request": i, "snippet": snippet}}
                    stats.drop(rec, reason, **detail)
                continue
            req = oss.request(
                i, cfg.seed, cfg.oss, snippet, render,
                temperature=cfg.temperature, top_p=cfg.top_p,
            )  # fmt: skip
        req.tag["round"] = round_no
        out.append(req)
    return out


def parse_replies(
    answers: Iterable[tuple[Request, Response | Failure]],
    stats: StageStats,
    *,
    mode: str = "general",
    require_output: bool = True,
) -> Iterator[dict]:
    """The ``generate`` stage over a round of any strategies."""
    for req, resp in answers:
        name = req.tag.get("strategy", "alpaca")
        if name in ("alpaca", "classification"):
            yield from generate.parse_replies(
                [(req, resp)],
                stats,
                mode=mode,
                require_output=require_output and name == "alpaca",
            )
            continue
        meta = {"round": req.tag["round"]}
        if not isinstance(resp, Failure):
            meta.update(
                model=resp.model,
                request_id=resp.request_id,
                usage={
                    "prompt_tokens": resp.prompt_tokens,
                    "completion_tokens": resp.completion_tokens,
                },
                cached=resp.cached,
            )
        parse = {"evol": evol.parse, "magpie": magpie.parse, "oss": oss.parse}[name]
        for rec in parse(req, resp, stats, meta):
            if mode == "code":
                rec["language"] = "python"
                rec.pop("output", None)
            yield rec


def needs_answer(rec: dict, answer_mode: str) -> bool:
    """Whether the answer stage must write ``rec``'s output."""
    meta = rec.get("meta") or {}
    name = meta.get("strategy", "alpaca")
    if name == "alpaca":
        return answer_mode == "chat"
    if name == "classification":
        return meta.get("is_classification") is False
    return name in ANSWERED_IN_CHAT


def answer(
    records: Iterable[dict],
    llm: Stream,
    render: Render,
    cfg: GenerationConfig,
    stats: StageStats,
    *,
    answer_mode: str,
) -> Iterator[dict]:
    """The ``answer`` stage of a mixed run: a chat answer for each record that
    :func:`needs_answer`, the others kept as they are; records leave in the order they came
    (answers arrive in request order, so each one lets out the records queued before it)."""
    done = object()
    queue: deque[list] = deque()

    def requests() -> Iterator[Request]:
        for rec in stats.admit(records):
            if needs_answer(rec, answer_mode):
                slot = [rec, None]
                queue.append(slot)
                req = generate.answer_request(rec, render, cfg)
                req.tag = slot
                yield req
            else:
                queue.append([rec, rec])

    def release() -> Iterator[dict]:
        while queue and queue[0][1] is not None:
            _, out = queue.popleft()
            if out is not done:
                yield stats.keep(out)

    for req, resp in llm(requests()):
        slot = req.tag
        rec = slot[0]
        if isinstance(resp, Failure):
            stats.drop({**rec, "meta": {**rec["meta"], "error": resp.error}}, resp.kind)
            slot[1] = done
        else:
            slot[1] = generate.answered(rec, resp)
        yield from release()
    yield from release()
