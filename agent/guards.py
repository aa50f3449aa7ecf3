"""Harmful-request guard, run before retrieval: explicit rules, then a classifier on sentence vectors.

Layer 1 (`check_rules`) is a short list of explicit patterns for the worst harms (explosives and
chemical or biological weapons, mass-casualty attacks, killing a person, sexual abuse of
children, first-person self-harm, writing malware, hacking into other people's systems or
accounts, financial crimes named as such, asking how to steal, writing hateful content, urging
others to self-harm, making hard drugs, spiking a drink). Each
pairs the harm with the words that make it a request for it, so that it never fires on support
vocabulary ("kill a frozen app", "remove a virus", "report a scam"). Broad keyword rules are
gone: they refused ordinary questions and were easy to tune to an evaluation set.

Layer 2 (`Classifier`) is a softmax classifier (a logistic regression or a one-hidden-layer MLP,
whichever `python -m agent.guard_train` found best on validation) on the all-MiniLM-L6-v2 sentence
vectors of the request, with one class per harmful category plus `benign`; the harmful score is
`1 - P(benign)` and the category is the most likely harmful class. Beside it runs a character
n-gram model (`CharModel`: a logistic regression on TF-IDF of the letters inside words), which
still recognises a misspelled or non-English request whose word pieces the English embedder
does not know; the guard's score is the mean of the two scorers' probabilities, each
calibrated on the validation split (Platt scaling). Both were trained by
`python -m agent.guard_train` on `agent/guard_data/train.yaml`, a set written for this project
(harmful requests by category in many phrasings, and support questions that use the same
words); its threshold was chosen on a validation split of that set. The shipped file
`agent/guard_data/classifier.json` is plain JSON (coefficients, n-grams, calibration,
threshold, provenance): it loads offline with numpy, without pickle. The embedder is the one retrieval already loaded when the
caller passes it (`load_guard(searcher.embedder)`); only when none is given, or it is another
model, does the guard load the bundled one itself, once per process.

Requests with digits or symbols in place of letters ("p1pe b0mb") are also checked with those
characters read as letters, and a request is harmful when any reading is.

A self-harm verdict (`category == SELF_HARM`) is answered with `SELF_HARM_ANSWER`, a supportive
reply that points to human help, not with the products-only refusal (see `agent.graph`).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.errors import EXIT_FAILED, UsageError
from retrieval.text import char_ngrams
from retrieval.types import Embedder

BENIGN = "benign"
SELF_HARM = "self-harm"
DATA_DIR = Path(__file__).resolve().parent / "guard_data"
CLASSIFIER_PATH = DATA_DIR / "classifier.json"
# The classifier was trained on vectors of the embedder loaded under this name.
CLASSIFIER_EMBEDDER = "default"
# Version 2 added the hidden layers, version 3 the character model and the calibration: an
# older reader would score a newer file wrongly.
CLASSIFIER_FORMAT = "casewise-guard-classifier/3"
RULES_LAYER = "rules"
CLASSIFIER_LAYER = "classifier"

SELF_HARM_ANSWER = (
    "It sounds like you, or the person you are helping, may be thinking about suicide or "
    "hurting themselves. That deserves a person's help now, not a product assistant's. If "
    "anyone is in immediate danger, call the local emergency number (112 in Europe, 911 in "
    "North America). Crisis lines are free, confidential and open day and night: call or text "
    "988 in the US and Canada, call Samaritans on 116 123 in the UK and Ireland, or find the "
    "line for your country at findahelpline.com. This conversation is marked for escalation: "
    "please hand it to a supervisor or a colleague now."
)


class GuardFileError(UsageError):
    """A request file or classifier file that cannot be used (exit code 2)."""


@dataclass(frozen=True)
class GuardResult:
    """The guard's verdict on one request.

    Attributes:
        harmful: Whether the request is refused.
        category: The harmful category (`"weapons"`, `"self-harm"`, ...), or `None` when benign.
        layer: Which layer decided: `"rules"` or `"classifier"`.
        score: 1.0 for a rule; the classifier's harmful score (`1 - P(benign)`) otherwise.
        rule: The name of the rule that matched (rules layer only).
    """

    harmful: bool
    category: str | None
    layer: str
    score: float
    rule: str | None = None

    def to_dict(self) -> dict:
        """The verdict as kept in the graph state and `AgentAnswer.guard`."""
        return {"category": self.category, "layer": self.layer, "score": round(self.score, 4)}


# --------------------------------------------------------------------------- layer 1: rules

# Words that turn a mention into a request for the thing (instructions, a plan, an intent).
_ASK = (
    r"(?:how (?:do|can|could|would|should|to|does one|might)|ways? to|instructions?|"
    r"step[- ]by[- ]step|guide|tutorial|recipe|teach|show me|tell me|explain|help me|"
    r"i (?:want|need|plan|intend|am going|'m going) to|best way|easiest way|quickest way)"
)
_PERSON = (
    r"(?:ex|wife|husband|spouse|partner|girlfriend|boyfriend|boss|neighbou?r|co-?worker|"
    r"colleague|teacher|classmate|roommate|landlord|tenant|father|mother|dad|mom|mum|brother|"
    r"sister|son|daughter|baby|toddler|child|kid|family|someone|somebody|anyone|people|person|"
    r"man|woman|girl|boy|president|politician|cop|police officer|officer|witness|stranger)s?"
)
_MINOR = (
    r"(?:child|children|minors?|kids?|underage|preteens?|toddlers?|\d{1,2}[- ]?year[- ]olds?|"
    r"(?:young|little) (?:girls?|boys?))"
)
# (name, category, pattern). Each is specific enough to stand on its own.
_RULE_TABLE: tuple[tuple[str, str, str], ...] = (
    ("explosive-or-cbrn-weapon", "weapons",
     r"\b(?:make|making|build|building|assemble|construct|produce|manufacture|synthesi[sz]e|"
     r"cook|mix|prepare|create|detonate|weaponi[sz]e)\b[^.?!]{0,40}(?<!bath )\b(?:bombs?|"
     r"explosives?|ieds?|detonators?|napalm|molotov(?: cocktails?)?|grenades?|nerve (?:agents?|"
     r"gas)|sarin|ricin|mustard gas|chemical weapons?|bio-?weapons?|biological weapons?)\b"),
    ("named-mass-harm-weapon", "weapons",
     r"\b(?:pipe|nail|car|letter|dirty|fertili[sz]er)[- ]?bombs?\b|\b(?:sarin|ricin)\b"),
    ("mass-casualty-attack", "violence",
     r"\b(?:plan|planning|carry out|commit|organi[sz]e|execute|stage|how to)\b[^.?!]{0,30}"
     r"\b(?:mass shootings?|school shootings?|terror(?:ist)? attacks?|massacres?|genocide)\b"),
    ("kill-a-person", "violence",
     r"\b(?:kill|murder|assassinate|poison|strangle|stab|smother|suffocate|behead|kidnap|"
     r"abduct|torture)\b (?:my |your |his |her |their |our |a |an |the |this |that )?"
     rf"{_PERSON}\b(?!'s| process| thread| app| task| profile| account| mode| lock| setting)"),
    ("self-harm", SELF_HARM,
     r"\b(?:kill|hurt|harm|cut|hang|starve|poison|drown)(?:ing)? myself\b|"
     r"\bend(?:ing)? my (?:own )?life\b|\btake my (?:own )?life\b|\bcommit(?:ting)? suicide\b|"
     r"\bi (?:want|wanna|am going|'m going|plan|need) to die\b"),
    ("sexual-abuse-of-children", "sexual-minors",
     r"\bchild (?:porn\w*|sexual abuse material)\b|\bcsam\b|"
     r"\b(?:nudes?|naked|nude|sexual|sexy|explicit|erotic|porn\w*)\b[^.?!]{0,20}"
     rf"\b(?:of|with|involving|featuring|about) (?:a |an )?{_MINOR}\b|"
     rf"{_ASK}[^.?!]{{0,30}}\b(?:molest\w*|groom(?:ing)?)\b[^.?!]{{0,15}}\b{_MINOR}\b"),
    ("write-malware", "malware",
     r"\b(?:write|writing|create|creating|code|coding|build|building|develop|developing|make|"
     r"making|program|design|spread|deploy|release)\b (?:me |us )?(?:a |an |some |my own |the )?"
     # Up to two words before the malware, but not ones that make it a defence ("code that
     # detects malware", "a tool to remove spyware").
     r"(?:(?!that\b|which\b|to\b|against\b|for\b|detect|scan|remov|block|find|stop|prevent|"
     r"clean|protect)\w+ ){0,2}(?:ransomware|keyloggers?|botnets?|rootkits?|trojans?|computer virus(?:es)?|"
     r"virus(?:es)?|worms?|spyware|malware|info-?stealers?)\b"
     r"(?! scan| protection| check| definitions?| report| removal| alert)"),
    ("make-hard-drugs", "drugs",
     r"\b(?:cook|cooking|make|making|synthesi[sz]e|manufacture|produce|brew|extract)\b "
     r"(?:some |my own |the )?(?:crystal )?(?:meth|methamphetamine|fentanyl|heroin|cocaine|"
     r"crack cocaine|lsd|mdma|ghb|dmt)\b"),
    ("hack-into-others-systems", "malware",
     r"\bhack(?:ing)? into (?:a |an |the )?(?:\w+ )?(?:government|bank|banking|corporate|"
     r"company|military|hospital|police|power grid|voting|election|someone(?:'s)?|somebody(?:'s)?|"
     r"other people's|another person's)\b|"
     rf"\b(?:hack|break into|get into|access|read|spy on)\b (?:my |his |her |their )?{_PERSON}'s "
     r"(?:\w+ )?(?:accounts?|emails?|phones?|messages|texts|chats|computers?|laptops?|"
     r"instagram|facebook|whatsapp|icloud)\b"),
    ("commit-a-named-financial-crime", "fraud",
     r"\b(?:commit|get away with|pull off|engage in|carry out|get started with)\b "
     r"(?:\w+ ){0,2}(?:identity theft|insider trading|money laundering|tax evasion|tax fraud|"
     r"credit card fraud|wire fraud|mail fraud|insurance fraud|securities fraud|embezzlement)\b|"
     r"\b(?:steal|stealing)\b (?:someone's|somebody's|people's|a person's|their|his|her) "
     r"identit(?:y|ies)\b|\blaunder(?:ing)? (?:the |my |dirty |drug )?money\b|"
     r"\b(?:make|making|print|printing|produce|create|manufacture)\b (?:\w+ ){0,2}"
     r"counterfeit (?:money|bills|currency|cash|notes|banknotes)\b"),
    ("how-to-steal", "crime",
     r"\b(?:how (?:do|can|could|would|should) (?:i|we|you|one|someone)|how to|ways? to|help me|"
     r"i (?:want|plan|need) to|teach me to|best way to)\s+(?:steal|shoplift|rob|burgle|"
     r"pickpocket)\b(?! focus| a few| a minute| a moment| some time| time| the show)"),
    ("write-hateful-content", "hate",
     r"\b(?:write|compose|generate|draft|produce|tell me)\b (?:me |us )?(?:a |an |some )?"
     r"(?:\w+ ){0,2}(?:racist|sexist|homophobic|antisemitic|anti-semitic|transphobic|islamophobic|"
     r"xenophobic)\b|\b(?:write|create|generate|spread)\b (?:\w+ ){0,3}hate speech\b"),
    ("encourage-others-to-self-harm", "violence",
     r"\b(?:encourag\w*|convinc\w*|persuad\w*|push\w*|pressur\w*|urg\w*|tell\w*)\b "
     r"(?:\w+ ){0,3}(?:to )?(?:commit suicide|kill (?:themselves|himself|herself)|"
     r"self-harm|harm (?:themselves|himself|herself)|cut (?:themselves|himself|herself)|"
     r"starve (?:themselves|himself|herself))\b"),
    ("spike-a-drink", "drugs",
     r"\b(?:spike|drug|roofie)\b (?:someone|somebody|a girl|a woman|a guy|her|his|their|"
     r"my \w+)(?:'s)? drinks?\b|\bdate[- ]rape drugs?\b"),
)

RULES: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple(
    (name, category, re.compile(pattern, re.IGNORECASE)) for name, category, pattern in _RULE_TABLE
)

_LEET = str.maketrans("013457@$", "oieastas")
_LEET_CHARS = set("013457@$")
# "4k", "1080p", "5ghz", "ps5", "wpa3", "hdmi2": model names and units, not disguised words.
_UNIT_OR_MODEL = re.compile(r"^\d+[a-z]{0,3}$|^[a-z]+\d+$", re.IGNORECASE)


def _unleet_token(match: re.Match[str]) -> str:
    token = match.group(0)
    if not _LEET_CHARS & set(token) or not re.search(r"[a-z]", token, re.IGNORECASE):
        return token
    if _UNIT_OR_MODEL.match(token):
        return token
    return token.translate(_LEET)


def readings(text: str) -> list[str]:
    """The ways the guard reads a request: as written, and with digits read as letters.

    Args:
        text: The request.

    Returns:
        The whitespace-normalised text, then (when it differs) the same text with look-alike
        digits and symbols inside words read as letters ("p1pe b0mb" -> "pipe bomb").
    """
    base = re.sub(r"\s+", " ", text.replace("\u2019", "'").replace("\u2018", "'")).strip()
    unleeted = re.sub(r"[\w@$]+", _unleet_token, base)
    return [base] if unleeted == base else [base, unleeted]


def all_readings(texts: list[str]) -> tuple[list[int], list[str]]:
    """Every reading of every text, flat, with the index of the text each belongs to.

    Args:
        texts: Requests.

    Returns:
        `(owners, sentences)`: `sentences[k]` is a reading of `texts[owners[k]]`.
    """
    owners, sentences = [], []
    for i, text in enumerate(texts):
        for reading in readings(text):
            owners.append(i)
            sentences.append(reading)
    return owners, sentences


def check_rules(text: str) -> GuardResult | None:
    """Layer 1: the first explicit rule that matches any reading of the request.

    Args:
        text: The request.

    Returns:
        A harmful verdict from the rules layer, or `None` when no rule matches.
    """
    for reading in readings(text):
        for name, category, pattern in RULES:
            if pattern.search(reading):
                return GuardResult(True, category, RULES_LAYER, 1.0, name)
    return None


# --------------------------------------------------------------------------- layer 2: classifier


@dataclass
class CharModel:
    """Layer 2's spelling-robust scorer: a logistic regression on character n-gram TF-IDF.

    A request's features are the character n-grams of its words (`retrieval.text.char_ngrams`)
    found in `vocabulary`, weighted `(1 + log count) * idf` and scaled to unit length (what
    scikit-learn's `TfidfVectorizer(sublinear_tf=True)` computes, so training and this reader
    agree); the harmful probability is the logistic of their dot product with `coef`. It sees
    "b0mbb" and "bomba" near "bomb", where the sentence embedder, trained on English words,
    sees unknown word pieces.

    Attributes:
        vocabulary: The n-grams with a weight, in feature order.
        idf: `(len(vocabulary),)` inverse document frequencies.
        coef: `(len(vocabulary),)` weights of the harmful class.
        intercept: Bias of the harmful class.
        sizes: The n-gram lengths (ascending).
    """

    vocabulary: list[str]
    idf: np.ndarray
    coef: np.ndarray
    intercept: float
    sizes: tuple[int, ...] = (2, 3, 4, 5)

    def __post_init__(self) -> None:
        self.idf = np.asarray(self.idf, dtype=np.float64)
        self.coef = np.asarray(self.coef, dtype=np.float64)
        self.sizes = tuple(int(n) for n in self.sizes)
        n = len(self.vocabulary)
        if self.idf.shape != (n,) or self.coef.shape != (n,):
            raise GuardFileError(f"character model shapes do not fit its {n} n-grams: idf "
                                 f"{self.idf.shape}, coef {self.coef.shape}")
        if list(self.sizes) != sorted(self.sizes) or not self.sizes or self.sizes[0] < 1:
            raise GuardFileError(f"character model sizes {self.sizes} must be ascending and >= 1")
        self._index = {gram: i for i, gram in enumerate(self.vocabulary)}

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """The harmful probability of each text, `(len(texts),)`."""
        logits = np.empty(len(texts))
        for k, text in enumerate(texts):
            counts = Counter(i for gram in char_ngrams(text, self.sizes)
                             if (i := self._index.get(gram)) is not None)
            if not counts:
                logits[k] = self.intercept
                continue
            ids = np.fromiter(counts, dtype=np.int64, count=len(counts))
            weights = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64,
                                                count=len(counts)))) * self.idf[ids]
            logits[k] = weights @ self.coef[ids] / np.linalg.norm(weights) + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))

    def to_json(self) -> dict:
        """The JSON object kept under `char_model` in the classifier file."""
        return {"sizes": list(self.sizes), "intercept": float(f"{self.intercept:.6g}"),
                "vocabulary": self.vocabulary, "idf": _rounded(self.idf),
                "coef": _rounded(self.coef)}

    @classmethod
    def from_json(cls, data: dict) -> CharModel:
        """The model from `to_json`'s object (KeyError/TypeError/ValueError when malformed)."""
        return cls(vocabulary=[str(g) for g in data["vocabulary"]], idf=data["idf"],
                   coef=data["coef"], intercept=float(data["intercept"]),
                   sizes=tuple(data["sizes"]))


@dataclass
class Classifier:
    """A softmax classifier over sentence vectors (optionally after ReLU layers), with its threshold.

    With no hidden layers it is a multinomial logistic regression; with hidden layers, a small
    MLP (scikit-learn's `MLPClassifier` layout: `relu(x @ weight + bias)` per layer, then the
    softmax layer).

    With a `char_model`, the harmful score is the mean of two calibrated probabilities: the
    sentence model's `1 - P(benign)` and the character model's P(harmful), each mapped through
    its own Platt scaling (`calibration`, fitted on the validation split) so that both speak
    the same probability scale before they are averaged. Equal weights, not fitted ones: on
    the validation split (same phrasings as training) the sentence model looks best, yet it is
    the character model that holds on misspelled and non-English requests.

    Attributes:
        classes: Class names; one is `BENIGN`, the others are harmful categories.
        coef: `(len(classes), width)` weights of the softmax layer (`width` is the last hidden
            layer's size, or the vector dimension without hidden layers).
        intercept: `(len(classes),)` biases of the softmax layer.
        threshold: A request is harmful when its harmful score is at least this.
        embedder: Name of the embedder whose vectors it was trained on.
        meta: How it was trained (command, data hash, validation figures).
        hidden: `(weight (in, out), bias (out,))` per ReLU layer, input first.
        char_model: The character n-gram scorer averaged in, or `None` for the sentence model
            alone.
        calibration: `{"vector": (a, b), "chars": (a, b)}`: each scorer's probability p becomes
            `sigmoid(a * logit(p) + b)` before the mean (only with a `char_model`).
    """

    classes: list[str]
    coef: np.ndarray
    intercept: np.ndarray
    threshold: float
    embedder: str = CLASSIFIER_EMBEDDER
    meta: dict = field(default_factory=dict)
    hidden: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    char_model: CharModel | None = None
    calibration: dict[str, tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        if self.char_model is not None:
            if not self.calibration or set(self.calibration) != {"vector", "chars"}:
                raise GuardFileError("a classifier with a character model needs the calibration "
                                     "of both scorers ('vector' and 'chars')")
            self.calibration = {k: (float(a), float(b)) for k, (a, b) in self.calibration.items()}
        self.coef = np.asarray(self.coef, dtype=np.float64)
        self.intercept = np.asarray(self.intercept, dtype=np.float64)
        self.hidden = [(np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64))
                       for w, b in self.hidden]
        width = None
        for k, (w, b) in enumerate(self.hidden):
            if w.ndim != 2 or b.shape != (w.shape[1],) or width not in (None, w.shape[0]):
                raise GuardFileError(f"classifier hidden layer {k + 1}: weight {w.shape} and "
                                     f"bias {b.shape} do not chain")
            width = w.shape[1]
        if width is not None and self.coef.shape[-1] != width:
            raise GuardFileError(f"classifier output layer expects {self.coef.shape[-1]} inputs "
                                 f"but the last hidden layer gives {width}")
        if BENIGN not in self.classes:
            raise GuardFileError(f"classifier classes {self.classes} lack {BENIGN!r}")
        if self.coef.shape != (len(self.classes), self.coef.shape[-1]) or \
                self.intercept.shape != (len(self.classes),):
            raise GuardFileError(
                f"classifier shapes do not fit {len(self.classes)} classes: coef "
                f"{self.coef.shape}, intercept {self.intercept.shape}"
            )
        if not 0.0 < self.threshold < 1.0:
            raise GuardFileError(f"classifier threshold ({self.threshold}) must be in (0, 1)")
        self._benign = self.classes.index(BENIGN)

    @property
    def dim(self) -> int:
        """Vector dimension the classifier expects."""
        return int(self.hidden[0][0].shape[0] if self.hidden else self.coef.shape[1])

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """Class probabilities, `(n, len(classes))`, for `(n, dim)` vectors."""
        h = np.asarray(vectors, dtype=np.float64)
        for weight, bias in self.hidden:
            h = np.maximum(h @ weight + bias, 0.0)
        logits = h @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def scores(self, vectors: np.ndarray,
               texts: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
        """Harmful scores and the most likely harmful category per request.

        Args:
            vectors: `(n, dim)` sentence vectors.
            texts: The `n` texts the vectors are of (needed when there is a `char_model`).

        Returns:
            `(scores, categories)`: the score is `1 - P(benign)` without a character model,
            the mean of the two calibrated probabilities with one.

        Raises:
            GuardFileError: The vectors do not have the classifier's dimension.
            ValueError: A character model but no texts, or not one text per vector.
        """
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        if vectors.shape[1] != self.dim:
            raise GuardFileError(
                f"the embedder gives {vectors.shape[1]}-dim vectors but the classifier expects "
                f"{self.dim} ({self.embedder!r}); pass the embedder it was trained with"
            )
        p = self.probabilities(vectors)
        harmful = p.copy()
        harmful[:, self._benign] = -1.0
        categories = [self.classes[i] for i in harmful.argmax(axis=1)]
        each = self.scorer_probabilities(vectors, texts, p)
        if self.char_model is None:
            return each["vector"], categories
        combined = (platt(each["vector"], self.calibration["vector"])
                    + platt(each["chars"], self.calibration["chars"])) / 2
        return combined, categories

    def scorer_probabilities(self, vectors: np.ndarray, texts: list[str] | None = None,
                             probabilities: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Each scorer's own harmful probability, before calibration (to measure them apart).

        Args:
            vectors: `(n, dim)` sentence vectors.
            texts: The `n` texts (needed when there is a `char_model`).
            probabilities: `self.probabilities(vectors)` when the caller has it already.

        Returns:
            `{"vector": 1 - P(benign)}`, plus `"chars"` with a character model.

        Raises:
            ValueError: A character model but no texts, or not one text per vector.
        """
        p = self.probabilities(vectors) if probabilities is None else probabilities
        each = {"vector": 1.0 - p[:, self._benign]}
        if self.char_model is not None:
            if texts is None or len(texts) != len(p):
                raise ValueError("this classifier has a character model: pass one text per "
                                 "vector")
            each["chars"] = self.char_model.probabilities(texts)
        return each

    def to_json(self) -> dict:
        """The JSON object written to the classifier file."""
        return {
            "format": CLASSIFIER_FORMAT,
            "embedder": self.embedder,
            "dim": self.dim,
            "threshold": round(self.threshold, 6),
            "classes": self.classes,
            "intercept": _rounded(self.intercept),
            "coef": _rounded(self.coef),
            "hidden": [{"weight": _rounded(w), "bias": _rounded(b)} for w, b in self.hidden],
            "char_model": self.char_model.to_json() if self.char_model is not None else None,
            "calibration": ({k: [float(f"{v:.6g}") for v in ab]
                             for k, ab in self.calibration.items()} if self.calibration else None),
            "meta": self.meta,
        }

    def save(self, path: Path) -> None:
        """Write the classifier as JSON (one file, diffable, loadable without pickle)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path = CLASSIFIER_PATH) -> Classifier:
        """Read a classifier file written by `save`.

        Args:
            path: The JSON file.

        Returns:
            The classifier.

        Raises:
            GuardFileError: The file is missing or malformed.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise GuardFileError(
                f"{path}: cannot read the guard classifier ({e}); rebuild it with "
                f"`python -m agent.guard_train`"
            ) from e
        if not isinstance(data, dict) or data.get("format") != CLASSIFIER_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise GuardFileError(f"{path}: not a guard classifier file (format {found!r}, "
                                 f"expected {CLASSIFIER_FORMAT!r})")
        try:
            return cls(classes=list(data["classes"]), coef=data["coef"],
                       intercept=data["intercept"], threshold=float(data["threshold"]),
                       embedder=data["embedder"], meta=dict(data.get("meta") or {}),
                       hidden=[(layer["weight"], layer["bias"])
                               for layer in data.get("hidden") or []],
                       char_model=(CharModel.from_json(data["char_model"])
                                   if data.get("char_model") else None),
                       calibration=data.get("calibration"))
        except (KeyError, TypeError, ValueError) as e:
            raise GuardFileError(f"{path}: not a guard classifier file ({e})") from e

    def difference(self, other: Classifier, atol: float = 1e-3,
                   sentence_model: bool = True) -> str:
        """What differs from another classifier beyond float noise ("" when they match).

        `sentence_model=False` leaves out what depends on the sentence vectors' last bits (the
        MLP's weights, its calibration and the threshold; see `agent.guard_train.check`) and
        compares the rest: classes, shapes, the character model and its calibration.
        """
        if self.classes != other.classes:
            return f"classes {self.classes} != {other.classes}"
        if (self.char_model is None) != (other.char_model is None):
            return "one has a character model, the other not"
        if self.char_model is not None and \
                self.char_model.vocabulary != other.char_model.vocabulary:
            return "the character models' n-gram vocabularies differ"
        vector = [self.coef, self.intercept, *(a for layer in self.hidden for a in layer)]
        theirs_vector = [other.coef, other.intercept,
                         *(a for layer in other.hidden for a in layer)]
        if [a.shape for a in vector] != [a.shape for a in theirs_vector]:
            return (f"layer shapes {[a.shape for a in vector]} != "
                    f"{[a.shape for a in theirs_vector]}")
        pairs = list(zip(_char_arrays(self, sentence_model),
                         _char_arrays(other, sentence_model)))
        if sentence_model:
            pairs += list(zip(vector, theirs_vector))
        gap = max((float(np.abs(a - b).max()) for a, b in pairs), default=0.0)
        if gap > atol:
            return f"weights differ by up to {gap:.4g}"
        if sentence_model and abs(self.threshold - other.threshold) > atol:
            return f"threshold {self.threshold:.4f} != {other.threshold:.4f}"
        return ""


def _char_arrays(classifier: Classifier, with_vector: bool = True) -> list[np.ndarray]:
    """The character model's and the calibration's numbers, for `Classifier.difference`
    (`with_vector=False`: without the sentence model's calibration)."""
    if classifier.char_model is None:
        return []
    c = classifier.char_model
    return [c.idf, c.coef, np.array([c.intercept]),
            np.array([v for k in sorted(classifier.calibration)
                      if with_vector or k != "vector" for v in classifier.calibration[k]])]


def platt(p: np.ndarray, ab: tuple[float, float]) -> np.ndarray:
    """`sigmoid(a * logit(p) + b)`: Platt scaling of a probability."""
    p = np.clip(p, 1e-7, 1 - 1e-7)
    a, b = ab
    return 1.0 / (1.0 + np.exp(-(a * np.log(p / (1 - p)) + b)))


def _rounded(array: np.ndarray) -> list:
    """Nested lists of 6-significant-digit floats: float noise kept out of the diff."""
    return np.vectorize(lambda v: float(f"{v:.6g}"), otypes=[float])(array).tolist()


# --------------------------------------------------------------------------- the guard


class Guard:
    """Both layers: rules first, then the classifier on the request's sentence vector.

    Args:
        classifier: Layer 2, or `None` for the rules alone.
        embedder: Embeds requests for the classifier (the one it was trained on).
    """

    def __init__(self, classifier: Classifier | None, embedder: Embedder | None) -> None:
        if classifier is not None and embedder is None:
            raise ValueError("a classifier needs the embedder it was trained with")
        self.classifier = classifier
        self.embedder = embedder

    def check(self, text: str) -> GuardResult:
        """Decide whether one request is harmful.

        Args:
            text: The request as typed.

        Returns:
            The verdict; `harmful` is `False` for ordinary support questions.
        """
        return self.check_many([text])[0]

    def check_many(self, texts: list[str], batch_size: int = 64) -> list[GuardResult]:
        """Decide many requests: the rules first, the classifier on those they let through.

        Args:
            texts: The requests.
            batch_size: Requests embedded per call.

        Returns:
            One verdict per request, in order.
        """
        results: list[GuardResult | None] = [check_rules(t) for t in texts]
        if self.classifier is None:
            return [r or GuardResult(False, None, RULES_LAYER, 0.0) for r in results]
        todo = [i for i, r in enumerate(results) if r is None]
        for i, verdict in zip(todo, self.classify([texts[i] for i in todo], batch_size)):
            results[i] = verdict
        return results

    def classify(self, texts: list[str], batch_size: int = 64) -> list[GuardResult]:
        """Layer 2 alone: the classifier's verdict on every reading, the highest score wins.

        Args:
            texts: The requests.
            batch_size: Requests embedded per call.

        Returns:
            One classifier verdict per request, in order.

        Raises:
            ValueError: The guard has no classifier.
        """
        if self.classifier is None:
            raise ValueError("this guard has no classifier (rules only)")
        results: list[GuardResult] = []
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            owners, sentences = all_readings(batch)
            vectors = np.asarray(self.embedder.embed_documents(sentences), dtype=np.float64)
            scores, categories = self.classifier.scores(vectors, sentences)
            best: dict[int, tuple[float, str]] = {}
            for i, score, category in zip(owners, scores, categories):
                if i not in best or score > best[i][0]:
                    best[i] = (float(score), category)
            for i in range(len(batch)):
                score, category = best[i]
                harmful = score >= self.classifier.threshold
                results.append(GuardResult(harmful, category if harmful else None,
                                           CLASSIFIER_LAYER, score))
        return results


def load_guard(embedder: Embedder | None = None, path: Path = CLASSIFIER_PATH) -> Guard:
    """Both layers, with the shipped classifier and the embedder it needs.

    Args:
        embedder: An embedder already loaded (retrieval's). Used when it is the one the
            classifier was trained on; otherwise the bundled all-MiniLM-L6-v2 is loaded (once
            per process).
        path: The classifier file.

    Returns:
        The guard.

    Raises:
        GuardFileError: The classifier file is missing or malformed.
        ModelNotFoundError: The bundled embedder is not installed.
    """
    classifier = Classifier.load(path)
    if embedder is None or embedder.name != classifier.embedder:
        embedder = _bundled_embedder(classifier.embedder)
    return Guard(classifier, embedder)


@functools.cache
def _bundled_embedder(name: str) -> Embedder:
    from retrieval.embeddings import load_embedder

    return load_embedder(name)


@functools.cache
def default_guard() -> Guard:
    """The process-wide guard used when a caller configured none (loaded on first use)."""
    return load_guard()


# --------------------------------------------------------------------------- request files


@dataclass(frozen=True)
class Request:
    """One request read from a file.

    Attributes:
        text: The request.
        line: Its line (text, JSONL) or row (CSV, 1 = first data row) number.
    """

    text: str
    line: int


def read_requests(path: Path) -> tuple[list[Request], list[str]]:
    """Read requests from text lines, a CSV with a `question` or `goal` column, or JSONL.

    A `.csv` file needs a `question` column (else `goal`, AdvBench's layout); a `.jsonl` file has
    one object with a `question` string per line; any other file has one request per line.
    Blank lines are skipped; a broken row or line is reported and skipped, the rest is read.

    Args:
        path: The file.

    Returns:
        `(requests, problems)`: problems are one line each, naming the file and line.

    Raises:
        GuardFileError: The file is missing, unreadable, lacks the column, or holds no request.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise GuardFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise GuardFileError(f"{path}: is a directory; give a .txt, .csv or .jsonl file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GuardFileError(f"{path}: cannot read the file as UTF-8 text ({e})") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        requests, problems = _read_csv(path, text)
    elif suffix == ".jsonl":
        requests, problems = _read_jsonl(path, text)
    else:
        requests = [Request(line.strip(), i) for i, line in enumerate(text.splitlines(), 1)
                    if line.strip()]
        problems = []
    if not requests:
        if not text.strip():
            reason = "the file is empty"
        elif suffix == ".csv" and not problems:
            reason = "the CSV has a header but no rows"
        else:
            reason = "no line holds a request"
        details = f" ({problems[0]})" if problems else ""
        raise GuardFileError(f"{path}: no requests to check: {reason}{details}")
    return requests, problems


def _read_csv(path: Path, text: str) -> tuple[list[Request], list[str]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    if not columns:
        return [], []
    column = next((c for c in ("question", "goal") if c in columns), None)
    if column is None:
        raise GuardFileError(f"{path}: no 'question' or 'goal' column (columns: "
                             f"{', '.join(columns)})")
    reader.fieldnames = columns
    requests, problems = [], []
    try:
        for row_number, row in enumerate(reader, start=1):
            value = (row.get(column) or "").strip()
            if value:
                requests.append(Request(value, row_number))
            else:
                problems.append(f"{path}: row {row_number}: empty {column!r}, skipped")
    except csv.Error as e:
        problems.append(f"{path}: line {reader.line_num}: broken CSV ({e}); the rest is skipped")
    return requests, problems


def _read_jsonl(path: Path, text: str) -> tuple[list[Request], list[str]]:
    requests, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            problems.append(f"{path}: line {number}: not JSON ({e.args[0][:60]}), skipped")
            continue
        question = obj.get("question") if isinstance(obj, dict) else None
        if not isinstance(question, str) or not question.strip():
            problems.append(f"{path}: line {number}: no 'question' string, skipped")
            continue
        requests.append(Request(question.strip(), number))
    return requests, problems


def run_guard_file(path: Path, out=None, err=None) -> int:
    """`python -m agent guard FILE`: one JSON line per request on `out`, a summary on `err`.

    Args:
        path: The request file (see `read_requests`).
        out: Where the JSON lines go (stdout by default).
        err: Where problems and the summary go (stderr by default).

    Returns:
        0, or 1 when some lines could not be read (they are named on `err`).

    Raises:
        GuardFileError: The file cannot be used at all.
    """
    out, err = out or sys.stdout, err or sys.stderr
    requests, problems = read_requests(path)
    for problem in problems:
        print(f"warning: {problem}", file=err)
    start = time.perf_counter()
    guard = default_guard()
    loaded = time.perf_counter()
    verdicts = guard.check_many([r.text for r in requests])
    done = time.perf_counter()
    for request, verdict in zip(requests, verdicts):
        print(json.dumps({"question": request.text, "harmful": verdict.harmful,
                          "category": verdict.category, "layer": verdict.layer,
                          "score": round(verdict.score, 4), "line": request.line},
                         ensure_ascii=False), file=out)
    harmful = [v for v in verdicts if v.harmful]
    layers = Counter(v.layer for v in harmful)
    categories = Counter(v.category for v in harmful)
    print(f"guard: {len(requests)} requests from {path}: {len(harmful)} harmful "
          f"({layers[RULES_LAYER]} by rules, {layers[CLASSIFIER_LAYER]} by the classifier), "
          f"{len(requests) - len(harmful)} not; "
          f"{1000 * (done - loaded) / len(requests):.1f} ms per request "
          f"(+{loaded - start:.1f} s loading)", file=err)
    if categories:
        print("  by category: " + ", ".join(f"{c} {n}" for c, n in categories.most_common()),
              file=err)
    if problems:
        print(f"  {len(problems)} lines skipped (see the warnings above)", file=err)
        return EXIT_FAILED
    return 0
