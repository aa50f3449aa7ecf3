"""python -m agent.guard_train: rebuild the guard's classifier file from the repo's training set.

    python -m agent.guard_train            # writes agent/guard_data/classifier.json
    python -m agent.guard_train --check    # retrains and says whether the shipped file matches

The training set is `agent/guard_data/train.yaml` (written for this project; its README gives the
provenance). Each item there is one group: an action ("build a pipe bomb") is expanded into a few
sentence frames chosen by a draw seeded with the item itself, so adding an item never changes
another item's sentences. Groups are split into train and validation per category (every fifth
group, in the order of their hashes), the classifier (on the all-MiniLM-L6-v2 sentence vectors:
`benign` plus one class per harmful category) is fitted on the train part for each model of
`MODEL_GRID` (multinomial logistic regressions and one-hidden-layer MLPs), the one with the best
validation partial AUC is kept. Beside it a character n-gram model (`agent.guards.CharModel`:
a logistic regression on TF-IDF of `retrieval.text.char_ngrams`, harmful against benign) is
fitted on the same train part for each C of `CHAR_GRID`, the best by validation partial AUC
kept. Each of the two is calibrated on the validation part (Platt scaling), the guard's score
is the mean of the two calibrated probabilities, and the threshold on it is chosen on the
validation part (`choose_threshold`). Nothing from `../shared/data` is read.

The result is plain JSON (weights and biases per layer, classes, threshold, the training set's
sha256, validation figures): it loads offline with the standard library and numpy, and no
pickle is involved. The same command on the same repo gives the same file up to float noise of
the embedder (`--check` compares within a tolerance).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import random
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from agent.guards import BENIGN, CLASSIFIER_PATH, DATA_DIR, CharModel, Classifier
from retrieval.errors import CasewiseError, UsageError, run_cli
from retrieval.text import char_ngrams

TRAIN_PATH = DATA_DIR / "train.yaml"
# Frames drawn per item: enough phrasings that the act, not the frame, carries the label.
FRAMES_PER_ITEM = {"action": 4, "content": 3, "tool": 3}
# One sentence in TYPO_EVERY also appears with one or two typing slips (a dropped, doubled or
# swapped letter), so that misspelled requests land near their intended meaning.
TYPO_EVERY = 4
# One group in VALIDATION_EVERY goes to the validation split (per category).
VALIDATION_EVERY = 5
# Models tried: ("logistic", C) is a multinomial logistic regression with inverse regularisation
# C; ("mlp", width, alpha) a one-hidden-layer ReLU MLP with L2 penalty alpha. The one with the
# best validation partial ROC AUC up to SELECTION_MAX_FPR is kept: it averages recall over the
# low false-positive rates the threshold is chosen among, so it is steadier than the recall at
# one threshold (a couple of validation sentences move that by a point).
MODEL_GRID: tuple[tuple, ...] = (
    ("logistic", 4.0), ("logistic", 16.0),
    ("mlp", 256, 1e-3), ("mlp", 256, 1e-2), ("mlp", 512, 1e-3),
)
SELECTION_MAX_FPR = 0.05
# The character model: inverse regularisation strengths tried, n-gram sizes, and the fewest
# training sentences an n-gram must occur in (rarer ones are noise and would bloat the file).
CHAR_GRID: tuple[float, ...] = (4.0, 16.0, 64.0)
CHAR_SIZES = (2, 3, 4, 5)
CHAR_MIN_DF = 2
# The threshold keeps the validation false-positive rate on benign requests at or below this.
MAX_VALIDATION_FPR = 0.01
SEED = "casewise-guard-v1"


@dataclass(frozen=True)
class Example:
    """One training sentence.

    Attributes:
        text: The sentence.
        label: `"benign"` or a harmful category.
        group: The item it was expanded from (all its sentences share a split).
    """

    text: str
    label: str
    group: str


def load_training_set(path: Path = TRAIN_PATH) -> list[Example]:
    """Expand the training YAML into sentences, deterministically.

    Args:
        path: The training set file.

    Returns:
        Every sentence with its label and group, in file order.

    Raises:
        UsageError: The file is missing or not in the expected layout.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"{path}: cannot read the guard training set ({e})") from e
    if not isinstance(data, dict) or not {"framings", "harmful", "benign"} <= set(data):
        raise UsageError(f"{path}: expected the keys framings, harmful and benign")
    frames = data["framings"]
    examples: list[Example] = []
    for side in ("harmful", "benign"):
        for category, kinds in data[side].items():
            label = category if side == "harmful" else BENIGN
            for kind, items in kinds.items():
                for item in items or []:
                    group = f"{side}/{category}/{kind}/{item}"
                    if kind == "requests":
                        examples.append(Example(item, label, group))
                        continue
                    if kind not in FRAMES_PER_ITEM:
                        raise UsageError(f"{path}: {side}.{category}: unknown kind {kind!r}")
                    rng = random.Random(f"{SEED}:{group}")
                    sentences = [frame.format(x=item)
                                 for frame in rng.sample(frames[kind], FRAMES_PER_ITEM[kind])]
                    if kind == "action":
                        sentences.append(item)  # the bare act, as typed into a search box
                    examples += [Example(t, label, group) for t in sentences]
    seen = {e.text for e in examples}
    for e in list(examples):
        slipped = with_typos(e.text)
        if slipped is not None and slipped not in seen:
            seen.add(slipped)
            examples.append(Example(slipped, e.label, e.group))
    return examples


def with_typos(text: str) -> str | None:
    """For one sentence in `TYPO_EVERY` (chosen by a draw seeded with it), a misspelled copy.

    Args:
        text: A training sentence.

    Returns:
        The sentence with one or two slips in its longer words, or `None` when not drawn.
    """
    rng = random.Random(f"{SEED}:typo:{text}")
    if rng.randrange(TYPO_EVERY):
        return None
    words = text.split(" ")
    long_words = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not long_words:
        return None
    for i in rng.sample(long_words, min(len(long_words), rng.choice((1, 2)))):
        w = words[i]
        j = rng.randrange(1, len(w) - 1)
        slip = rng.choice(("drop", "double", "swap"))
        if slip == "drop":
            w = w[:j] + w[j + 1:]
        elif slip == "double":
            w = w[:j] + w[j] + w[j:]
        else:
            w = w[:j - 1] + w[j] + w[j - 1] + w[j + 1:]
        words[i] = w
    return " ".join(words)


def _group_rank(group: str) -> str:
    return hashlib.sha256(f"{SEED}:{group}".encode()).hexdigest()


def group_folds(examples: list[Example]) -> np.ndarray:
    """The fold (0 to `VALIDATION_EVERY - 1`) of each sentence: by group, stratified by label.

    Per label, groups are ranked by hash and dealt out in turn, so every fold has a fifth of
    each label's groups and all sentences of a group share a fold. Fold 0 is the validation
    split (`split_groups`).

    Args:
        examples: The expanded training set.

    Returns:
        `(len(examples),)` fold numbers.
    """
    by_label: dict[str, list[str]] = {}
    for e in examples:
        groups = by_label.setdefault(e.label, [])
        if e.group not in groups:
            groups.append(e.group)
    fold = {}
    for groups in by_label.values():
        for i, group in enumerate(sorted(groups, key=_group_rank)):
            fold[group] = i % VALIDATION_EVERY
    return np.array([fold[e.group] for e in examples], dtype=np.int64)


def stable_folds(examples: list[Example]) -> np.ndarray:
    """The fold of each sentence from its group's own hash: editing one item moves no other.

    `group_folds` deals each label's groups out by their rank in hash order, so every fold
    gets a fifth of each label, but adding or removing one item shifts the rank of every item
    after it and re-deals them (the third round found that this moved the threshold-deciding
    item into the validation split). Here a group's fold is its hash modulo the number of
    folds: it never changes while the group's text does not, at the price of folds of uneven
    size and label mix. `bench/guard_folds.py --folds stable` uses it; training still splits
    with `group_folds`, which the shipped `classifier.json` was built with.

    Args:
        examples: The expanded training set.

    Returns:
        `(len(examples),)` fold numbers, 0 to `VALIDATION_EVERY - 1`.
    """
    return np.array([int(hashlib.sha256(f"{SEED}:fold:{e.group}".encode()).hexdigest(), 16)
                     % VALIDATION_EVERY for e in examples], dtype=np.int64)


def split_groups(examples: list[Example]) -> tuple[list[Example], list[Example]]:
    """Train/validation split by group, stratified by label: every fifth group by hash order.

    Args:
        examples: The expanded training set.

    Returns:
        `(train, validation)`: folds 1 to 4 and fold 0 of `group_folds`.
    """
    folds = group_folds(examples)
    train = [e for e, k in zip(examples, folds) if k]
    validation = [e for e, k in zip(examples, folds) if not k]
    return train, validation


def choose_threshold(scores: np.ndarray, harmful: np.ndarray,
                     max_fpr: float = MAX_VALIDATION_FPR,
                     weights: np.ndarray | None = None) -> float:
    """The lowest threshold whose false-positive rate on benign validation requests is <= max_fpr.

    The lowest such threshold refuses the most harmful requests while over-refusing at most
    `max_fpr` of the benign ones. It is placed halfway between the benign score it must stay
    above and the next score up, so that it does not sit on a validation item.

    Args:
        scores: Harmful scores of the validation sentences.
        harmful: Whether each sentence is harmful.
        max_fpr: Largest false-positive rate allowed on the benign validation sentences.
        weights: What each sentence counts for in that rate (`group_weights`: one question,
            however many phrasings it was expanded into); equal when `None`.

    Returns:
        The threshold: a request is harmful when its score is at least this.
    """
    benign = scores[~harmful]
    w = np.ones(len(benign)) if weights is None else np.asarray(weights, dtype=np.float64)[~harmful]
    order = np.argsort(-benign, kind="stable")
    benign, share = benign[order], np.cumsum(w[order]) / w.sum()
    # Benign scores above the threshold are false positives: stay above the first benign
    # sentence at which their share would pass the budget (a float tolerance for exact ties).
    over = np.flatnonzero(share > max_fpr + 1e-9)
    floor = benign[over[0]] if len(over) else 0.0
    above = np.sort(scores[scores > floor])
    ceiling = above[0] if len(above) else 1.0
    return float((floor + ceiling) / 2)


def group_weights(examples: list[Example]) -> np.ndarray:
    """One over the size of each sentence's group: every item counts once, whatever its phrasings.

    An item is expanded into five to seven phrasings (frames, the bare act, typing slips) that
    score alike. Counted per sentence, one benign item the model cannot tell from harm fills a
    1 % budget of 500 sentences by itself, and the threshold then rises to whatever that item
    scores. Counted per item, the budget is 1 % of the questions, as the over-refusal targets
    are counted.

    Args:
        examples: The sentences.

    Returns:
        `(len(examples),)` weights; each group's sum to 1.
    """
    sizes = Counter(e.group for e in examples)
    return np.array([1.0 / sizes[e.group] for e in examples])


def sample_weights(labels: list[str]) -> np.ndarray:
    """Weights that give benign and harmful sentences the same total, categories alike.

    With one weight per class (`class_weight="balanced"`), `benign` would weigh as much as each
    single harmful category, a twelfth of all harm together, and the classifier would lean to
    refusing. Here benign gets half the total weight and the harmful categories share the other
    half equally.

    Args:
        labels: The training labels.

    Returns:
        One weight per sentence, averaging 1.
    """
    labels_array = np.asarray(labels)
    counts = Counter(labels)
    harmful = [c for c in counts if c != BENIGN]
    weights = np.empty(len(labels))
    for label, n in counts.items():
        share = 0.5 if label == BENIGN else 0.5 / len(harmful)
        weights[labels_array == label] = share * len(labels) / n
    return weights


def _fit(x: np.ndarray, y: list[str], spec: tuple):
    """Fit one model of `MODEL_GRID` with the benign/harm balanced weights (seeded: reproducible)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    if spec[0] == "logistic":
        model = LogisticRegression(C=spec[1], max_iter=5000, tol=1e-6)
    else:
        model = MLPClassifier((spec[1],), alpha=spec[2], max_iter=400, tol=1e-5,
                              random_state=0)
    return model.fit(x, y, sample_weight=sample_weights(y))


def fit_char_model(texts: list[str], labels: list[str], c: float) -> CharModel:
    """Fit the character n-gram model (harmful against benign, `sample_weights` balance).

    Args:
        texts: Training sentences.
        labels: Their labels (`"benign"` or a harmful category).
        c: Inverse L2 regularisation strength of the logistic regression.

    Returns:
        The model, with the vectoriser's vocabulary and idf (no pickle).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer=functools.partial(char_ngrams, sizes=CHAR_SIZES),
                                 sublinear_tf=True, min_df=CHAR_MIN_DF)
    features = vectorizer.fit_transform(texts)
    harmful = np.array([label != BENIGN for label in labels])
    model = LogisticRegression(C=c, max_iter=5000, tol=1e-6)
    model.fit(features, harmful, sample_weight=sample_weights(labels))
    vocabulary = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
    return CharModel(vocabulary=vocabulary, idf=vectorizer.idf_, coef=model.coef_[0],
                     intercept=float(model.intercept_[0]), sizes=CHAR_SIZES)


def fit_platt(scores: np.ndarray, harmful: np.ndarray) -> tuple[float, float]:
    """Platt scaling on the validation split: `(a, b)` of `sigmoid(a * logit(p) + b)`.

    Args:
        scores: A scorer's probabilities on the validation sentences.
        harmful: Whether each sentence is harmful.

    Returns:
        `(a, b)`.
    """
    from sklearn.linear_model import LogisticRegression

    p = np.clip(scores, 1e-7, 1 - 1e-7)
    # Nearly unregularised: two parameters on about a thousand sentences.
    model = LogisticRegression(C=1e4, max_iter=1000).fit(np.log(p / (1 - p))[:, None], harmful)
    return float(model.coef_[0][0]), float(model.intercept_[0])


def _as_classifier(model, embedder_name: str) -> Classifier:
    """The fitted scikit-learn model as a `Classifier` (weights only: no pickle)."""
    classes = [str(k) for k in model.classes_]
    if hasattr(model, "coef_"):
        return Classifier(classes=classes, coef=model.coef_, intercept=model.intercept_,
                          threshold=0.5, embedder=embedder_name)
    return Classifier(classes=classes, coef=model.coefs_[-1].T, intercept=model.intercepts_[-1],
                      threshold=0.5, embedder=embedder_name,
                      hidden=list(zip(model.coefs_[:-1], model.intercepts_[:-1])))


def _spec_name(spec: tuple) -> str:
    return f"logistic C={spec[1]:g}" if spec[0] == "logistic" else \
        f"mlp width={spec[1]} alpha={spec[2]:g}"


def train(path: Path = TRAIN_PATH, embedder=None, progress: bool = True) -> Classifier:
    """Train the classifier on the training set and choose its threshold on validation.

    Args:
        path: The training set.
        embedder: Sentence embedder (the bundled all-MiniLM-L6-v2 when `None`).
        progress: Print what it does on stderr.

    Returns:
        The classifier, with its threshold and training record in `meta`.
    """
    from sklearn.metrics import log_loss, roc_auc_score

    from retrieval.embeddings import load_embedder

    def say(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    examples = load_training_set(path)
    train_set, validation = split_groups(examples)
    say(f"guard training set: {len(examples)} sentences ({len(train_set)} train, "
        f"{len(validation)} validation) from {path}")
    embedder = embedder or load_embedder("default")
    x_train = np.asarray(embedder.embed_documents([e.text for e in train_set]), dtype=np.float64)
    x_val = np.asarray(embedder.embed_documents([e.text for e in validation]), dtype=np.float64)
    y_train = [e.label for e in train_set]
    y_val = [e.label for e in validation]
    harmful = np.array([label != BENIGN for label in y_val])
    best = None
    for spec in MODEL_GRID:
        model = _fit(x_train, y_train, spec)
        candidate = _as_classifier(model, embedder.name)
        scores = candidate.scores(x_val)[0]
        threshold = choose_threshold(scores, harmful)
        recall = float((scores[harmful] >= threshold).mean())
        loss = log_loss(y_val, model.predict_proba(x_val), labels=model.classes_)
        auc = roc_auc_score(harmful, scores, max_fpr=SELECTION_MAX_FPR)
        say(f"  {_spec_name(spec)}: validation partial AUC {auc:.4f}, log-loss {loss:.4f}, "
            f"recall {recall:.3f} at threshold {threshold:.4f}")
        if best is None or auc > best[0]:
            best = (auc, loss, spec, candidate, threshold, scores)
    auc, loss, spec, classifier, vector_threshold, vector_scores = best
    texts_train = [e.text for e in train_set]
    texts_val = [e.text for e in validation]
    best_chars = None
    for c in CHAR_GRID:
        char_model = fit_char_model(texts_train, y_train, c)
        char_scores = char_model.probabilities(texts_val)
        char_auc = roc_auc_score(harmful, char_scores, max_fpr=SELECTION_MAX_FPR)
        say(f"  characters C={c:g} ({len(char_model.vocabulary)} n-grams): validation partial "
            f"AUC {char_auc:.4f}")
        if best_chars is None or char_auc > best_chars[0]:
            best_chars = (char_auc, c, char_model, char_scores)
    char_auc, char_c, char_model, char_scores = best_chars
    classifier.char_model = char_model
    classifier.calibration = {"vector": fit_platt(vector_scores, harmful),
                              "chars": fit_platt(char_scores, harmful)}
    scores = classifier.scores(x_val, texts_val)[0]
    threshold = choose_threshold(scores, harmful)
    classifier.threshold = threshold
    flagged = scores >= threshold
    char_threshold = choose_threshold(char_scores, harmful)
    categories = classifier.scores(x_val, texts_val)[1]
    right_category = [cat == label for cat, label, h in zip(categories, y_val, harmful) if h]
    import sklearn

    classifier.meta = {
        "command": "python -m agent.guard_train",
        "training_set": path.name,
        "training_set_sha256": file_sha256(path),
        "sentences": {"train": len(train_set), "validation": len(validation)},
        "groups": {"train": len({e.group for e in train_set}),
                   "validation": len({e.group for e in validation})},
        "model": _spec_name(spec) + " (scikit-learn; benign and harm weighted equally: "
                 "sample_weights)",
        "model_grid": [_spec_name(s) for s in MODEL_GRID],
        "model_rule": f"best validation partial ROC AUC (max_fpr={SELECTION_MAX_FPR})",
        "char_model": f"logistic C={char_c:g} on char n-gram TF-IDF (sizes "
                      f"{list(CHAR_SIZES)}, min_df {CHAR_MIN_DF}, sublinear tf; "
                      f"{len(char_model.vocabulary)} n-grams), harmful against benign",
        "char_grid": [f"C={c:g}" for c in CHAR_GRID],
        "combination": "mean of the two Platt-calibrated probabilities (calibration fitted "
                       "on the validation split)",
        "scikit_learn": sklearn.__version__,
        "threshold_rule": f"lowest threshold with validation benign false-positive rate <= "
                          f"{MAX_VALIDATION_FPR}",
        "validation": {
            "partial_auc": round(float(roc_auc_score(harmful, scores,
                                                     max_fpr=SELECTION_MAX_FPR)), 4),
            "recall": round(float(flagged[harmful].mean()), 4),
            "false_positive_rate": round(float(flagged[~harmful].mean()), 4),
            "category_accuracy": round(float(np.mean(right_category)), 4),
            "harmful": int(harmful.sum()), "benign": int((~harmful).sum()),
            # Each scorer alone at its own validation threshold, for comparison.
            "vector_alone": {"partial_auc": round(float(auc), 4),
                             "log_loss": round(float(loss), 4),
                             "threshold": round(vector_threshold, 6),
                             "recall": round(float((vector_scores[harmful]
                                                    >= vector_threshold).mean()), 4)},
            "chars_alone": {"partial_auc": round(float(char_auc), 4),
                            "threshold": round(char_threshold, 6),
                            "recall": round(float((char_scores[harmful]
                                                   >= char_threshold).mean()), 4)},
        },
    }
    v = classifier.meta["validation"]
    say(f"kept {_spec_name(spec)}; threshold {threshold:.4f}: validation recall {v['recall']:.3f}, "
        f"false-positive rate {v['false_positive_rate']:.3f}, category accuracy "
        f"{v['category_accuracy']:.3f}")
    return classifier


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (recorded so a stale classifier file can be detected)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_parser() -> argparse.ArgumentParser:
    """The `python -m agent.guard_train` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m agent.guard_train",
        description="Retrain the harmful-request classifier from agent/guard_data/train.yaml.",
        epilog="examples:\n  python -m agent.guard_train\n"
               "  python -m agent.guard_train --check\n"
               "  python -m agent.guard_train --out /tmp/classifier.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=CLASSIFIER_PATH,
                        help=f"where to write the classifier (default {CLASSIFIER_PATH})")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 unless the retrained classifier matches --out")
    return parser


def run(args: argparse.Namespace) -> int:
    """Train, then write the classifier file or compare it with the shipped one."""
    classifier = train()
    if not args.check:
        classifier.save(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
        return 0
    shipped = Classifier.load(args.out)
    failure, note = check(shipped, classifier, validation_data)
    if failure:
        raise CasewiseError(f"{args.out} does not match a fresh training run: {failure}; "
                            f"run `python -m agent.guard_train` and commit the file")
    print(f"{args.out} {note}", file=sys.stderr)
    return 0


# `--check` on another machine. Training is deterministic on one machine (two runs give the same
# file byte for byte), but the sentence model is an MLP on the embedder's float32 vectors, and
# another CPU's onnxruntime kernels round those in their last bits: 400 Adam steps carry that
# to weights a few hundredths apart (measured 2026-12-03 on an AMD EPYC against the shipped
# file: weights up to 0.051, threshold 0.6444 against 0.6433). Everything else must match
# exactly; the sentence model must give the same verdicts on the validation split, within:
CHECK_THRESHOLD_TOL = 0.005
CHECK_MAX_DISAGREEMENT = 0.005  # share of validation sentences whose verdict differs


def validation_data(path: Path = TRAIN_PATH, embedder=None) -> tuple[list[str], np.ndarray]:
    """The validation split's sentences and their vectors (what `check` compares verdicts on)."""
    from retrieval.embeddings import load_embedder

    texts = [e.text for e in split_groups(load_training_set(path))[1]]
    embedder = embedder or load_embedder("default")
    return texts, np.asarray(embedder.embed_documents(texts), dtype=np.float64)


def check(shipped: Classifier, fresh: Classifier,
          data: Callable[[], tuple[list[str], np.ndarray]] = validation_data) -> tuple[str, str]:
    """Whether `shipped` is what training gives now: `("", note)` when it is, `(why, "")` when
    not. Bit-for-bit equal up to `Classifier.difference`'s float noise, or, on another CPU,
    equal in everything but the sentence model, with the threshold within
    `CHECK_THRESHOLD_TOL` and the verdicts on the validation split (`data()`: its texts and
    vectors, computed only when needed) differing for at most `CHECK_MAX_DISAGREEMENT` of them."""
    exact = shipped.difference(fresh)
    if not exact:
        return "", "matches a fresh training run"
    rest = shipped.difference(fresh, sentence_model=False)
    if rest:
        return rest, ""
    gap = abs(shipped.threshold - fresh.threshold)
    if gap > CHECK_THRESHOLD_TOL:
        return (f"threshold {shipped.threshold:.4f} != {fresh.threshold:.4f} (more than "
                f"{CHECK_THRESHOLD_TOL} apart)", "")
    texts, vectors = data()
    mine = shipped.scores(vectors, texts)[0] >= shipped.threshold
    theirs = fresh.scores(vectors, texts)[0] >= fresh.threshold
    differ = int((mine != theirs).sum())
    verdicts = f"verdicts differ on {differ} of {len(texts)} validation sentences"
    if differ > CHECK_MAX_DISAGREEMENT * len(texts):
        return f"{exact}, and {verdicts}", ""
    return "", (f"matches a fresh training run up to this CPU's float rounding of the sentence "
                f"vectors ({exact}; threshold {shipped.threshold:.4f} against "
                f"{fresh.threshold:.4f}; {verdicts})")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m agent.guard_train`; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
