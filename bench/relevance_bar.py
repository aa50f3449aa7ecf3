"""python bench/relevance_bar.py [--home DIR] [--max-contexts 3,4,5] [--orders LIST] [--rows PATH]
    [--json]

The answer relevance bar (`retrieval.grounding.answer_relevance`) without a model, on every
question the release evaluation asks about the manual: the 95 dev questions
(`../shared/data/emanual/qa_dev.jsonl`), the in-domain unanswerable set
(`eval/data/unanswerable_in_domain.jsonl`, per split) and every conversation turn
(`eval/data/conversations*.jsonl`, follow-ups rewritten as the agent does:
`agent.prompts.contextualize` with the previous turn's rewrite). Each question goes through the
agent's retrieval and grading (`agent.graph.is_relevant`, one keyword rewrite when grading keeps
nothing, the first `max_contexts` passages) and the deterministic ranker's quote
(`retrieval.grounding.ranked_quote`, what the agent quotes when the model selects nothing); then
the bar judges that quote under each reading of `weightings` (term weights, misspellings,
and whether the quote is read with the sentence either side of it, as the agent reads the
ranker's quote: `RANKED_QUOTE_CONTEXT`). No model is loaded, so a
run takes about a minute.

Per set and weighting: how often the bar says no (answerable: a false abstention of the ranker;
unanswerable: the rest is answered), the ranker quote's citation accuracy (answered, citing the
gold page within 1), and the ceiling retrieval and grading leave (`gold_page_in_contexts`); for
conversations also `turn_correct_rate` (`eval.conversations`). `--max-contexts` measures the
ceiling and the ranker for more graded passages (issue 10). `--orders` compares which graded
passages are shown (`agent.graph.shown_contexts`, `Context.rerank`): `retrieval` (the first
`max_contexts` as retrieved, the agent's default), `best_first` (the `max_contexts` with the best
quote candidates, best first) and `select` (those, in retrieval order); results of an order other
than retrieval are keyed `<weighting>@<m> <order>`.

Examples:
    python bench/relevance_bar.py
    python bench/relevance_bar.py --max-contexts 3,4,5 --rows runs/bench/relevance_rows.jsonl
    python bench/relevance_bar.py --orders retrieval,best_first,select
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import doc_parser  # noqa: E402
from bench.answers import DATA, build_index  # noqa: E402
from eval.conversations import conversation_scores, load_conversations  # noqa: E402
from eval.metrics import citation_correct  # noqa: E402
from eval.questions import load_questions  # noqa: E402
from retrieval.errors import UsageError, run_cli  # noqa: E402

RESULTS = REPO / "bench" / "results"
# Order name -> `Context.rerank`.
ORDERS = {"retrieval": "off", "best_first": "best_first", "select": "select"}


def order_key(name: str, m: int, order: str) -> str:
    """A result's key: weighting, `max_contexts` and (when not retrieval's) the order."""
    return f"{name}@{m}" + ("" if order == "retrieval" else f" {order}")


SHIPPED = "idf, misspellings read, quote with its neighbours (shipped)"


def weightings(searcher) -> dict:
    """The readings compared: name -> `(weight, read, context)` of the relevance bar
    (`retrieval.grounding.quote_relevance`: term weights, word reading, sentences either side of
    the quote read with it)."""
    from retrieval.grounding import RANKED_QUOTE_CONTEXT
    from retrieval.vocabulary import IndexTerms

    terms = IndexTerms(searcher.keyword_index, searcher.embedder)
    drop = IndexTerms(searcher.keyword_index, searcher.embedder)
    return {
        "idf": (terms.weight, None, 0),
        "none": (None, None, 0),
        "idf, misspellings read, quote alone": (terms.weight, terms.read, 0),
        SHIPPED: (terms.weight, terms.read, RANKED_QUOTE_CONTEXT),
        "idf, misspellings dropped": (
            lambda w: 0.0 if drop.read(w) != w else drop.weight(w), None, 0),
    }


def items(unanswerable: Path, conversation_files: list[Path]):
    """`(set, split, question, standalone, gold, conversation id)` of every question, in order;
    conversation turns carry their rewrite."""
    from agent.prompts import contextualize, is_follow_up

    dev, _ = load_questions(DATA / "qa_dev.jsonl")
    out = [("dev", None, q.question, q.question, q, None) for q in dev]
    held, _ = load_questions(unanswerable)
    out += [("unanswerable", q.extra.get("split"), q.question, q.question, q, None) for q in held]
    for path in conversation_files:
        convs, _ = load_conversations(path)
        for conv in convs:
            previous = ""
            for turn in conv.turns:
                standalone = turn.user.strip()
                if previous and is_follow_up(standalone):
                    standalone = contextualize(standalone, previous)
                out.append(("conversations", None, turn.user, standalone, turn, conv))
                previous = standalone
    return out


def graded(searcher, ctx, standalone: str):
    """`(retrieved, graded)`: the passages of one question as `agent.graph.retrieve`, `grade`
    and `rewrite_query` give them before `grade` keeps the first `max_contexts` (guard and FAQ
    match left out): the hits of the last search, and those grading kept."""
    from agent.graph import is_relevant
    from agent.prompts import keyword_query

    query = standalone
    for _ in range(ctx.max_rewrites + 1):
        hits = searcher.search(query, k=ctx.top_k)
        kept = [h for h in hits if is_relevant(h, standalone, ctx)]
        if kept:
            break
        query = keyword_query(standalone)
    return hits, kept


def record_of(contexts, quote, why) -> dict:
    """An answer record as `eval.metrics` reads it (mode, citations, contexts)."""
    ctx = [{"source": h.citation.source, "page": h.citation.page} for h in contexts]
    if quote is None or why:
        return {"mode": "abstained", "citations": [], "contexts": ctx}
    c = contexts[quote.passage - 1].citation
    return {"mode": "quoted", "citations": [{"source": c.source, "page": c.page}],
            "contexts": ctx}


def run(args: argparse.Namespace) -> dict:
    """Every question through retrieval, grading, the ranker and the bar."""
    from dataclasses import replace

    from agent.context import Context
    from agent.graph import shown_contexts
    from retrieval.grounding import quote_relevance, ranked_quote
    from retrieval.search import open_searcher
    from retrieval.settings import Settings
    from retrieval.text import content_words

    build_index(args.home)
    searcher = open_searcher(Settings.resolve(home=args.home))
    ctx = Context(searcher=searcher, llm=None, embedder=searcher.embedder)
    weights = weightings(searcher)
    index = searcher.keyword_index()
    rows = []
    start = time.perf_counter()
    for kind, split, question, standalone, gold, conv in items(args.unanswerable,
                                                               args.conversations):
        row = {"set": kind, "split": split, "question": question, "standalone": standalone,
               "conversation": conv.id if conv else None,
               "unseen": {w: weights[SHIPPED][1](w)
                          for w in dict.fromkeys(content_words(standalone)) if w not in index}}
        hits, kept = graded(searcher, ctx, standalone)
        row["retrieved"] = [h.citation.page for h in hits]
        row["graded"] = [h.citation.page for h in kept]
        for m in args.max_contexts:
            for order in args.orders:
                contexts = shown_contexts(kept, standalone, replace(
                    ctx, max_contexts=m, rerank=ORDERS[order]))
                quote = (ranked_quote(standalone, contexts, searcher.embedder) if contexts
                         else None)
                for name, (weight, read, around) in weights.items():
                    why = ("no relevant passage" if not contexts else "no usable passage"
                           if quote is None else quote_relevance(standalone, contexts, quote,
                                                                 weight, read, around))
                    row[order_key(name, m, order)] = (record_of(contexts, quote, why)
                                                      | {"why": why or ""})
        row["gold"] = gold
        rows.append(row)
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": round(seconds, 1), "weightings": list(weights),
            "max_contexts": args.max_contexts, "orders": args.orders,
            "load_average": os.getloadavg()}


def _near(pages, gold_pages) -> bool:
    return any(p is not None and abs(p - g) <= 1 for p in pages for g in gold_pages)


def summarize(result: dict) -> dict:
    """Per set, weighting and `max_contexts`: the figures of the module docstring."""
    out: dict = {}
    rows = result["rows"]
    keys = [order_key(name, m, order) for m in result["max_contexts"]
            for order in result["orders"] for name in result["weightings"]]
    for key in keys:
        entry: dict = {}
        dev = [r for r in rows if r["set"] == "dev"]
        entry["dev abstained"] = _mean(r[key]["mode"] == "abstained" for r in dev)
        entry["dev citation"] = _mean(citation_correct(r["gold"], r[key]).value for r in dev)
        entry["dev gold_page_in_contexts"] = _mean(
            _near([c["page"] for c in r[key]["contexts"]], [r["gold"].page]) for r in dev)
        entry["dev gold page retrieved (top_k)"] = _mean(
            _near(r["retrieved"], [r["gold"].page]) for r in dev)
        entry["dev gold page graded (all kept)"] = _mean(
            _near(r["graded"], [r["gold"].page]) for r in dev)
        held = [r for r in rows if r["set"] == "unanswerable"]
        for split in sorted({r["split"] for r in held if r["split"]}):
            entry[f"unanswerable answered ({split})"] = _mean(
                r[key]["mode"] != "abstained" for r in held if r["split"] == split)
        turns = [r for r in rows if r["set"] == "conversations"]
        if turns:
            by_conv: dict = {}
            for r in turns:
                by_conv.setdefault(r["conversation"], []).append(r)
            correct, n = 0.0, 0
            for conv_rows in by_conv.values():
                conv = next(c for c in _conversations(result) if c.id == conv_rows[0]
                            ["conversation"])
                score = conversation_scores(conv, [r[key] for r in conv_rows])
                k = len(conv_rows)
                correct += score["turn_correct_rate"].value * k
                n += k
            entry["turns correct"] = round(correct / n, 4)
            entry["answerable turns abstained"] = _mean(
                r[key]["mode"] == "abstained" for r in turns if r["gold"].answerable)
            entry["uncovered turns answered"] = _mean(
                r[key]["mode"] != "abstained" for r in turns if not r["gold"].answerable)
        out[key] = entry
    return out


def _conversations(result: dict):
    if "_convs" not in result:
        result["_convs"] = []
        for path in result["conversation_files"]:
            result["_convs"] += load_conversations(path)[0]
    return result["_convs"]


def _mean(values) -> float | None:
    values = [float(v) for v in values]
    return round(sum(values) / len(values), 4) if values else None


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = doc_parser(__doc__, "python bench/relevance_bar.py")
    parser.add_argument("--home", type=Path, default=REPO / "runs" / "bench" / "emanual-pdf",
                        help="index of smart_tv_manual.pdf (built when missing)")
    parser.add_argument("--unanswerable", type=Path,
                        default=REPO / "eval" / "data" / "unanswerable_in_domain.jsonl")
    parser.add_argument("--conversations", type=Path, action="append", default=None,
                        help="conversation JSONL (repeatable; default eval/data/conversations*)")
    parser.add_argument("--max-contexts", default="3",
                        help="comma-separated max_contexts values to measure (default 3)")
    parser.add_argument("--orders", default="retrieval",
                        help=f"comma-separated orders of the graded passages to measure, of "
                        f"{', '.join(ORDERS)} (default retrieval)")
    parser.add_argument("--rows", type=Path, default=None, metavar="PATH",
                        help="also write every question's row (JSONL) here")
    parser.add_argument("--json", action="store_true", help="print the result JSON only")
    args = parser.parse_args(argv)
    return run_cli(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    if not (DATA / "qa_dev.jsonl").is_file():
        raise UsageError(f"{DATA / 'qa_dev.jsonl'}: not found (the shared data sit beside the "
                         f"repository in ../shared/data)")
    try:
        args.max_contexts = [int(v) for v in args.max_contexts.split(",")]
    except ValueError as e:
        raise UsageError(f"--max-contexts {args.max_contexts!r}: comma-separated integers") from e
    args.orders = args.orders.split(",")
    unknown = [o for o in args.orders if o not in ORDERS]
    if unknown:
        raise UsageError(f"--orders: unknown order {unknown[0]!r}; choose from {', '.join(ORDERS)}")
    args.conversations = args.conversations or sorted(
        (REPO / "eval" / "data").glob("conversations*.jsonl"))
    result = run(args)
    result["conversation_files"] = [str(p) for p in args.conversations]
    summary = summarize(result)
    if args.rows:
        args.rows.parent.mkdir(parents=True, exist_ok=True)
        with args.rows.open("w", encoding="utf-8") as f:
            for r in result["rows"]:
                f.write(json.dumps({k: v for k, v in r.items() if k != "gold"},
                                   ensure_ascii=False) + "\n")
    out = {"summary": summary, "seconds": result["seconds"],
           "load_average": result["load_average"], "n": len(result["rows"])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "relevance_bar.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for key, entry in summary.items():
        print(f"== {key}")
        for k, v in entry.items():
            print(f"  {k}: {v}")
    print(f"({len(result['rows'])} questions in {result['seconds']} s, load average "
          f"{os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
