"""python bench/quote_rank.py [--limit N] [--json]

Which sentences should a quoted answer show? A model-free study on the 354 questions of
`../shared/data/emanual/faq_history.csv` (training data, never dev): for every question,
retrieve and grade as the agent does (index of `smart_tv_manual.pdf` only, `bench/answers.py`'s
`--home`), rank the kept passages' sentences (`retrieval.grounding.rank_sentences`) and build
the quote of each variant below. Per variant: citation accuracy (the quoted passage within 1
page of the question's `page`) and ROUGE-L F1 of the rendered quote against the FAQ `answer`
(as `bench/answers.py` scores dev). Also the ceilings: the gold page among the kept passages,
and on the first one.

Variants: the sentence score alone (`prior 0`, the ranker before this study) or plus `w` times
the passage's retrieval prior (`sim`: its cosine similarity to the question; `rank`: 1/rank),
and quote lengths (sentences / words beyond the first).

Examples:
    python bench/quote_rank.py                  # all 354 questions (about 2 minutes)
    python bench/quote_rank.py --limit 50 --json
    python bench/quote_rank.py --max-contexts 5        # rank over more graded passages
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retrieval.errors import CasewiseError, UsageError, run_cli  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "emanual"
RESULTS = REPO / "bench" / "results"
# (name, prior kind, prior weight, max sentences, max words)
VARIANTS = [("prior 0", "sim", 0.0, 3, 60)]
VARIANTS += [(f"sim x{w}", "sim", w, 3, 60) for w in (0.5, 1.0, 2.0, 4.0)]
VARIANTS += [(f"rank x{w}", "rank", w, 3, 60) for w in (0.25, 0.5, 1.0)]
VARIANTS += [("first passage only", "first", 0.0, 3, 60)]
VARIANTS += [(f"sim x1 len {n}/{m}", "sim", 1.0, n, m) for n, m in ((1, 0), (2, 40), (4, 80),
                                                                    (5, 100), (6, 120))]


def prior(kind: str, hit, rank: int) -> float:
    """The retrieval prior of a passage: its cosine similarity or 1/rank."""
    if kind == "rank":
        return 1.0 / rank
    return hit.similarity if hit.similarity is not None else 0.0


def study(rows: list[dict], searcher, context) -> dict:
    """Every variant's citation accuracy and ROUGE-L over `rows` (faq_history records)."""
    from agent.graph import render_quote
    from bench.answers import rouge_l
    from bench.quote_bar import graded
    from eval.metrics import PAGE_TOLERANCE
    from finetune.format import ABSTAIN_ANSWER
    from retrieval.grounding import quote_from, rank_sentences

    totals = {name: {"citation": 0, "rouge_l": 0.0} for name, *_ in VARIANTS}
    ceiling = {"gold_among_kept": 0, "gold_first_kept": 0, "kept_any": 0}
    for row in rows:
        gold = int(row["page"])
        kept = graded(row["question"], searcher, context)
        near = [h.citation.page is not None and abs(h.citation.page - gold) <= PAGE_TOLERANCE
                for h in kept]
        ceiling["kept_any"] += bool(kept)
        ceiling["gold_among_kept"] += any(near)
        ceiling["gold_first_kept"] += bool(near and near[0])
        ranked = rank_sentences(row["question"], kept, searcher.embedder) if kept else []
        for name, kind, weight, max_sentences, max_words in VARIANTS:
            if not ranked:
                totals[name]["rouge_l"] += rouge_l(row["answer"], ABSTAIN_ANSWER)
                continue
            if kind == "first":
                best = next((t for t in ranked if t[1] == 1), ranked[0])
            else:
                best = max(ranked, key=lambda t: t[0] + weight * prior(kind, kept[t[1] - 1], t[1]))
            q = quote_from(kept, best[1], best[2], max_sentences, max_words)
            totals[name]["citation"] += near[q.passage - 1]
            totals[name]["rouge_l"] += rouge_l(row["answer"], render_quote([q], kept))
    n = len(rows) or 1
    return {
        "questions": len(rows),
        "ceilings": {k: round(v / n, 4) for k, v in ceiling.items()},
        "variants": {name: {"citation_accuracy": round(t["citation"] / n, 4),
                            "rouge_l": round(t["rouge_l"] / n, 4)} for name, t in totals.items()},
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python bench/quote_rank.py", description=__doc__.split("\n\n")[1],
        epilog="Examples:\n" + __doc__.split("Examples:\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="the first N questions only")
    parser.add_argument("--home", type=Path, default=REPO / "runs" / "bench" / "emanual-pdf",
                        help="index of smart_tv_manual.pdf (built when missing)")
    parser.add_argument("--max-contexts", type=int, default=None, metavar="N",
                        help="passages kept after grading (default: the agent's, "
                        "Context.max_contexts)")
    parser.add_argument("--json", action="store_true", help="print the result JSON only")
    args = parser.parse_args(argv)
    return run_cli(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit ({args.limit}) must be at least 1")
    faq = DATA / "faq_history.csv"
    if not faq.is_file():
        raise CasewiseError(f"{faq} not found: this benchmark needs ../shared/data/emanual/")
    with faq.open(encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if (r.get("page") or "").strip().isdigit()]
    rows = rows[: args.limit] if args.limit else rows

    from agent.context import Context
    from bench.answers import build_index
    from retrieval.search import open_searcher
    from retrieval.settings import Settings

    build_index(args.home)
    searcher = open_searcher(Settings.resolve(home=args.home))
    context = Context(searcher=searcher, llm=None)
    if args.max_contexts:
        context = Context(searcher=searcher, llm=None, max_contexts=args.max_contexts,
                          top_k=max(context.top_k, args.max_contexts))
    result = study(rows, searcher, context)
    result["max_contexts"] = context.max_contexts
    result["load_average"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = f"quote_rank_{args.max_contexts}.json" if args.max_contexts else "quote_rank.json"
    (RESULTS / out).write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['questions']} faq_history questions; ceilings: " + ", ".join(
        f"{k} {v:.0%}" for k, v in result["ceilings"].items()))
    print(f"{'variant':22s} citation  ROUGE-L")
    for name, v in result["variants"].items():
        print(f"{name:22s} {v['citation_accuracy']:8.1%}  {v['rouge_l']:.3f}")
    print(f"wrote bench/results/{out} (load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
