"""python bench/answers.py [--adapter DIR] [--unanswerable PATH] [--limit N [--spread]] [--json]

Answer quality of the whole agent (guard, retrieval, grading, reason/answer, verification,
quotes) on `../shared/data/emanual/`: every dev question of `qa_dev.jsonl` (95, answerable, with
a gold page and a reference answer) plus an in-domain unanswerable set (`--unanswerable PATH`, a
question JSONL with `answerable: false`: questions about the indexed TV that the manual does not
answer). The index holds `smart_tv_manual.pdf` only (built under `--home` on first use): the FAQ
history is left out because its answers are the dev references of the paraphrased questions.

Systems (`--configs`, comma-separated):

- `ranker`: no model call at all; every answer is the quote the deterministic ranker picks
  (`retrieval.grounding.ranked_quote`), or the abstain answer below the relevance bar;
- `base:generate` / `base:extract`: the embedded SmolLM2-135M-Instruct; `generate` = the model's
  answer, verified, quoted when no sentence survives (the ranker's quote first, as shipped);
  `extract` = always the quote, from the sentences the model selects by number (format v2
  `Quote`, `quote_first="model"`), else the ranker's;
- `adapter:generate` / `adapter:extract`: the same with `--adapter DIR` (skipped without it);
- `copy-top1` is always reported: the top graded passage copied verbatim (the reference point
  the issue quotes, ROUGE-L ~0.29 on dev).

Per system: share of each mode on answerable questions, false abstention, citation accuracy
(a citation within 1 page of the gold page, `eval.metrics.citation_correct`), ROUGE-L F1 against
`reference` (rouge-score, stemmed, as RAGAS computes it; abstentions score too), claims removed
per answer, unsupported-claim share, and the answered rate on the unanswerable questions (a
quote counts as answered), plus seconds per answer.

Model replies are cached per model (an adapter by its weights' hash) and prompt under
`bench/results/answers_cache/` (greedy decoding, so a reply is reused by `generate` and
`extract` and by re-runs after a change to verification; `--fresh` ignores the cache). The
table goes to stdout, the JSON (merged with earlier systems) to `bench/results/answers.json`.
Thresholds were chosen on faq_history and the method, not on these dev items; a held-out split
re-measures them.

Examples:
    python bench/answers.py --limit 20 --spread                   # a quick look (ranker + base)
    python bench/answers.py --unanswerable eval/data/unanswerable_in_domain.jsonl
    python bench/answers.py --adapter /work/adapters/smollm2-v2 --configs adapter:generate,adapter:extract
    python bench/answers.py --passage-words 0 --configs base:generate   # whole passages
    python bench/answers.py --max-contexts 4 --configs base:generate    # a fourth passage
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import doc_parser  # noqa: E402
from eval.metrics import PAGE_TOLERANCE, citation_correct  # noqa: E402
from eval.questions import Question, load_questions  # noqa: E402
from eval.runner import pick  # noqa: E402
from retrieval.errors import CasewiseError, UsageError, run_cli  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "emanual"
RESULTS = REPO / "bench" / "results"
CONFIGS = ("ranker", "base:generate", "base:extract", "adapter:generate", "adapter:extract")
MODES = ("generated", "quoted", "abstained", "refused")


class NoModel:
    """A backend that writes nothing: the graph then quotes with the ranker (`ranker` system)."""

    name = "none"

    def stream(self, messages, *, max_new_tokens=256):
        return iter(())

    def complete(self, messages, *, max_new_tokens=256):
        return ""


class CachedModel:
    """Replays greedy replies from a JSONL cache, generating (to the full budget) when missing.

    The reply is always generated to `max_new_tokens` and stored whole, even when the graph stops
    reading early (extract mode stops at the `Answer:` label): greedy decoding makes a shorter
    budget a prefix of it, so one cached reply serves both answer modes.
    """

    def __init__(self, llm, path: Path, max_new_tokens: int, fresh: bool = False) -> None:
        self.llm, self.path, self.max_new_tokens = llm, path, max_new_tokens
        self.name = llm.name
        self.cache: dict[str, str] = {}
        if path.exists() and not fresh:
            for line in path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                self.cache[record["key"]] = record["reply"]
        self.generated = 0

    def _key(self, messages: list[dict]) -> str:
        blob = json.dumps([self.llm.name, self.max_new_tokens, messages], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def stream(self, messages, *, max_new_tokens=256):
        key = self._key(messages)
        if key in self.cache:
            yield self.cache[key]
            return
        pieces = []
        source = self.llm.stream(messages, max_new_tokens=self.max_new_tokens)
        try:
            for piece in source:
                pieces.append(piece)
                yield piece
        except GeneratorExit:
            pieces.extend(source)  # the reader stopped early: finish the reply for the cache
            self._store(key, "".join(pieces))
            raise
        self._store(key, "".join(pieces))

    def complete(self, messages, *, max_new_tokens=256):
        return "".join(self.stream(messages, max_new_tokens=max_new_tokens))

    def _store(self, key: str, reply: str) -> None:
        self.cache[key] = reply
        self.generated += 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")


def rouge_l(reference: str, answer: str) -> float:
    """ROUGE-L F1 with stemming, as RAGAS's `RougeScore(rouge_type="rougeL")` computes it."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return scorer.score(reference, answer)["rougeL"].fmeasure


def build_index(home: Path) -> None:
    """Index the manual (only) under `home` unless it is there already."""
    from ingest.pipeline import run
    from retrieval.settings import Settings

    settings = Settings.resolve(home=home)
    if not settings.manifest_path.exists():
        run([DATA / "smart_tv_manual.pdf"], settings, progress=False)


def adapter_tag(adapter: str | Path) -> str:
    """The reply cache's name for an adapter: a hash of its weights, not of its path, so that an
    adapter replaced in place (a retrained `adapters/smollm2-gpu`) never replays the replies of
    the one it replaced, and a copy elsewhere reuses them."""
    digest = hashlib.sha256()
    for weights in sorted(Path(adapter).glob("adapter_model.*")):
        digest.update(weights.read_bytes())
    return "adapter-" + digest.hexdigest()[:12]


def make_llm(config: str, args: argparse.Namespace):
    """The backend of one system (cached, except the `ranker`'s null model)."""
    if config == "ranker":
        return NoModel()
    from agent.llm import local_backend

    adapter = args.adapter if config.startswith("adapter") else None
    # the agent's own choice of local engine (llama.cpp where installed), so the figures are
    # those of the shipped default; its name keys the reply cache
    llm = local_backend("default", adapter=adapter, max_new_tokens=args.max_new_tokens,
                        backend=args.backend)
    llm.load()
    tag = adapter_tag(adapter) if adapter else "base"
    return CachedModel(llm, RESULTS / "answers_cache" / f"{tag}.jsonl", args.max_new_tokens,
                       args.fresh)


def answer_row(q: Question, result) -> dict:
    """One question's record: what the agent did and how it scores."""
    record = result.to_dict()
    row = {
        "id": q.id, "answerable": q.answerable, "split": q.extra.get("split"), "mode": result.mode,
        "answer": result.answer, "raw": result.raw,
        "citations": record["citations"],
        "claims": sum(not c.quoted for c in result.claims), "removed": len(result.removed_claims),
        "removed_reasons": [c.reason for c in result.removed_claims],
        "seconds": result.timings.get("total"),
        "top1": result.contexts[0].text if result.contexts else "",
        "context_pages": [h.citation.page for h in result.contexts],
    }
    if q.answerable and q.reference:
        row["rouge_l"] = round(rouge_l(q.reference, result.answer), 4)
        row["rouge_l_top1"] = round(rouge_l(q.reference, row["top1"]), 4) if row["top1"] else 0.0
    if q.answerable and q.page is not None:
        row["citation_ok"] = citation_correct(q, record).value
        # the ceiling retrieval and grading leave: the gold page (within 1) among the passages
        row["gold_in_contexts"] = float(any(p is not None and abs(p - q.page) <= PAGE_TOLERANCE
                                            for p in row["context_pages"]))
    return row


def summarize(rows: list[dict]) -> dict:
    """The figures of one system over its rows."""
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    modes = Counter(r["mode"] for r in answerable)
    n = len(answerable) or 1

    def mean(values):
        values = [v for v in values if v is not None]
        return round(sum(values) / len(values), 4) if values else None

    called = [r for r in rows if r["raw"] or r["removed"] or r["mode"] in ("generated", "quoted")]
    kept = sum(r["claims"] for r in rows if r["mode"] == "generated")
    removed = sum(r["removed"] for r in rows)
    return {
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "mode_shares": {m: round(modes[m] / n, 4) for m in MODES},
        "false_abstention": round(modes["abstained"] / n, 4),
        "citation_accuracy": mean(r.get("citation_ok") for r in answerable),
        "gold_page_in_contexts": mean(r.get("gold_in_contexts") for r in answerable),
        "rouge_l": mean(r.get("rouge_l") for r in answerable),
        "rouge_l_copy_top1": mean(r.get("rouge_l_top1") for r in answerable),
        "claims_removed_per_answer": mean([r["removed"] for r in called]) if called else None,
        "unsupported_claim_share": round(removed / (kept + removed), 4) if kept + removed else None,
        "unanswerable_answered": mean(
            float(r["mode"] in ("generated", "quoted")) for r in unanswerable),
        # the eval set's parts: thresholds may be chosen on "calibration", figures quoted from
        # "report"
        "unanswerable_answered_by_split": {
            split: mean(float(r["mode"] in ("generated", "quoted"))
                        for r in unanswerable if r["split"] == split)
            for split in sorted({r["split"] for r in unanswerable if r["split"]})},
        "seconds_per_answer_p50": round(statistics.median(
            r["seconds"] for r in rows if r["seconds"] is not None), 2) if rows else None,
    }


def run_config(config: str, questions: list[Question], args: argparse.Namespace) -> dict:
    """Answer every question with one system and summarise."""
    from tqdm.auto import tqdm

    from agent.api import Assistant
    from retrieval.settings import Settings

    llm = make_llm(config, args)
    mode = "extract" if config.endswith(":extract") or config == "ranker" else "generate"
    extra = {} if args.passage_words is None else {"passage_words": args.passage_words}
    if args.max_contexts is not None:
        extra["max_contexts"] = args.max_contexts
    if args.passage_tokens is not None:
        extra["passage_tokens"] = args.passage_tokens
    if args.rerank is not None:
        extra["rerank"] = args.rerank
    if config.endswith(":extract"):
        extra["quote_first"] = "model"  # what these configs measure: the model's selection
    assistant = Assistant.from_settings(Settings.resolve(home=args.home), llm,
                                        max_new_tokens=args.max_new_tokens, answer_mode=mode,
                                        **extra)
    rows = []
    try:
        for q in tqdm(questions, desc=config, unit="q", disable=args.json):
            rows.append(answer_row(q, assistant.ask(q.question)))
    finally:
        assistant.close()
    summary = summarize(rows)
    summary["model_calls_generated"] = getattr(llm, "generated", 0)
    summary["backend"] = llm.name
    return {"summary": summary, "rows": rows}


def format_table(systems: dict) -> str:
    """The results as a fixed-width table, one column per system."""
    names = list(systems)
    lines = [("metric", *names)]
    s = {n: systems[n]["summary"] for n in names}

    def cell(value, pct=False):
        if value is None:
            return "-"
        return f"{value:.0%}" if pct else f"{value:.3f}" if isinstance(value, float) else str(value)

    lines.append(("answerable / unanswerable",
                  *(f"{s[n]['answerable']} / {s[n]['unanswerable']}" for n in names)))
    for m in MODES:
        lines.append((f"mode {m}", *(cell(s[n]["mode_shares"][m], True) for n in names)))
    for key, pct in (("false_abstention", True), ("citation_accuracy", True),
                     ("gold_page_in_contexts", True), ("rouge_l", False),
                     ("rouge_l_copy_top1", False), ("claims_removed_per_answer", False),
                     ("unsupported_claim_share", True), ("unanswerable_answered", True),
                     ("seconds_per_answer_p50", False)):
        lines.append((key, *(cell(s[n][key], pct) for n in names)))
    for split in sorted({k for n in names for k in s[n]["unanswerable_answered_by_split"]}):
        lines.append((f"  unanswerable answered ({split})",
                      *(cell(s[n]["unanswerable_answered_by_split"].get(split), True)
                        for n in names)))
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python bench/answers.py`."""
    parser = doc_parser(__doc__, "python bench/answers.py")
    parser.add_argument("--configs", default=None,
                        help=f"systems to run, from {', '.join(CONFIGS)} (default: ranker and "
                        "base:generate, base:extract, plus the adapter ones with --adapter)")
    parser.add_argument("--adapter", default=None, metavar="DIR", help="LoRA adapter directory")
    parser.add_argument("--unanswerable", default=None, metavar="PATH",
                        help="JSONL of in-domain questions the manual does not answer")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="at most N questions of each set")
    parser.add_argument("--spread", action="store_true",
                        help="with --limit: N questions evenly spaced over each file")
    parser.add_argument("--home", type=Path, default=REPO / "runs" / "bench" / "emanual-pdf",
                        help="index of smart_tv_manual.pdf (built when missing)")
    parser.add_argument("--max-new-tokens", type=int, default=160,
                        help="generation budget per answer (default 160)")
    parser.add_argument("--backend", default=None,
                        help="local engine: auto (default, as the agent: llama.cpp when "
                        "installed), llama.cpp or transformers")
    parser.add_argument("--passage-words", type=int, default=None, metavar="N",
                        help="words of each passage the prompt shows (the agent's "
                        "Context.passage_words; 0 = whole passages); results are stored under "
                        "'<system>@<N>w' (default: the agent's default, stored under '<system>')")
    parser.add_argument("--passage-tokens", type=int, default=None, metavar="N",
                        help="token budget of the prompt's passages (Context.passage_tokens; "
                        "0 = none); results are stored under '<system>@<N>t' (default: the "
                        "agent's)")
    parser.add_argument("--max-contexts", type=int, default=None, metavar="N",
                        help="graded passages the agent keeps (Context.max_contexts); results "
                        "are stored under '<system>@<N>p' (default: the agent's, 3)")
    parser.add_argument("--rerank", default=None, choices=("off", "best_first", "select"),
                        help="which graded passages the prompt shows (Context.rerank); results "
                        "are stored under '<system>@rerank-<MODE>' (default: the agent's)")
    parser.add_argument("--fresh", action="store_true", help="ignore cached model replies")
    parser.add_argument("--json", action="store_true", help="print the result JSON only")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _main(args), interrupted="interrupted: model replies so far are "
                   "cached in bench/results/answers_cache/; re-run to continue")


def _main(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit ({args.limit}) must be at least 1")
    if args.max_contexts is not None and args.max_contexts < 1:
        raise UsageError(f"--max-contexts ({args.max_contexts}) must be at least 1")
    if args.passage_tokens is not None and args.passage_tokens < 0:
        raise UsageError(f"--passage-tokens ({args.passage_tokens}) must be 0 (no budget) "
                         f"or more")
    if args.passage_words is not None and args.passage_words < 0:
        raise UsageError(f"--passage-words ({args.passage_words}) must be 0 (whole passages) "
                         f"or more")
    configs = args.configs.split(",") if args.configs else [
        c for c in CONFIGS if not c.startswith("adapter") or args.adapter]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise UsageError(f"--configs: unknown system {unknown[0]!r}; choose from "
                         f"{', '.join(CONFIGS)}")
    if any(c.startswith("adapter") for c in configs):
        if not args.adapter or not Path(args.adapter, "adapter_config.json").is_file():
            raise UsageError(f"--adapter {args.adapter}: not a LoRA adapter directory (no "
                             f"adapter_config.json); the adapter systems need one")
        from finetune.format import adapter_format_warning

        warning = adapter_format_warning(args.adapter)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    dev = DATA / "qa_dev.jsonl"
    if not dev.is_file():
        raise CasewiseError(f"{dev} not found: this benchmark needs ../shared/data/emanual/")
    questions, _ = load_questions(dev)
    questions = pick([q for q in questions if q.answerable], args.limit, args.spread)
    if args.unanswerable:
        extra, _ = load_questions(args.unanswerable)
        questions += pick([q for q in extra if not q.answerable], args.limit, args.spread)
    build_index(args.home)
    previous = RESULTS / "answers.json"
    report = json.loads(previous.read_text()) if previous.exists() else {"systems": {}}
    suffix = "" if args.passage_words is None else f"@{args.passage_words}w"
    suffix += "" if args.max_contexts is None else f"@{args.max_contexts}p"
    suffix += "" if args.passage_tokens is None else f"@{args.passage_tokens}t"
    suffix += "" if args.rerank is None else f"@rerank-{args.rerank}"
    for config in configs:
        start = time.perf_counter()
        result = run_config(config, questions, args)
        result["summary"]["wall_s"] = round(time.perf_counter() - start, 1)
        result["settings"] = {"adapter": args.adapter if config.startswith("adapter") else None,
                              "backend": result["summary"].pop("backend"),
                              "max_new_tokens": args.max_new_tokens, "limit": args.limit,
                              "spread": args.spread, "unanswerable": args.unanswerable,
                              "passage_words": args.passage_words,
                              "max_contexts": args.max_contexts,
                              "passage_tokens": args.passage_tokens, "rerank": args.rerank,
                              "load_average": os.getloadavg()}
        report["systems"][config + suffix] = result
    report["machine"] = {"cpu": platform.processor() or platform.machine(),
                         "cores": os.cpu_count(), "load_average": os.getloadavg()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    shown = {c + suffix: report["systems"][c + suffix] for c in configs}
    if args.json:
        print(json.dumps({c: r["summary"] for c, r in shown.items()}, indent=1))
    else:
        print(format_table(shown))
        print(f"wrote {previous.relative_to(REPO)} (load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
