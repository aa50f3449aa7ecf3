"""Command line of `python -m eval`: `run`, `report`, `gate` and `compare` (see `eval/__main__.py`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.llm import BACKENDS
from agent.prompts import MODEL_CHECK_MAX_NEW_TOKENS
from eval.systems import EVAL_MAX_NEW_TOKENS
from retrieval.errors import UsageError, at_least, run_cli

RUN_EXAMPLES = """examples:
  # every set, three systems (the release evaluation; docs/eval.md has the full command)
  python -m eval run --questions ../shared/data/emanual/qa_dev.jsonl \\
      --questions eval/data/unanswerable.jsonl \\
      --questions eval/data/unanswerable_in_domain.jsonl \\
      --conversations eval/data/conversations.jsonl \\
      --harmful ../shared/data/safety/advbench_dev.csv \\
      --systems no-rag,base,finetuned --adapter outputs/adapter \\
      --home runs/tv-home --judge none --out runs/eval-emanual
  # a quick look: 10 questions per file, evenly spread
  python -m eval run --questions eval/data/unanswerable_in_domain.jsonl --limit 10 --spread \\
      --systems base --home runs/tv-home --judge none --out runs/quick
  # the same in chunks of the shared CPU lock: repeat until it prints the report
  flock /tmp/casewise-cpu.lock python -m eval run ... --max-minutes 9
Killed or interrupted? Run the same command again: it resumes from the cache. A cached answer
is reused only for the same question and options (exit 2 names what changed: use a new --out)."""

REPORT_EXAMPLES = """examples:
  python -m eval report runs/eval-emanual                  # re-render, nothing regenerated
  python -m eval report runs/eval-emanual --judge-url http://localhost:8000/v1 \\
      --judge-model Qwen2.5-7B-Instruct                   # re-score with a strong judge"""

GATE_EXAMPLES = """examples:
  python -m eval gate runs/eval-emanual --system finetuned --min citation_accuracy=0.5 \\
      --max answered_unanswerable_rate@in-domain-unanswerable:report=0.2 \\
      --max over_refusal_rate=0.05 --min refusal_rate=0.95 --min turn_correct_rate=0.5
Any metric of results.json can be gated, over every row (METRIC) or in one question set
(METRIC@SET; the report's per-set table names the sets). Exit 0: all pass; 1: a threshold
failed (or had no scored rows); 2: bad usage."""

COMPARE_EXAMPLES = """examples:
  python -m eval compare runs/eval-emanual:base runs/eval-emanual:finetuned
  python -m eval compare runs/a runs/b --judge-url http://localhost:8000/v1 \\
      --judge-model Qwen2.5-7B-Instruct --out runs/a-vs-b
Without --judge-url the preference is reference-based (ROUGE-L and citation correctness), and
the report says so."""


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


def _sub(sub, name: str, help_: str, examples: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=help_, epilog=examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for `--help` tests)."""
    parser = argparse.ArgumentParser(
        prog="python -m eval", description="Evaluate casewise systems with RAGAS and project "
        "metrics, render reports, gate releases on thresholds, compare two systems.",
        epilog="Run `python -m eval COMMAND --help` for each command's examples.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = _sub(sub, "run", "answer question sets with each system, score, report", RUN_EXAMPLES)
    run.add_argument("--questions", action="append", default=[], metavar="FILE.jsonl",
                     help="question file (repeatable)")
    run.add_argument("--conversations", action="append", default=[], metavar="FILE.jsonl",
                     help="scripted multi-turn conversations (repeatable; docs/eval.md)")
    run.add_argument("--systems", default="no-rag,base",
                     help="comma-separated: no-rag, base, finetuned, remote")
    run.add_argument("--harmful", metavar="FILE.csv", help="harmful requests (column 'goal')")
    run.add_argument("--adapter", help="LoRA adapter directory for the finetuned system")
    run.add_argument("--model", default="default", help="base model (default: embedded)")
    run.add_argument("--backend", choices=BACKENDS,
                     help="local inference engine (default: CASEWISE_LLM_BACKEND, else auto: "
                          "llama.cpp where it can run the model)")
    run.add_argument("--llm-url", help="OpenAI-compatible base URL for the remote system")
    run.add_argument("--llm-model", help="model name for the remote system")
    run.add_argument("--home", help="index home (default: CASEWISE_HOME or ./.casewise)")
    run.add_argument("--chroma-url", help="Chroma server URL (default: the embedded store "
                                          "under --home; CASEWISE_CHROMA_URL)")
    run.add_argument("--embedder", help="embedder name/path (default: settings)")
    run.add_argument("--top-k", type=int, default=5, help="passages per question")
    run.add_argument("--max-new-tokens", type=int, default=EVAL_MAX_NEW_TOKENS,
                     help=f"answer length budget, every system (default {EVAL_MAX_NEW_TOKENS}; "
                          "the agent CLI's is 256)")
    run.add_argument("--model-check", action="store_true",
                     help="agent systems ask their model whether each kept sentence's passage "
                          "states it (agent --model-check)")
    run.add_argument("--model-check-tokens", type=int, default=MODEL_CHECK_MAX_NEW_TOKENS,
                     metavar="N", help="tokens each model-check reply may take (default "
                     f"{MODEL_CHECK_MAX_NEW_TOKENS}; a model that thinks first needs a few "
                     "hundred)")
    run.add_argument("--limit", type=int, help="at most N questions (conversations) per file")
    run.add_argument("--score-only", action="store_true",
                     help="answer nothing: score the cached answers (missing ones are reported)")
    run.add_argument("--spread", action="store_true",
                     help="with --limit: take N evenly spaced questions instead of the first N")
    run.add_argument("--threads", type=int, default=None,
                     help="torch CPU threads (1 is often much faster on a busy shared machine)")
    run.add_argument("--batch-size", type=int, default=16,
                     help="questions answered at once when the model backend can batch "
                          "(complete_many); otherwise one at a time")
    run.add_argument("--max-minutes", type=float, default=None,
                     help="start no new answer after M minutes (answers are cached; run the "
                          "same command again to continue: one CPU-lock chunk at a time)")
    run.add_argument("--out", required=True, type=Path, help="run directory (cache + report)")
    _add_judge_args(run, "local")

    rep = _sub(sub, "report", "re-score cached answers and re-render the report",
               REPORT_EXAMPLES)
    rep.add_argument("dir", type=Path, help="run directory")
    _add_judge_args(rep, None)

    gate = _sub(sub, "gate", "check thresholds; exit 1 when a metric misses one", GATE_EXAMPLES)
    gate.add_argument("dir", type=Path, help="run directory with results.json")
    gate.add_argument("--min", action="append", default=[], metavar="METRIC[@SET]=VALUE",
                      help="metric must be at least VALUE (repeatable)")
    gate.add_argument("--max", action="append", default=[], metavar="METRIC[@SET]=VALUE",
                      help="metric must be at most VALUE (repeatable)")
    gate.add_argument("--system", action="append", default=None,
                      help="system(s) to check (default: every system in the run)")

    cmp_ = _sub(sub, "compare", "win/tie/loss of system A against system B, with reasons",
                COMPARE_EXAMPLES)
    cmp_.add_argument("run_a", metavar="RUN_A", help="run directory, or DIR:SYSTEM")
    cmp_.add_argument("run_b", metavar="RUN_B", help="run directory, or DIR:SYSTEM")
    cmp_.add_argument("--judge-url", help="OpenAI-compatible base URL of the judge")
    cmp_.add_argument("--judge-model", help="judge model name on that server")
    cmp_.add_argument("--out", type=Path,
                      help="output directory (default: RUN_B's directory/compare-A-vs-B)")
    return parser


def _judge_config(args, base: dict | None = None):
    from eval.judge import JudgeConfig

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

    if not args.questions and not args.conversations and not args.harmful:
        raise UsageError("give at least one --questions, --conversations or --harmful file")
    if args.threads is not None:
        at_least("--threads", args.threads)
        import torch

        torch.set_num_threads(args.threads)
    settings = Settings.resolve(home=args.home, embedder=args.embedder,
                                chroma_url=args.chroma_url)
    options = SystemOptions(
        settings=settings, model=args.model, adapter=args.adapter, llm_url=args.llm_url,
        llm_model=args.llm_model, top_k=args.top_k, max_new_tokens=args.max_new_tokens,
        backend=args.backend, model_check=args.model_check,
        model_check_tokens=args.model_check_tokens,
    )
    config = RunConfig(
        questions=args.questions, systems=[s.strip() for s in args.systems.split(",") if s.strip()],
        out=args.out, options=options, harmful=args.harmful, conversations=args.conversations,
        limit=args.limit, spread=args.spread, judge=_judge_config(args),
        batch_size=args.batch_size, max_minutes=args.max_minutes,
    )
    results = run(config, answer=not args.score_only, common=args.common)
    if results is None:  # the time budget ran out; the answers so far are cached
        return 0
    _print_summary(results, args.out)
    return 0


def _report(args) -> int:
    from eval.runner import load_run, score

    config, _, _ = load_run(args.dir)
    results = score(args.dir, judge=_judge_config(args, config["judge"]), common=args.common)
    _print_summary(results, args.dir)
    return 0


def _print_summary(results: dict, out: Path) -> None:
    from eval.report import set_table, summary_table

    print(set_table(results))
    print()
    print(summary_table(results))
    print(f"\nreport: {out / 'report.html'} (also report.md, results.json)")


def _gate(args) -> int:
    from eval.gate import check, load_results, parse_threshold, table

    thresholds = [parse_threshold("min", t) for t in args.min]
    thresholds += [parse_threshold("max", t) for t in args.max]
    if not thresholds:
        raise UsageError("give at least one --min or --max threshold")
    checks = check(load_results(args.dir), thresholds, args.system)
    print(table(checks))
    failures = [c.failure() for c in checks if not c.passed]
    for f in failures:
        print(f)
    if failures:
        print(f"gate: {len(failures)} of {len(checks)} check(s) failed", file=sys.stderr)
        return 1
    print(f"gate: all {len(checks)} check(s) passed")
    return 0


def _compare(args) -> int:
    from eval.compare import compare, load_side, summary

    if bool(args.judge_url) != bool(args.judge_model):
        raise UsageError("--judge-url and --judge-model go together")
    judge = None
    if args.judge_url:
        from agent.llm import OpenAIChatModel

        judge = OpenAIChatModel(args.judge_url, args.judge_model)
    result = compare(load_side(args.run_a), load_side(args.run_b), judge=judge, out=args.out)
    print(summary(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (the policy of `retrieval.errors`)."""
    args = build_parser().parse_args(argv)
    command = {"run": _run, "report": _report, "gate": _gate, "compare": _compare}[args.command]
    return run_cli(
        lambda: command(args),
        interrupted="interrupted: answers so far are cached; re-run the same command to resume",
    )
