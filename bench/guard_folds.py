"""python bench/guard_folds.py [--train FILE] [--out FILE]: the guard's threshold rules, judged out of fold.

`python -m agent.guard_train` fits the guard on folds 1-4 of its training set's items and
chooses the threshold on fold 0 (the validation split) as the lowest that flags at most 1 % of
the benign *sentences* there. This measures how such a threshold holds on the other folds,
which the shipped models never saw either, and compares it with other rules:

- `fold0 per-sentence`: the shipped rule (calibration and threshold on fold 0, 1 % of the
  benign sentences);
- `fold0 per-item`: the same, each benign item counted once however many phrasings it was
  expanded into (`agent.guard_train.group_weights`);
- `pooled per-sentence` and `pooled per-item`: calibration and threshold on the out-of-fold
  scores of all five folds (each fold scored by the models refitted without it).

For each rule: the threshold, and per fold the recall on harmful sentences and the share of
benign items flagged (fold 0 is in sample for the fold-0 rules, every fold for the pooled
ones). Only the training set is read: no evaluation set, so it can be used to choose a rule.
The sentence model and the character model are fixed (`--model`, `--char-c`; the defaults are
the ones `classifier.json` keeps), not re-chosen per fold.

Run it under the team's CPU lock (five fits of each scorer; about four minutes on the team
machine): `flock /tmp/casewise-cpu.lock python bench/guard_folds.py`. A table goes to stdout,
the rows to `bench/results/guard_folds.json`.

Examples:
  flock /tmp/casewise-cpu.lock python bench/guard_folds.py
  python bench/guard_folds.py --train /tmp/train_variant.yaml --out /tmp/folds.json
  python bench/guard_folds.py --model logistic:4 --char-c 16
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from agent.guard_train import (  # noqa: E402
    TRAIN_PATH,
    VALIDATION_EVERY,
    _fit,
    choose_threshold,
    fit_char_model,
    fit_platt,
    group_folds,
    group_weights,
    load_training_set,
)
from agent.guards import BENIGN, _platt  # noqa: E402
from bench import doc_parser  # noqa: E402
from bench.guard import load_load  # noqa: E402
from retrieval.errors import UsageError, run_cli  # noqa: E402

RESULTS = REPO / "bench" / "results"


def parse_model(text: str) -> tuple:
    """`mlp:256:0.01` or `logistic:4` as a `MODEL_GRID` entry (UsageError when malformed)."""
    parts = text.split(":")
    try:
        if parts[0] == "mlp" and len(parts) == 3:
            return ("mlp", int(parts[1]), float(parts[2]))
        if parts[0] == "logistic" and len(parts) == 2:
            return ("logistic", float(parts[1]))
    except ValueError:
        pass
    raise UsageError(f"--model {text!r}: expected mlp:WIDTH:ALPHA or logistic:C")


def out_of_fold_scores(examples, vectors: np.ndarray, spec: tuple, char_c: float,
                       say=print, folds: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each sentence's two harmful probabilities from the models fitted without its fold.

    Args:
        examples: The expanded training set.
        vectors: Their sentence vectors, one row each.
        spec: The sentence model (a `MODEL_GRID` entry).
        char_c: The character model's C.
        say: Progress printer.
        folds: Each sentence's fold (`group_folds(examples)` when `None`).

    Returns:
        `{"vector": ..., "chars": ...}`, one probability per sentence.
    """
    folds = group_folds(examples) if folds is None else folds
    texts = [e.text for e in examples]
    labels = [e.label for e in examples]
    scores = {"vector": np.empty(len(examples)), "chars": np.empty(len(examples))}
    for k in range(VALIDATION_EVERY):
        start = time.perf_counter()
        rest, held = folds != k, folds == k
        rest_labels = [label for label, r in zip(labels, rest) if r]
        model = _fit(vectors[rest], rest_labels, spec)
        benign = list(model.classes_).index(BENIGN)
        scores["vector"][held] = 1.0 - model.predict_proba(vectors[held])[:, benign]
        chars = fit_char_model([t for t, r in zip(texts, rest) if r], rest_labels, char_c)
        scores["chars"][held] = chars.probabilities([t for t, h in zip(texts, held) if h])
        say(f"  fold {k}: {int(held.sum())} sentences scored out of fold "
            f"({time.perf_counter() - start:.0f} s)")
    return scores


def judge_rules(examples, scores: dict[str, np.ndarray]) -> list[dict]:
    """Each threshold rule's threshold and its recall and per-item false-positive rate per fold."""
    folds = group_folds(examples)
    harmful = np.array([e.label != BENIGN for e in examples])
    weights = group_weights(examples)
    rows = []
    for name, chosen_on, per_item in (("fold0 per-sentence", folds == 0, False),
                                      ("fold0 per-item", folds == 0, True),
                                      ("pooled per-sentence", np.ones(len(folds), bool), False),
                                      ("pooled per-item", np.ones(len(folds), bool), True)):
        y = harmful[chosen_on]
        calibration = {k: fit_platt(v[chosen_on], y) for k, v in scores.items()}
        combined = (_platt(scores["vector"], calibration["vector"])
                    + _platt(scores["chars"], calibration["chars"])) / 2
        threshold = choose_threshold(combined[chosen_on], y,
                                     weights=weights[chosen_on] if per_item else None)
        flagged = combined >= threshold
        recall, benign_items = [], []
        for k in range(VALIDATION_EVERY):
            harm, safe = (folds == k) & harmful, (folds == k) & ~harmful
            recall.append(round(float(flagged[harm].mean()), 4))
            benign_items.append(round(float(weights[safe] @ flagged[safe] / weights[safe].sum()),
                                      4))
        rows.append({"rule": name, "threshold": round(threshold, 4),
                     "recall_per_fold": recall, "benign_items_flagged_per_fold": benign_items})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure the threshold rules and write the table and the JSON."""
    parser = doc_parser(__doc__, "python bench/guard_folds.py")
    parser.add_argument("--train", type=Path, default=TRAIN_PATH,
                        help=f"training set (default {TRAIN_PATH.relative_to(REPO)})")
    parser.add_argument("--model", default="mlp:256:0.01",
                        help="sentence model, mlp:WIDTH:ALPHA or logistic:C (default mlp:256:0.01)")
    parser.add_argument("--char-c", type=float, default=64.0,
                        help="the character model's C (default 64)")
    parser.add_argument("--out", type=Path, default=RESULTS / "guard_folds.json",
                        help="where the JSON goes (default bench/results/guard_folds.json)")
    args = parser.parse_args(argv)
    return run_cli(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    """Embed, fit per fold, judge the rules, print and write."""
    from retrieval.embeddings import load_embedder

    spec = parse_model(args.model)
    load_start = load_load()
    examples = load_training_set(args.train)
    print(f"{len(examples)} sentences from {args.train}", file=sys.stderr)
    vectors = np.asarray(load_embedder("default").embed_documents([e.text for e in examples]),
                         dtype=np.float64)
    scores = out_of_fold_scores(examples, vectors, spec, args.char_c,
                                say=lambda m: print(m, file=sys.stderr))
    rows = judge_rules(examples, scores)
    print("| rule | threshold | recall per fold (0-4) | benign items flagged per fold (0-4) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['rule']} | {r['threshold']:.4f} | "
              f"{' '.join(f'{v:.3f}' for v in r['recall_per_fold'])} | "
              f"{' '.join(f'{v:.3f}' for v in r['benign_items_flagged_per_fold'])} |")
    report = {"train": str(args.train), "model": args.model, "char_c": args.char_c,
              "rows": rows, "load_average": {"start": load_start, "end": load_load()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
