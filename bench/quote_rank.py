"""python bench/quote_rank.py [--fit] [--unanswerable PATH] [--limit N] [--max-contexts N] [--json]

Which sentences should a quoted answer show, and from which passage? A model-free study on the
354 questions of `../shared/data/emanual/faq_history.csv` (training data, never dev): for every
question, retrieve and grade as the agent does (index of `smart_tv_manual.pdf` only,
`bench/answers.py`'s `--home`), list the ranker's quote candidates
(`retrieval.grounding.quote_candidates`: each sentence of the kept passages and the sentences
the quote adds after it) with their features (`RANK_FEATURES`), and score the quote each
scorer picks as the agent would show it (below the relevance bar, `quote_relevance`, it
abstains): citation accuracy (the quoted passage within 1 page of the question's `page`),
ROUGE-L F1 of the rendered quote against the FAQ `answer` (as `bench/answers.py` scores dev),
the share answered, and with `--unanswerable` the share of those questions answered per split.
Also the ceilings: the gold page among the kept passages, and on the first one.

Scorers: `shipped` (`retrieval.grounding.RANK_WEIGHTS`), `sentence (before the fit)` (the
starting sentence's cosine + word overlap + 0.5 / passage rank), quote lengths (sentences /
words) for the shipped weights, and with `--fit` each feature family of `FAMILIES` refitted: a
conditional logit over each question's candidates (positives: candidates on a page within 1 of
the gold page; L2 penalty `--l2`; scipy L-BFGS from zeros, so the fit is deterministic),
in-sample and 5-fold cross-validated, and the family the choice rule picks (`study`). Its
printed weights are `WINDOW_RANK_WEIGHTS` (the default stays the sentence scorer: see there).

Examples:
    python bench/quote_rank.py --fit --unanswerable eval/data/unanswerable_in_domain.jsonl
    python bench/quote_rank.py --limit 50 --json
    python bench/quote_rank.py --max-contexts 5        # candidates from more graded passages
    python bench/quote_rank.py --rerank best_first     # the graded passages re-ranked
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
from retrieval.errors import CasewiseError, UsageError, run_cli  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "emanual"
RESULTS = REPO / "bench" / "results"
FOLDS = 5
# Quote lengths compared for the shipped scorer: (max sentences, max words beyond the first).
LENGTHS = ((1, 0), (2, 40), (3, 40), (3, 60), (3, 80), (3, 100))


class MemoEmbedder:
    """The searcher's embedder with its document vectors remembered: the 354 questions draw on
    the same 179 passages, so most candidates recur."""

    def __init__(self, embedder) -> None:
        self.embedder, self.vectors = embedder, {}

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Vectors of `texts`, each embedded once per run."""
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            self.vectors.update(zip(missing, self.embedder.embed_documents(missing), strict=True))
        return [self.vectors[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        """The query vector (not remembered: each question is asked once)."""
        return self.embedder.embed_query(text)


def collect(rows: list[dict], searcher, context) -> list[dict]:
    """Each question's graded passages, quote candidates, their features and whether each
    candidate reaches the agent's relevance bar (`retrieval.grounding.quote_relevance`, with the
    index's IDF). Rows without a `page` are unanswerable questions."""
    from bench.quote_bar import graded
    from eval.metrics import PAGE_TOLERANCE
    from retrieval.grounding import quote_candidates, quote_relevance

    embedder = MemoEmbedder(searcher.embedder)
    idf = searcher.keyword_index().idf
    items = []
    for row in rows:
        gold = row.get("page")
        kept = graded(row["question"], searcher, context)
        near = [gold is not None and h.citation.page is not None
                and abs(h.citation.page - gold) <= PAGE_TOLERANCE for h in kept]
        candidates = quote_candidates(row["question"], kept, embedder)
        bar = [quote_relevance(row["question"], kept, q, idf) is None for _, _, q, _ in candidates]
        items.append({"row": row, "kept": kept, "near": near, "candidates": candidates,
                      "bar": bar})
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
    """Citation accuracy and ROUGE-L of the quote `pick(item)` (index of a candidate) chooses, and
    the share of questions answered (the quote reaches the relevance bar; below it the agent
    abstains, which scores as the abstain text)."""
    from agent.graph import render_quote
    from bench.answers import rouge_l
    from finetune.format import ABSTAIN_ANSWER
    from retrieval.grounding import quote_from

    citation = rouge = answered = 0.0
    for item in items:
        chosen = pick(item) if item["candidates"] else None
        if chosen is None or not item["bar"][chosen]:
            if item["row"].get("answer"):
                rouge += rouge_l(item["row"]["answer"], ABSTAIN_ANSWER)
            continue
        p, s, quote, _ = item["candidates"][chosen]
        if max_sentences is not None:
            quote = quote_from(item["kept"], p, s, max_sentences, max_words)
        answered += 1
        citation += item["near"][p - 1]
        if item["row"].get("answer"):
            rouge += rouge_l(item["row"]["answer"], render_quote([quote], item["kept"]))
    n = len(items) or 1
    return {"citation_accuracy": round(citation / n, 4), "rouge_l": round(rouge / n, 4),
            "answered": round(answered / n, 4)}


def linear(weights, features: tuple[str, ...]):
    """A picker: the candidate with the highest weighted feature sum (first on ties)."""
    def pick(item):
        values = [sum(w * f[k] for w, k in zip(weights, features, strict=True))
                  for _, _, _, f in item["candidates"]]
        return max(range(len(values)), key=lambda i: (values[i], -i))
    return pick


# The ranker before the fit: the starting sentence's cosine + word overlap + 0.5 / passage rank.
BEFORE = {"sentence_cosine": 1.0, "sentence_overlap": 1.0, "passage_rank": 0.5}
# The feature families fitted with --fit (each a subset of RANK_FEATURES).
FAMILIES = {
    "window": ("cosine", "overlap", "passage_rank", "passage_overlap"),
    "sentence": ("sentence_cosine", "sentence_overlap", "passage_rank", "passage_overlap"),
    "all": ("cosine", "overlap", "sentence_cosine", "sentence_overlap", "passage_rank",
            "passage_overlap"),
}


def full(weights: dict) -> tuple[float, ...]:
    """A weight per `RANK_FEATURES` entry (0 for the features a scorer leaves out)."""
    from retrieval.grounding import RANK_FEATURES

    return tuple(round(float(weights.get(k, 0.0)), 2) for k in RANK_FEATURES)


def study(items: list[dict], unanswerable: list[dict], do_fit: bool, l2: float) -> dict:
    """Every scorer's figures on faq_history (and the unanswerable rows' answered rate per
    split); with `do_fit`, each family refitted, cross-validated, and the choice among them.

    The choice rule: the family with the best cross-validated citation accuracy among those
    that answer no more calibration-split unanswerable questions than the ranker before the
    fit and no fewer faq_history questions (one point of slack).
    """
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

    def measure(name, weights, max_sentences=None, max_words=None):
        pick = linear(full(weights), RANK_FEATURES)
        scorers[name] = score(items, pick, max_sentences, max_words)
        for split in sorted({u["row"].get("split") or "all" for u in unanswerable}):
            rows = [u for u in unanswerable if (u["row"].get("split") or "all") == split]
            scorers[name][f"unanswerable_answered_{split}"] = score(rows, pick)["answered"]

    shipped = dict(zip(RANK_FEATURES, RANK_WEIGHTS, strict=True))
    measure("shipped", shipped)
    measure("sentence (before the fit)", BEFORE)
    for max_sentences, max_words in LENGTHS:
        measure(f"shipped, length {max_sentences}/{max_words}", shipped, max_sentences, max_words)
    if do_fit:
        result["fitted_weights"], cross = {}, {}
        for family, features in FAMILIES.items():
            weights = dict(zip(features, fit(items, features, l2), strict=True))
            result["fitted_weights"][family] = full(weights)
            measure(f"fitted {family} (in-sample)", weights)
            folds = []
            for fold in range(FOLDS):
                train = [i for j, i in enumerate(items) if j % FOLDS != fold]
                test = [i for j, i in enumerate(items) if j % FOLDS == fold]
                fold_weights = full(dict(zip(features, fit(train, features, l2), strict=True)))
                folds.append((len(test), score(test, linear(fold_weights, RANK_FEATURES))))
            cross[family] = {key: round(sum(m * s[key] for m, s in folds) / n, 4)
                             for key in ("citation_accuracy", "rouge_l", "answered")}
            scorers[f"fitted {family} ({FOLDS}-fold cross-validated)"] = cross[family]
        before = scorers["sentence (before the fit)"]
        ok = [f for f in FAMILIES
              if scorers[f"fitted {f} (in-sample)"].get("unanswerable_answered_calibration", 0)
              <= before.get("unanswerable_answered_calibration", 0)
              and scorers[f"fitted {f} (in-sample)"]["answered"] >= before["answered"] - 0.01]
        result["chosen"] = max(ok, key=lambda f: cross[f]["citation_accuracy"]) if ok else None
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = doc_parser(__doc__, "python bench/quote_rank.py")
    parser.add_argument("--fit", action="store_true",
                        help="refit RANK_WEIGHTS on faq_history and cross-validate the fit")
    parser.add_argument("--unanswerable", default=None, metavar="PATH",
                        help="JSONL of in-domain unanswerable questions: each scorer's answered "
                        "rate per split (the choice rule reads the calibration split)")
    parser.add_argument("--l2", type=float, default=0.05,
                        help="L2 penalty of the fit (default 0.05)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="the first N questions only")
    parser.add_argument("--home", type=Path, default=REPO / "runs" / "bench" / "emanual-pdf",
                        help="index of smart_tv_manual.pdf (built when missing)")
    parser.add_argument("--max-contexts", type=int, default=None, metavar="N",
                        help="passages kept after grading (default: the agent's, "
                        "Context.max_contexts)")
    parser.add_argument("--rerank", default="off", choices=("off", "best_first", "select"),
                        help="which graded passages are the candidates' (Context.rerank; "
                        "default off, the agent's); other than off, results go to "
                        "quote_rank[_N]_rerank-<MODE>.json")
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
    rerank = args.rerank
    context = Context(searcher=searcher, llm=None, embedder=searcher.embedder, rerank=rerank)
    if args.max_contexts:
        context = Context(searcher=searcher, llm=None, max_contexts=args.max_contexts,
                          top_k=max(context.top_k, args.max_contexts),
                          embedder=searcher.embedder, rerank=rerank)
    unanswerable = []
    if args.unanswerable:
        from eval.questions import load_questions

        questions, _ = load_questions(args.unanswerable)
        unanswerable = [{"question": q.question, "split": q.extra.get("split")}
                        for q in questions if not q.answerable]
    for row in rows:
        row["page"] = int(row["page"])
    result = study(collect(rows, searcher, context), collect(unanswerable, searcher, context),
                   args.fit, args.l2)
    result["max_contexts"] = context.max_contexts
    result["l2"] = args.l2
    result["load_average"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = f"quote_rank_{args.max_contexts}.json" if args.max_contexts else "quote_rank.json"
    out = out if args.rerank == "off" else out.replace(".json", f"_rerank-{args.rerank}.json")
    result["rerank"] = context.rerank
    (RESULTS / out).write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['questions']} faq_history questions; ceilings: " + ", ".join(
        f"{k} {v:.0%}" for k, v in result["ceilings"].items()))
    print(f"{'scorer':42s} citation  ROUGE-L  answered  unanswerable answered")
    for name, v in result["scorers"].items():
        extra = ", ".join(f"{k.removeprefix('unanswerable_answered_')} {x:.0%}"
                          for k, x in v.items() if k.startswith("unanswerable_answered_"))
        print(f"{name:42s} {v['citation_accuracy']:8.1%}  {v['rouge_l']:.3f}  "
              f"{v['answered']:8.1%}  {extra}")
    for family, weights in result.get("fitted_weights", {}).items():
        print(f"fitted {family}: RANK_WEIGHTS = {weights}")
    if "chosen" in result:
        print(f"chosen: {result['chosen']}")
    print(f"wrote bench/results/{out} (load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
