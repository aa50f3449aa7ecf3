"""python bench/quote_rank.py [--fit] [--limit N] [--max-contexts N] [--json]

Which sentences should a quoted answer show, and from which passage? A model-free study on the
354 questions of `../shared/data/emanual/faq_history.csv` (training data, never dev): for every
question, retrieve and grade as the agent does (index of `smart_tv_manual.pdf` only,
`bench/answers.py`'s `--home`), list the ranker's quote candidates
(`retrieval.grounding.quote_candidates`: each sentence of the kept passages and the sentences
the quote adds after it) with their features (`RANK_FEATURES`), and score the quote each
scorer picks: citation accuracy (the quoted passage within 1 page of the question's `page`)
and ROUGE-L F1 of the rendered quote against the FAQ `answer` (as `bench/answers.py` scores
dev). Also the ceilings: the gold page among the kept passages, and on the first one.

Scorers: `shipped` (`retrieval.grounding.RANK_WEIGHTS`), `sentence (before)` (the ranker
before the fit: one sentence's cosine + word overlap + 0.5 / passage rank), each feature alone,
and with `--fit` the weights refitted here: a conditional logit over each question's
candidates (positives: candidates on a page within 1 of the gold page; L2 penalty `--l2`,
scipy L-BFGS from zeros, so the fit is deterministic), in-sample and 5-fold cross-validated.
`--fit` prints the weights to copy into `RANK_WEIGHTS`. Quote lengths (sentences / words beyond
the first) are compared for the shipped scorer.

Examples:
    python bench/quote_rank.py --fit            # refit RANK_WEIGHTS (about 1 minute)
    python bench/quote_rank.py --limit 50 --json
    python bench/quote_rank.py --max-contexts 5        # candidates from more graded passages
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
FOLDS = 5
# Quote lengths compared for the shipped scorer: (max sentences, max words beyond the first).
LENGTHS = ((1, 0), (2, 40), (3, 40), (3, 60), (3, 80), (3, 100))


def collect(rows: list[dict], searcher, context) -> list[dict]:
    """Each question's graded passages, quote candidates and their features."""
    from bench.quote_bar import graded
    from eval.metrics import PAGE_TOLERANCE
    from retrieval.grounding import quote_candidates
    from retrieval.text import overlap, sentences

    items = []
    for row in rows:
        gold = int(row["page"])
        kept = graded(row["question"], searcher, context)
        near = [h.citation.page is not None and abs(h.citation.page - gold) <= PAGE_TOLERANCE
                for h in kept]
        candidates = quote_candidates(row["question"], kept, searcher.embedder)
        # the ranker before the fit scored the starting sentence alone
        before = {}
        if candidates:
            import numpy as np

            texts = [(sentences(kept[p - 1].text) or [kept[p - 1].text])[s - 1]
                     for p, s, _, _ in candidates]
            vectors = np.asarray(searcher.embedder.embed_documents(texts))
            query = np.asarray(searcher.embedder.embed_query(row["question"]))
            cosine = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
            before = {(p, s): overlap(row["question"], t) + float(c) + 0.5 / p
                                for (p, s, _, _), t, c in zip(candidates, texts, cosine,
                                                              strict=True)}
        items.append({"row": row, "kept": kept, "near": near, "candidates": candidates,
                      "before": before})
    return items


def matrix(item: dict, features: tuple[str, ...]):
    """The candidates' feature matrix and positive mask of one question."""
    import numpy as np

    x = np.array([[f[k] for k in features] for _, _, _, f in item["candidates"]], dtype=float)
    y = np.array([item["near"][p - 1] for p, _, _, _ in item["candidates"]], dtype=float)
    return x, y


def fit(items: list[dict], features: tuple[str, ...], l2: float):
    """Conditional-logit weights: maximise each question's probability mass on its positives."""
    import numpy as np
    from scipy.optimize import minimize

    data = [matrix(i, features) for i in items if i["candidates"]]
    data = [(x, y) for x, y in data if y.any()]  # no positive: nothing to learn from

    def loss(w):
        total, grad = l2 * w @ w, 2 * l2 * w
        for x, y in data:
            s = x @ w
            p = np.exp(s - s.max())
            p /= p.sum()
            mass = (p * y).sum()
            total -= np.log(mass)
            grad -= (x * (p * y)[:, None]).sum(0) / mass - (x * p[:, None]).sum(0)
        return total / len(data), grad / len(data)

    return minimize(loss, np.zeros(len(features)), jac=True, method="L-BFGS-B").x


def score(items: list[dict], pick, max_sentences: int | None = None,
          max_words: int | None = None) -> dict:
    """Citation accuracy and ROUGE-L of the quote `pick(item)` (index of a candidate) chooses."""
    from agent.graph import render_quote
    from bench.answers import rouge_l
    from finetune.format import ABSTAIN_ANSWER
    from retrieval.grounding import quote_from

    citation = rouge = 0.0
    for item in items:
        if not item["candidates"]:
            rouge += rouge_l(item["row"]["answer"], ABSTAIN_ANSWER)
            continue
        p, s, quote, _ = item["candidates"][pick(item)]
        if max_sentences is not None:
            quote = quote_from(item["kept"], p, s, max_sentences, max_words)
        citation += item["near"][p - 1]
        rouge += rouge_l(item["row"]["answer"], render_quote([quote], item["kept"]))
    n = len(items) or 1
    return {"citation_accuracy": round(citation / n, 4), "rouge_l": round(rouge / n, 4)}


def linear(weights, features: tuple[str, ...]):
    """A picker: the candidate with the highest weighted feature sum (first on ties)."""
    def pick(item):
        values = [sum(w * f[k] for w, k in zip(weights, features, strict=True))
                  for _, _, _, f in item["candidates"]]
        return max(range(len(values)), key=lambda i: (values[i], -i))
    return pick


def study(items: list[dict], do_fit: bool, l2: float) -> dict:
    """Every scorer's figures (and, with `do_fit`, the refitted weights)."""
    from retrieval.grounding import RANK_FEATURES, RANK_WEIGHTS

    n = len(items) or 1
    result = {
        "questions": len(items),
        "ceilings": {
            "gold_among_kept": round(sum(any(i["near"]) for i in items) / n, 4),
            "gold_first_kept": round(sum(bool(i["near"] and i["near"][0]) for i in items) / n, 4),
            "kept_any": round(sum(bool(i["kept"]) for i in items) / n, 4)},
        "shipped_weights": dict(zip(RANK_FEATURES, RANK_WEIGHTS, strict=True)),
        "scorers": {},
    }
    scorers = result["scorers"]
    scorers["shipped"] = score(items, linear(RANK_WEIGHTS, RANK_FEATURES))
    def sentence_before(item):
        keys = [(p, s) for p, s, _, _ in item["candidates"]]
        return max(range(len(keys)), key=lambda i: (item["before"][keys[i]], -i))

    scorers["sentence (before)"] = score(items, sentence_before)
    for k in RANK_FEATURES:
        scorers[f"{k} alone"] = score(items, linear((1.0,), (k,)))
    for max_sentences, max_words in LENGTHS:
        scorers[f"shipped, length {max_sentences}/{max_words}"] = score(
            items, linear(RANK_WEIGHTS, RANK_FEATURES), max_sentences, max_words)
    if do_fit:
        weights = fit(items, RANK_FEATURES, l2)
        result["fitted_weights"] = {k: round(float(w), 2)
                                    for k, w in zip(RANK_FEATURES, weights, strict=True)}
        scorers["fitted (in-sample)"] = score(items, linear(weights, RANK_FEATURES))
        folds = []
        for fold in range(FOLDS):
            train = [i for j, i in enumerate(items) if j % FOLDS != fold]
            test = [i for j, i in enumerate(items) if j % FOLDS == fold]
            folds.append((len(test), score(test, linear(fit(train, RANK_FEATURES, l2),
                                                         RANK_FEATURES))))
        scorers[f"fitted ({FOLDS}-fold cross-validated)"] = {
            key: round(sum(m * s[key] for m, s in folds) / n, 4)
            for key in ("citation_accuracy", "rouge_l")}
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python bench/quote_rank.py", description=__doc__.split("\n\n")[1],
        epilog="Examples:\n" + __doc__.split("Examples:\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", action="store_true",
                        help="refit RANK_WEIGHTS on faq_history and cross-validate the fit")
    parser.add_argument("--l2", type=float, default=0.05,
                        help="L2 penalty of the fit (default 0.05)")
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
    if args.l2 < 0:
        raise UsageError(f"--l2 ({args.l2}) must be 0 or more")
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
    result = study(collect(rows, searcher, context), args.fit, args.l2)
    result["max_contexts"] = context.max_contexts
    result["l2"] = args.l2
    result["load_average"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = f"quote_rank_{args.max_contexts}.json" if args.max_contexts else "quote_rank.json"
    (RESULTS / out).write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['questions']} faq_history questions; ceilings: " + ", ".join(
        f"{k} {v:.0%}" for k, v in result["ceilings"].items()))
    print(f"{'scorer':34s} citation  ROUGE-L")
    for name, v in result["scorers"].items():
        print(f"{name:34s} {v['citation_accuracy']:8.1%}  {v['rouge_l']:.3f}")
    if "fitted_weights" in result:
        print("fitted RANK_WEIGHTS = (" + ", ".join(
            f"{w}" for w in result["fitted_weights"].values()) + ")  # " + ", ".join(
            result["fitted_weights"]))
    print(f"wrote bench/results/{out} (load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
