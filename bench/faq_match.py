"""python bench/faq_match.py [--json] [--home DIR]: FAQ match accuracy and its threshold.

On `../shared/data/emanual/`: index `faq_history.csv` (chunks of type `faq`), then

1. calibrate the similarity threshold on the history itself: every ticket question is matched
   against the other tickets (score: see `agent.faq`); a ticket that has a paraphrase (another row with the same answer)
   should match one of them, a ticket without one should match nothing. Reported: the threshold
   with the best F1 and the recommended one, the lowest within 0.025 F1 of it (the curve is flat
   there, and a shown match is advisory, so recall wins ties); `agent.faq.DEFAULT_FAQ_THRESHOLD`
   is the recommended one.
2. evaluate on dev: every paraphrased dev question whose reference is a `faq_history` answer
   should match a ticket with that answer. Reports accuracy@1 (top match is such a ticket) and
   precision/recall of the match shown at the threshold.

Results go to stdout and `bench/results/faq_match.json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.faq import DEFAULT_FAQ_THRESHOLD, FaqMatcher  # noqa: E402
from retrieval.settings import Settings  # noqa: E402
from retrieval.text import normalise  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "emanual"
RESULTS = REPO / "bench" / "results"
F1_SLACK = 0.025


def answer_matches(faq_answer: str, reference: str) -> bool:
    """A ticket's answer matches a dev reference: near-identical text (rapidfuzz ratio >= 85) or
    the ticket's answer contains the whole reference (tickets often answer two questions)."""
    from rapidfuzz import fuzz

    a, r = normalise(faq_answer), normalise(reference)
    return fuzz.ratio(a, r) >= 85 or (len(r) >= 40 and r in a)


def open_faq_searcher(home: Path):
    """Searcher over an index holding faq_history.csv (built on first use)."""
    from ingest.pipeline import run
    from retrieval.search import open_searcher

    settings = Settings.resolve(home=home)
    if not settings.manifest_path.exists():
        run([DATA / "faq_history.csv"], settings, progress=False)
    return open_searcher(settings)


def best_other(matcher: FaqMatcher, question: str):
    """Best FAQ hit for a history question, skipping the ticket itself."""
    hits = matcher.searcher.search(question, k=matcher.candidates + 1, where={"type": "faq"})
    hits = [h for h in hits if norm(h.chunk.metadata.get("question", "")) != norm(question)]
    return max(((h, matcher.score(question, h)) for h in hits), key=lambda t: t[1], default=None)


def f1_curve(samples: list[tuple[float, bool, bool]]) -> list[dict]:
    """Precision/recall/F1 per threshold; samples are (similarity, correct, has_answer)."""
    positives = sum(has for _, _, has in samples)
    rows = []
    for t in [round(0.30 + 0.01 * i, 2) for i in range(121)]:
        shown = [(c, has) for s, c, has in samples if s >= t]
        tp = sum(c for c, _ in shown)
        p = tp / len(shown) if shown else 1.0
        r = tp / positives if positives else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        rows.append({"threshold": t, "precision": round(p, 4), "recall": round(r, 4),
                     "f1": round(f1, 4), "shown": len(shown)})
    return rows


def calibrate(matcher: FaqMatcher, rows: list[dict]) -> dict:
    groups: dict[str, int] = {}
    for r in rows:
        groups[norm(r["answer"])] = groups.get(norm(r["answer"]), 0) + 1
    samples = []
    for r in rows:
        found = best_other(matcher, r["question"])
        if found is None:
            continue
        hit, score = found
        has = groups[norm(r["answer"])] > 1
        correct = has and norm(hit.chunk.metadata.get("answer", "")) == norm(r["answer"])
        samples.append((score, correct, has))
    curve = f1_curve(samples)
    best = max(curve, key=lambda x: (x["f1"], x["precision"]))
    # The F1 curve is flat near its peak; a shown match is advisory (it sits beside the answer),
    # so recommend the lowest threshold within F1_SLACK of the best, which favours recall.
    recommended = min((x for x in curve if x["f1"] >= best["f1"] - F1_SLACK),
                      key=lambda x: x["threshold"])
    return {"tickets": len(rows), "with_paraphrase": sum(s[2] for s in samples),
            "top1_correct_when_paraphrase": round(
                sum(s[1] for s in samples) / max(1, sum(s[2] for s in samples)), 4),
            "best": best, "recommended": recommended, "curve": curve}


def evaluate(matcher: FaqMatcher, rows: list[dict], threshold: float) -> dict:
    dev = [json.loads(line) for line in (DATA / "qa_dev.jsonl").open() if line.strip()]
    cases = [q for q in dev if q["kind"] == "paraphrased"
             and any(answer_matches(r["answer"], q["reference"]) for r in rows)]
    others = [q for q in dev if q not in cases]
    correct_top1 = shown = shown_correct = 0
    details = []
    for q in cases:
        hit, score = matcher.best(q["question"]) or (None, None)
        ok = hit is not None and answer_matches(hit.chunk.metadata.get("answer", ""),
                                                q["reference"])
        above = hit is not None and score >= threshold
        correct_top1 += ok
        shown += above
        shown_correct += ok and above
        details.append({"id": q["id"], "question": q["question"], "correct": ok,
                        "matched": hit.chunk.metadata.get("question") if hit else None,
                        "similarity": round(hit.similarity, 4) if hit else None,
                        "score": round(score, 4) if hit else None})
    other_shown = sum(
        (b := matcher.best(q["question"])) is not None and b[1] >= threshold for q in others
    )
    n = len(cases)
    return {
        "paraphrased_with_faq_answer": n,
        "accuracy_at_1": round(correct_top1 / n, 4) if n else None,
        "threshold": threshold,
        "precision": round(shown_correct / shown, 4) if shown else None,
        "recall": round(shown_correct / n, 4) if n else None,
        "other_dev_questions": len(others),
        "other_dev_questions_shown_a_match": other_shown,
        "details": details,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=REPO / "runs" / "bench" / "emanual-faq",
                        help="index directory for faq_history.csv (built when missing)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if not DATA.exists():
        print(f"error: {DATA} not found: this benchmark needs ../shared/data", file=sys.stderr)
        return 1
    start = time.perf_counter()
    matcher = FaqMatcher(open_faq_searcher(args.home), threshold=DEFAULT_FAQ_THRESHOLD)
    rows = list(csv.DictReader((DATA / "faq_history.csv").open(encoding="utf-8")))
    calibration = calibrate(matcher, rows)
    result = {
        "embedder": "default (all-MiniLM-L6-v2)",
        "default_threshold": DEFAULT_FAQ_THRESHOLD,
        "calibration": calibration,
        "dev_at_default": evaluate(matcher, rows, DEFAULT_FAQ_THRESHOLD),
        "dev_at_best_f1": evaluate(matcher, rows, calibration["best"]["threshold"]),
        "seconds": round(time.perf_counter() - start, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faq_match.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        best, dev = calibration["best"], result["dev_at_default"]
        print(f"calibration on faq_history ({calibration['tickets']} tickets, "
              f"{calibration['with_paraphrase']} with a paraphrase): best threshold "
              f"{best['threshold']} (precision {best['precision']}, recall {best['recall']}, "
              f"F1 {best['f1']}); recommended (lowest within {F1_SLACK} F1) "
              f"{calibration['recommended']['threshold']} (precision "
              f"{calibration['recommended']['precision']}, recall "
              f"{calibration['recommended']['recall']})")
        print(f"dev: {dev['paraphrased_with_faq_answer']} paraphrased questions with a FAQ "
              f"answer: accuracy@1 {dev['accuracy_at_1']}; at threshold {dev['threshold']}: "
              f"precision {dev['precision']}, recall {dev['recall']}; other dev questions shown "
              f"a match: {dev['other_dev_questions_shown_a_match']}/{dev['other_dev_questions']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
