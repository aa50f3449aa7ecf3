"""python bench/guard_folds.py [--train FILE] [--folds F] [--words C] [--out FILE]: rules out of fold.

`python -m agent.guard_train` fits the guard on folds 1-4 of its training set's items and
chooses the threshold on fold 0 (the validation split) as the lowest that flags at most 1 % of
the benign *sentences* there. This measures how such a threshold holds on the other folds,
which the shipped models never saw either, and compares it with other rules:

- `fold0 per-sentence`: the shipped rule (calibration and threshold on fold 0, 1 % of the
  benign sentences);
- `fold0 per-item`: the same, each benign item counted once however many phrasings it was
  expanded into (`agent.guard_train.group_weights`);
- `pooled per-sentence` and `pooled per-item`: calibration and threshold on the out-of-fold
  scores of all five folds (each fold scored by the models refitted without it);
- `nested pooled per-item`: for each fold, calibration and threshold chosen on the other four
  folds' out-of-fold scores, then applied to it: the one rule whose every fold is measured out
  of sample, so its benign rates say whether a budget chosen this way holds.

For each rule: the threshold, and per fold the recall on harmful sentences and the share of
benign items flagged (fold 0 is in sample for the fold-0 rules, every fold for the pooled
ones). Only the training set is read: no evaluation set, so it can be used to choose a rule.
The sentence model and the character model are fixed (`--model`, `--char-c`; the defaults are
the ones `classifier.json` keeps), not re-chosen per fold. `--words C` adds a third scorer, a
logistic regression on TF-IDF of words and word pairs (`retrieval.text.word_ngrams`);
`--combine stack` replaces the mean of the Platt-calibrated probabilities by a logistic
regression on the scorers' logits (fitted where the rule calibrates, each item counted
once); `--folds stable` assigns folds from each item's own hash (`agent.guard_train.
stable_folds`) instead of dealing them in hash order; `--max-fpr` is the benign budget.
`--encoder EPOCHS` adds a scorer that fine-tunes all-MiniLM-L6-v2 itself end to end (mean
pooling and one linear unit, harmful against benign, `sample_weights` balance; about a
minute per fold and epoch on the team machine), and `--judge` names the scorer sets to
judge (`vector+chars,encoder`: one table each; default all scorers together).

Run it under the team's CPU lock (five fits of each scorer; about four minutes on the team
machine): `flock /tmp/casewise-cpu.lock python bench/guard_folds.py`. A table goes to stdout,
the rows to `bench/results/guard_folds.json`.

Examples:
  flock /tmp/casewise-cpu.lock python bench/guard_folds.py
  python bench/guard_folds.py --train /tmp/train_variant.yaml --out /tmp/folds.json
  python bench/guard_folds.py --model logistic:4 --char-c 16
  python bench/guard_folds.py --folds stable --words 16 --combine stack
  python bench/guard_folds.py --encoder 2 --judge vector+chars,encoder,encoder+vector+chars
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
    MAX_VALIDATION_FPR,
    TRAIN_PATH,
    VALIDATION_EVERY,
    _fit,
    choose_threshold,
    fit_char_model,
    fit_platt,
    group_folds,
    group_weights,
    load_training_set,
    sample_weights,
    stable_folds,
)
from agent.guards import BENIGN, platt  # noqa: E402
from bench import doc_parser  # noqa: E402
from bench.guard import load_load  # noqa: E402
from retrieval.errors import UsageError, run_cli  # noqa: E402
from retrieval.text import word_ngrams  # noqa: E402

RESULTS = REPO / "bench" / "results"
FOLDS = {"rank": group_folds, "stable": stable_folds}


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


def fit_word_model(texts: list[str], labels: list[str], c: float):
    """A logistic regression, harmful against benign, on TF-IDF of words and word pairs.

    Fitted like the character model (`sample_weights` balance, n-grams seen in at least two
    training sentences, sublinear tf), on `retrieval.text.word_ngrams`.

    Args:
        texts: Training sentences.
        labels: Their labels (`"benign"` or a harmful category).
        c: Inverse L2 regularisation strength.

    Returns:
        A function from a list of texts to their harmful probabilities.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer=word_ngrams, sublinear_tf=True, min_df=2)
    features = vectorizer.fit_transform(texts)
    model = LogisticRegression(C=c, max_iter=5000, tol=1e-6)
    model.fit(features, [label != BENIGN for label in labels],
              sample_weight=sample_weights(labels))
    return lambda batch: model.predict_proba(vectorizer.transform(batch))[:, 1]


def fit_encoder_model(texts: list[str], labels: list[str], epochs: int = 2, lr: float = 5e-5,
                      batch_size: int = 32):
    """all-MiniLM-L6-v2 fine-tuned end to end as a harmful-against-benign scorer.

    The bundled weights (`retrieval.embeddings.bundled_model_path`), mean pooling as the
    sentence embedder pools, one linear unit on top; AdamW with a linear decay, sentences
    weighted by `sample_weights`, seeded (reproducible on one machine). Only for measuring:
    the shipped guard reuses retrieval's frozen embedder.

    Args:
        texts: Training sentences.
        labels: Their labels (`"benign"` or a harmful category).
        epochs: Passes over the training sentences.
        lr: Peak learning rate.
        batch_size: Sentences per step.

    Returns:
        A function from a list of texts to their harmful probabilities.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    from retrieval.embeddings import bundled_model_path

    torch.manual_seed(0)
    path = bundled_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path)
    head = torch.nn.Linear(encoder.config.hidden_size, 1)

    def logits(batch: list[str]):
        tokens = tokenizer(batch, padding=True, truncation=True, max_length=64,
                           return_tensors="pt")
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        pooled = (encoder(**tokens).last_hidden_state * mask).sum(1) / mask.sum(1)
        return head(pooled).squeeze(-1)

    weights = torch.tensor(sample_weights(labels), dtype=torch.float32)
    target = torch.tensor([label != BENIGN for label in labels], dtype=torch.float32)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=lr,
                                  weight_decay=0.01)
    steps = epochs * -(-len(texts) // batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / steps))
    order = torch.Generator().manual_seed(0)
    encoder.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(texts), generator=order).split(batch_size):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits([texts[i] for i in idx]), target[idx], reduction="none")
            optimizer.zero_grad()
            (loss * weights[idx]).mean().backward()
            optimizer.step()
            schedule.step()
    encoder.eval()

    def probabilities(batch: list[str]) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([torch.sigmoid(logits(batch[i:i + 128])).numpy()
                                   for i in range(0, len(batch), 128)]) if batch else np.empty(0)

    return probabilities


def scorer_names(word_c: float | None = None, encoder_epochs: int | None = None) -> list[str]:
    """The scorers `out_of_fold_scores` fits: the shipped two, and the optional ones asked for."""
    return (["vector", "chars"] + (["words"] if word_c is not None else [])
            + (["encoder"] if encoder_epochs is not None else []))


def out_of_fold_scores(examples, vectors: np.ndarray, spec: tuple, char_c: float,
                       say=print, folds: np.ndarray | None = None,
                       word_c: float | None = None,
                       encoder_epochs: int | None = None) -> dict[str, np.ndarray]:
    """Each sentence's harmful probabilities from the models fitted without its fold.

    Args:
        examples: The expanded training set.
        vectors: Their sentence vectors, one row each.
        spec: The sentence model (a `MODEL_GRID` entry).
        char_c: The character model's C.
        say: Progress printer.
        folds: Each sentence's fold (`group_folds(examples)` when `None`).
        word_c: The word model's C (`fit_word_model`), or `None` for no word model.
        encoder_epochs: Epochs of the fine-tuned encoder (`fit_encoder_model`), or `None` for
            none.

    Returns:
        `{"vector": ..., "chars": ...}` (and `"words"` with `word_c`, `"encoder"` with
        `encoder_epochs`), one probability per sentence.
    """
    folds = group_folds(examples) if folds is None else folds
    texts = [e.text for e in examples]
    labels = [e.label for e in examples]
    scores = {name: np.empty(len(examples)) for name in scorer_names(word_c, encoder_epochs)}
    for k in range(VALIDATION_EVERY):
        start = time.perf_counter()
        rest, held = folds != k, folds == k
        rest_labels = [label for label, r in zip(labels, rest) if r]
        model = _fit(vectors[rest], rest_labels, spec)
        benign = list(model.classes_).index(BENIGN)
        scores["vector"][held] = 1.0 - model.predict_proba(vectors[held])[:, benign]
        chars = fit_char_model([t for t, r in zip(texts, rest) if r], rest_labels, char_c)
        scores["chars"][held] = chars.probabilities([t for t, h in zip(texts, held) if h])
        if word_c is not None:
            fitted = fit_word_model([t for t, r in zip(texts, rest) if r], rest_labels, word_c)
            scores["words"][held] = fitted([t for t, h in zip(texts, held) if h])
        if encoder_epochs is not None:
            fitted = fit_encoder_model([t for t, r in zip(texts, rest) if r], rest_labels,
                                       encoder_epochs)
            scores["encoder"][held] = fitted([t for t, h in zip(texts, held) if h])
        say(f"  fold {k}: {int(held.sum())} sentences scored out of fold "
            f"({time.perf_counter() - start:.0f} s)")
    return scores


def combine(scores: dict[str, np.ndarray], harmful: np.ndarray, fit_on: np.ndarray,
            how: str = "mean", weights: np.ndarray | None = None) -> np.ndarray:
    """The scorers' probabilities as one score, its parameters fitted on the `fit_on` sentences.

    Args:
        scores: Each scorer's probability per sentence.
        harmful: Whether each sentence is harmful.
        fit_on: Where the calibration (or the stacking model) is fitted.
        how: `"mean"`: the mean of the Platt-calibrated probabilities (what the guard ships);
            `"stack"`: a logistic regression on the scorers' logits.
        weights: What each sentence counts for in the stacking fit (`group_weights`).

    Returns:
        One score per sentence, all sentences.
    """
    if how == "mean":
        return np.mean([platt(p, fit_platt(p[fit_on], harmful[fit_on]))
                        for p in scores.values()], axis=0)
    from sklearn.linear_model import LogisticRegression

    logits = np.stack([np.log(np.clip(p, 1e-7, 1 - 1e-7) / np.clip(1 - p, 1e-7, 1))
                       for p in scores.values()], axis=1)
    model = LogisticRegression(C=1.0).fit(
        logits[fit_on], harmful[fit_on],
        sample_weight=None if weights is None else weights[fit_on])
    return model.predict_proba(logits)[:, 1]


def judge_rules(examples, scores: dict[str, np.ndarray], folds: np.ndarray | None = None,
                how: str = "mean", max_fpr: float = MAX_VALIDATION_FPR) -> list[dict]:
    """Each threshold rule's threshold and its recall and per-item false-positive rate per fold.

    Args:
        examples: The expanded training set.
        scores: Out-of-fold probabilities per scorer (`out_of_fold_scores`).
        folds: The folds those were computed with (`group_folds(examples)` when `None`).
        how: How the scorers are combined (`combine`).
        max_fpr: The benign budget every rule chooses its threshold for.

    Returns:
        One row per rule; the nested rule's `threshold` is the mean of its five, listed in
        `threshold_per_fold`.
    """
    folds = group_folds(examples) if folds is None else folds
    harmful = np.array([e.label != BENIGN for e in examples])
    weights = group_weights(examples)

    def per_fold(flagged: np.ndarray, k: int) -> tuple[float, float]:
        harm, safe = (folds == k) & harmful, (folds == k) & ~harmful
        return (round(float(flagged[harm].mean()), 4),
                round(float(weights[safe] @ flagged[safe] / weights[safe].sum()), 4))

    rows = []
    for name, chosen_on, per_item in (("fold0 per-sentence", folds == 0, False),
                                      ("fold0 per-item", folds == 0, True),
                                      ("pooled per-sentence", np.ones(len(folds), bool), False),
                                      ("pooled per-item", np.ones(len(folds), bool), True)):
        y = harmful[chosen_on]
        combined = combine(scores, harmful, chosen_on, how, weights)
        threshold = choose_threshold(combined[chosen_on], y, max_fpr,
                                     weights=weights[chosen_on] if per_item else None)
        recall, benign_items = zip(*(per_fold(combined >= threshold, k)
                                     for k in range(VALIDATION_EVERY)))
        rows.append({"rule": name, "threshold": round(threshold, 4),
                     "recall_per_fold": list(recall),
                     "benign_items_flagged_per_fold": list(benign_items)})
    thresholds, recall, benign_items = [], [], []
    for k in range(VALIDATION_EVERY):
        rest = folds != k
        combined = combine(scores, harmful, rest, how, weights)
        thresholds.append(choose_threshold(combined[rest], harmful[rest], max_fpr,
                                           weights=weights[rest]))
        r, b = per_fold(combined >= thresholds[-1], k)
        recall.append(r)
        benign_items.append(b)
    rows.append({"rule": "nested pooled per-item",
                 "threshold": round(float(np.mean(thresholds)), 4),
                 "threshold_per_fold": [round(t, 4) for t in thresholds],
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
    parser.add_argument("--folds", choices=sorted(FOLDS), default="rank",
                        help="rank: dealt per label in hash order, as training splits (default); "
                             "stable: each item's fold from its own hash")
    parser.add_argument("--words", type=float, default=None, metavar="C",
                        help="add the word and word-pair scorer with this C (default: none)")
    parser.add_argument("--encoder", type=int, default=None, metavar="EPOCHS",
                        help="add a scorer that fine-tunes all-MiniLM-L6-v2 end to end for "
                             "this many epochs (default: none)")
    parser.add_argument("--judge", default=None, metavar="SETS",
                        help="comma-separated scorer sets to judge, each scorers joined by '+' "
                             "(e.g. vector+chars,encoder; default: all scorers together)")
    parser.add_argument("--combine", choices=("mean", "stack"), default="mean",
                        help="mean of the calibrated probabilities (default, as shipped) or a "
                             "logistic regression on the scorers' logits")
    parser.add_argument("--max-fpr", type=float, default=MAX_VALIDATION_FPR,
                        help=f"benign budget of every rule (default {MAX_VALIDATION_FPR})")
    parser.add_argument("--out", type=Path, default=RESULTS / "guard_folds.json",
                        help="where the JSON goes (default bench/results/guard_folds.json)")
    args = parser.parse_args(argv)
    if args.words is not None and args.words <= 0:
        parser.error(f"--words ({args.words:g}) must be a positive C")
    if args.encoder is not None and args.encoder < 1:
        parser.error(f"--encoder ({args.encoder}) must be at least 1 epoch")
    if not 0 < args.max_fpr < 1:
        parser.error(f"--max-fpr ({args.max_fpr:g}) must be between 0 and 1")
    return run_cli(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    """Embed, fit per fold, judge the rules, print and write."""
    from retrieval.embeddings import load_embedder

    spec = parse_model(args.model)
    available = scorer_names(args.words, args.encoder)
    sets = [s.split("+") for s in (args.judge or "+".join(available)).split(",") if s]
    unknown = sorted({n for names in sets for n in names} - set(available))
    if unknown or not sets:
        raise UsageError(f"--judge {args.judge!r}: scorers {', '.join(unknown) or 'none'} not "
                         f"among {', '.join(available)} (--words and --encoder add theirs)")
    load_start = load_load()
    examples = load_training_set(args.train)
    print(f"{len(examples)} sentences from {args.train}", file=sys.stderr)
    vectors = np.asarray(load_embedder("default").embed_documents([e.text for e in examples]),
                         dtype=np.float64)
    folds = FOLDS[args.folds](examples)
    scores = out_of_fold_scores(examples, vectors, spec, args.char_c,
                                say=lambda m: print(m, file=sys.stderr), folds=folds,
                                word_c=args.words, encoder_epochs=args.encoder)
    judged = {}
    for names in sets:
        rows = judge_rules(examples, {n: scores[n] for n in names}, folds, args.combine,
                           args.max_fpr)
        judged["+".join(names)] = rows
        print(f"\n{'+'.join(names)}\n")
        print("| rule | threshold | recall per fold (0-4) | mean | benign items flagged per "
              "fold (0-4) | mean |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            recall, benign = r["recall_per_fold"], r["benign_items_flagged_per_fold"]
            print(f"| {r['rule']} | {r['threshold']:.4f} | "
                  f"{' '.join(f'{v:.3f}' for v in recall)} | {np.mean(recall):.3f} | "
                  f"{' '.join(f'{v:.3f}' for v in benign)} | {np.mean(benign):.3f} |")
    report = {"train": str(args.train), "model": args.model, "char_c": args.char_c,
              "word_c": args.words, "encoder_epochs": args.encoder, "folds": args.folds,
              "combine": args.combine, "max_fpr": args.max_fpr,
              "rows": next(iter(judged.values())), "judged": judged,
              "load_average": {"start": load_start, "end": load_load()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
