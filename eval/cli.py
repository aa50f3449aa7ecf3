"""Command line of `python -m eval`: `run`, `report` and `gate` (see `eval/__main__.py`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retrieval.errors import UsageError, run_cli


def _add_judge_args(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--judge", choices=("local", "none", "remote"), default=default,
                   help="judge for faithfulness/answer relevancy/context precision/recall: the "
                        "local model (weak when it is the embedded 135M one), none, or remote "
                        "(implied by --judge-url)")
    p.add_argument("--judge-url", help="OpenAI-compatible base URL of the judge")
    p.add_argument("--judge-model", help="judge model name (remote) or local model id/path")
    p.add_argument("--judge-limit", type=int, default=None,
                   help="LLM-judge only the first N answerable questions (others: non-LLM and "
                        "project metrics only)")
    p.add_argument("--common", action="store_true",
                   help="score only questions answered by every system (per question group)")
    p.add_argument("--judge-timeout", type=float, default=300.0,
                   help="seconds per LLM-judged metric per row before it is 'not scored'")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for `--help` tests)."""
    parser = argparse.ArgumentParser(
        prog="python -m eval", description="Evaluate casewise systems with RAGAS and project "
        "metrics, render reports, and gate releases on thresholds.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="answer question sets with each system, score, report")
    run.add_argument("--questions", action="append", required=True, metavar="FILE.jsonl",
                     help="question file (repeatable)")
    run.add_argument("--systems", default="no-rag,base",
                     help="comma-separated: no-rag, base, finetuned, remote")
    run.add_argument("--harmful", metavar="FILE.csv", help="harmful requests (column 'goal')")
    run.add_argument("--adapter", help="LoRA adapter directory for the finetuned system")
    run.add_argument("--model", default="default", help="base model (default: embedded)")
    run.add_argument("--llm-url", help="OpenAI-compatible base URL for the remote system")
    run.add_argument("--llm-model", help="model name for the remote system")
    run.add_argument("--home", help="index home (default: CASEWISE_HOME or ./.casewise)")
    run.add_argument("--embedder", help="embedder name/path (default: settings)")
    run.add_argument("--top-k", type=int, default=5, help="passages per question")
    run.add_argument("--max-new-tokens", type=int, default=256, help="answer length budget")
    run.add_argument("--limit", type=int, help="at most N questions from each file")
    run.add_argument("--score-only", action="store_true",
                     help="answer nothing: score the cached answers (missing ones are reported)")
    run.add_argument("--spread", action="store_true",
                     help="with --limit: take N evenly spaced questions instead of the first N")
    run.add_argument("--threads", type=int, default=None,
                     help="torch CPU threads (1 is often much faster on a busy shared machine)")
    run.add_argument("--out", required=True, type=Path, help="run directory (cache + report)")
    _add_judge_args(run, "local")

    rep = sub.add_parser("report", help="re-score cached answers and re-render the report")
    rep.add_argument("dir", type=Path, help="run directory")
    _add_judge_args(rep, None)

    gate = sub.add_parser("gate", help="exit 1 when a metric misses its threshold")
    gate.add_argument("dir", type=Path, help="run directory with results.json")
    gate.add_argument("--min", action="append", default=[], metavar="METRIC=VALUE",
                      help="metric must be at least VALUE (repeatable)")
    gate.add_argument("--max", action="append", default=[], metavar="METRIC=VALUE",
                      help="metric must be at most VALUE (repeatable)")
    gate.add_argument("--system", action="append", default=None,
                      help="system(s) to check (default: every system in the run)")
    return parser


def _judge_config(args, base: dict | None = None):
    from eval.runner import JudgeConfig

    base = dict(base or {})
    kind = args.judge or ("remote" if args.judge_url else base.get("kind", "local"))
    if kind == "remote":
        base.update(url=args.judge_url or base.get("url"),
                    model=args.judge_model or base.get("model"))
    elif args.judge_model:
        base["model"] = args.judge_model
    elif args.judge and args.judge != base.get("kind"):
        base["model"] = None
    if args.judge_limit is not None:
        base["limit"] = args.judge_limit
    base.update(kind=kind, timeout=args.judge_timeout)
    return JudgeConfig(**base)


def _run(args) -> int:
    from eval.runner import RunConfig, run
    from eval.systems import SystemOptions
    from retrieval.settings import Settings

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads ({args.threads}) must be at least 1")
        import torch

        torch.set_num_threads(args.threads)
    settings = Settings.resolve(home=args.home, embedder=args.embedder)
    options = SystemOptions(
        settings=settings, model=args.model, adapter=args.adapter, llm_url=args.llm_url,
        llm_model=args.llm_model, top_k=args.top_k, max_new_tokens=args.max_new_tokens,
    )
    config = RunConfig(
        questions=args.questions, systems=[s.strip() for s in args.systems.split(",") if s.strip()],
        out=args.out, options=options, harmful=args.harmful, limit=args.limit, spread=args.spread,
        judge=_judge_config(args),
    )
    results = run(config, answer=not args.score_only, common=args.common)
    _print_summary(results, args.out)
    return 0


def _report(args) -> int:
    from eval.runner import load_run, score

    config, _ = load_run(args.dir)
    results = score(args.dir, judge=_judge_config(args, config["judge"]), common=args.common)
    _print_summary(results, args.dir)
    return 0


def _print_summary(results: dict, out: Path) -> None:
    from eval.report import summary_table

    print(summary_table(results))
    print(f"\nreport: {out / 'report.html'} (also report.md, results.json)")


def _gate(args) -> int:
    from eval.gate import check, load_results, parse_threshold

    thresholds = [parse_threshold("min", t) for t in args.min]
    thresholds += [parse_threshold("max", t) for t in args.max]
    if not thresholds:
        raise UsageError("give at least one --min or --max threshold")
    failures = check(load_results(args.dir), thresholds, args.system)
    for f in failures:
        print(f)
    if failures:
        print(f"gate: {len(failures)} threshold(s) failed", file=sys.stderr)
        return 1
    print(f"gate: all {len(thresholds)} threshold(s) passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (the policy of `retrieval.errors`)."""
    args = build_parser().parse_args(argv)
    command = {"run": _run, "report": _report, "gate": _gate}[args.command]
    return run_cli(
        lambda: command(args),
        interrupted="interrupted: answers so far are cached; re-run the same command to resume",
    )
