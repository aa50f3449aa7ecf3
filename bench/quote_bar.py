"""python bench/quote_bar.py --unanswerable PATH [--split calibration] [--json]

Calibrates the answer relevance bar (`retrieval.grounding.RELEVANCE_MIN`) without any model:
for every question, retrieve and grade as the agent does (index of `smart_tv_manual.pdf`
only, built under `--home` when missing), take the ranker's quote
(`retrieval.grounding.ranked_quote`) and its relevance (the IDF-weighted share of the
question's content words it holds, its passage naming the question's subject). Answerable:
the 354 questions of `../shared/data/emanual/faq_history.csv` (training data, not dev);
unanswerable: the `--split` part of an in-domain unanswerable JSONL (eval's
`eval/data/unanswerable_in_domain.jsonl` has a `calibration` and a `report` part: calibrate on
the first only). Prints, per threshold, the share of each set whose quote reaches the bar, plain
and IDF-weighted, and the recommended value: the lowest that lets at most `--target` of the
unanswerable questions through.

Examples:
    python bench/quote_bar.py --unanswerable eval/data/unanswerable_in_domain.jsonl
    python bench/quote_bar.py --unanswerable other.jsonl --split report --target 0.05
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

from bench import doc_parser  # noqa: E402
from eval.questions import load_questions  # noqa: E402
from retrieval.errors import CasewiseError, UsageError, run_cli  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "emanual"
THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def graded(question: str, searcher, context) -> list:
    """The passages the agent would keep for `question`: retrieve and grade, and once more with
    the keyword rewrite when nothing survives (as the graph does), in the order the prompt shows
    them (`agent.graph.shown_contexts`: re-ranked when `context.rerank`)."""
    from agent.graph import is_relevant, shown_contexts
    from agent.prompts import keyword_query

    kept = []
    for query in (question, keyword_query(question)):
        kept = [h for h in searcher.search(query, k=context.top_k)
                if is_relevant(h, question, context)]
        if kept:
            break
    return shown_contexts(kept, question, context)


def features(question: str, searcher, context) -> dict:
    """The ranker's quote for `question` and how relevant it is (plain and IDF-weighted)."""
    from retrieval.grounding import ranked_quote, relevance, unusable_passages

    kept = graded(question, searcher, context)
    if not kept:
        return {"kept": False}
    quote = ranked_quote(question, kept, searcher.embedder)
    heading = kept[quote.passage - 1].citation.section or ""
    idf = searcher.keyword_index().idf
    return {
        "kept": True,
        "subject_ok": unusable_passages(question, kept, [quote.passage]) is None,
        "plain": relevance(question, f"{quote.text} {heading}"),
        "weighted": relevance(question, f"{quote.text} {heading}", idf),
    }


def passes(rows: list[dict], key: str, threshold: float) -> float:
    """Share of rows whose quote names the subject and reaches `threshold` on `key`."""
    ok = [r["kept"] and r["subject_ok"] and r[key] >= threshold for r in rows]
    return sum(ok) / len(ok) if ok else 0.0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = doc_parser(__doc__, "python bench/quote_bar.py")
    parser.add_argument("--unanswerable", required=True, metavar="PATH",
                        help="JSONL of in-domain questions the manual does not answer")
    parser.add_argument("--split", default="calibration",
                        help="the part of that file to use (its `split` field; default "
                        "calibration; 'all' for every row)")
    parser.add_argument("--target", type=float, default=0.10,
                        help="most unanswerable questions the bar may let through (0.10)")
    parser.add_argument("--home", type=Path, default=REPO / "runs" / "bench" / "emanual-pdf",
                        help="index of smart_tv_manual.pdf (built when missing)")
    parser.add_argument("--json", action="store_true", help="print the result JSON only")
    args = parser.parse_args(argv)
    return run_cli(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    if not 0.0 <= args.target <= 1.0:
        raise UsageError(f"--target ({args.target}) must be between 0 and 1")
    questions, _ = load_questions(args.unanswerable)
    unanswerable = [q.question for q in questions if not q.answerable and (
        args.split == "all" or q.extra.get("split") == args.split)]
    if not unanswerable:
        raise UsageError(f"{args.unanswerable}: no unanswerable question with split "
                         f"{args.split!r} (use --split all for every row)")
    faq = DATA / "faq_history.csv"
    if not faq.is_file():
        raise CasewiseError(f"{faq} not found: this benchmark needs ../shared/data/emanual/")
    with faq.open(encoding="utf-8") as f:
        answerable = [row["question"] for row in csv.DictReader(f)]

    from agent.context import Context
    from bench.answers import build_index
    from retrieval.search import open_searcher
    from retrieval.settings import Settings

    build_index(args.home)
    searcher = open_searcher(Settings.resolve(home=args.home))
    context = Context(searcher=searcher, llm=None, embedder=searcher.embedder)
    pos = [features(q, searcher, context) for q in answerable]
    neg = [features(q, searcher, context) for q in unanswerable]
    table = {key: {t: {"answerable": round(passes(pos, key, t), 3),
                       "unanswerable": round(passes(neg, key, t), 3)} for t in THRESHOLDS}
             for key in ("plain", "weighted")}
    ok = [t for t in THRESHOLDS if table["weighted"][t]["unanswerable"] <= args.target]
    result = {"answerable": len(pos), "unanswerable": len(neg), "split": args.split,
              "table": table, "recommended_weighted": ok[0] if ok else None,
              "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"quotes reaching the bar: {len(pos)} answerable (faq_history), {len(neg)} "
          f"unanswerable ({args.split})")
    print("threshold  plain ans / unans   IDF-weighted ans / unans")
    for t in THRESHOLDS:
        p, w = table["plain"][t], table["weighted"][t]
        print(f"{t:9.1f}  {p['answerable']:9.1%} / {p['unanswerable']:5.1%}   "
              f"{w['answerable']:16.1%} / {w['unanswerable']:5.1%}")
    print(f"recommended (IDF-weighted, unanswerable <= {args.target:.0%}): "
          f"{result['recommended_weighted']}  (load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
