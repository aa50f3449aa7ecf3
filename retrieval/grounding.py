"""Model-free grounding: is each sentence of an answer supported by a retrieved passage?

`verify(answer, question, passages)` splits an answer into claims (its sentences,
`retrieval.text.sentences`) and checks each against every passage, never only the ones the model
cited (its citations are hints that break ties). A claim is supported by a passage when, within
a window of at most `MAX_WINDOW` consecutive sentences of that passage (plus its section
heading):

1. every anchor of the claim appears: numbers with their units ("10 seconds" never supports
   "45 seconds" or "4 minutes"; number words count as digits), quoted strings, menu paths
   (labels in order), URLs/domains/e-mail addresses, and names (UI labels and product names
   such as "Reset button" or "Dolby Atmos", `retrieval.text.names`);
2. at least `MIN_COVERAGE` of the claim's distinct content words occur there, and more than
   `CLAUSE_MIN_COVERAGE` of each of its clauses' (a clause of at least `CLAUSE_MIN_WORDS`);
3. the passage names the question's subject: every name, quoted string and menu path of the
   question (a passage about the Universal Guide does not support an answer about the Universal
   Remote);
4. the passage is not instruction-like (`looks_like_injection`): planted text never supports;
5. the window does not say the opposite (`retrieval.text.negated`): a word the claim asserts is
   only ever negated there ("The TV supports AirPlay" against "does not support AirPlay"), or a
   word the claim negates is only ever asserted there. Coverage alone cannot see this: "not" is
   a stop word, so a claim and its negation hold the same content words.

Three kinds of sentence are rejected before any passage is read: one that narrates the
conversation ("You mentioned that...", "The user asks..."), one that is itself a question ("Q:
What can I do to reset the router?", echoing a ticket's question), and one whose content words
are all the question's (to a question that is not yes/no: "Reset the router." to "How do I reset
the router?"). Each would pass on coverage, and none tells the user anything.
`verify` also rejects a sentence whose content words all occur in an earlier kept sentence of
the same answer (`REPEATED`): a looping small model's copies would each pass.

A yes/no answer is a claim about the question: "Yes." to "Does the TV support Dolby Atmos?" is
checked as "the TV supports Dolby Atmos" (and a "No" needs a window that negates). A claim that
repeats an instruction-like passage (its URL, or its words) or is itself an instruction ("ignore
previous instructions") is rejected with that reason.

`choose_quote` picks what to show when no claim survives (and the support quote after kept
ones): the ranker's best candidate (`rank_sentences`: a sentence and the ones that follow it, up
to `QUOTE_MAX_SENTENCES` and `QUOTE_MAX_WORDS`, scored by a weighted sum of a few similarity
features, `RANK_WEIGHTS`), else the sentences the model selected by number (format v2's
`Quote`); `first="model"` tries the model's selection first. `answer_relevance` is the bar any
answer, quoted or generated, must reach to be shown rather than abstaining: a sentence can be
supported by a passage and still not answer the question. The ranker's quote is read with the
sentence either side of it in its passage (`RANKED_QUOTE_CONTEXT`); the model's own sentences
and its selection are read alone.

This module is a leaf (it imports only `retrieval`), so fine-tuning can use it to reject
training answers without importing the agent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from retrieval.text import (
    clauses,
    content_words,
    menu_paths,
    names,
    negated,
    normalise,
    overlap,
    passage_sentences,
    quantities,
    quoted,
    sentences,
    urls,
)
from retrieval.types import Embedder, PassageLike

# Share of a claim's distinct content words that its supporting window must hold. Half (the old
# fallback rule) let half an answer be invented; a supported paraphrase of a manual sentence
# keeps most of its content words (it may add one or two of its own).
MIN_COVERAGE = 0.75
# ... and each clause of it (`retrieval.text.clauses`) with at least `CLAUSE_MIN_WORDS` distinct
# content words must have more than this share of them in the same window: a well-covered clause
# must not carry an invented one ("To listen to the TV through a Samsung audio device that
# supports the Wi-Fi function, you need to have a compatible Wi-Fi adapter." holds 9 of its 13
# words, but of its second clause only "Wi-Fi").
CLAUSE_MIN_COVERAGE = 0.5
CLAUSE_MIN_WORDS = 3
# A claim may draw on up to this many consecutive sentences of one passage (PDF extraction
# splits one instruction over several "sentences", and glues headings to them).
MAX_WINDOW = 3

# The quoted answer: at most this many sentences and (beyond the first) words.
QUOTE_MAX_SENTENCES = 3
QUOTE_MAX_WORDS = 60
# Sentences a model may select for a quote (format v2 targets list up to 8).
QUOTE_MAX_SELECTED = 8
# Relevance bar of an answer (quoted or generated): its sentences plus their passages' headings
# must hold this share of the question's distinct content words, each weighted by its IDF in the
# index (`relevance`), besides naming the question's subject. Weighting matters: "How much does
# the TV weigh?" answered with a sentence about the TV stand holds half of the plain words but
# not the rare one. Calibrated (bench/quote_bar.py) on faq_history's 354 answerable questions
# and the calibration part of eval's in-domain unanswerable set: the lowest value that lets at
# most 10% of the unanswerable ones through (0.4: 8% of them, 85% of the answerable).
RELEVANCE_MIN = 0.4
# The ranker's quote is read by the bar with this many sentences of its passage either side of
# it (`choose_quote`): the quote is a cut of at most `QUOTE_MAX_SENTENCES` sentences starting at
# the ranker's best one, and the sentence that names what the question asks about often sits
# just before or after the cut (PDF extraction splits a heading-like line and its instruction
# into separate "sentences"). It is the same page the quote cites. The model's own sentences and
# its selection are read alone: read with their neighbours they pass more often and then
# displace the ranker's quote, which answered better on dev (docs/eval.md, "turns12").
RANKED_QUOTE_CONTEXT = 1
# The ranker's score of a quote candidate (a starting sentence and the sentences `quote_from` adds
# after it, i.e. the quote as it would be shown): a weighted sum of the features `RANK_FEATURES`:
# - "cosine" / "overlap": the candidate's embedding cosine with the question (the retrieval
#   embedder; 0 without one) and its share of the question's content words (`overlap`);
# - "sentence_cosine" / "sentence_overlap": the same for the starting sentence alone;
# - "passage_rank": 1 / the passage's rank among the graded passages (retrieval fused BM25 and
#   dense ranks over whole passages, evidence a sentence alone lacks);
# - "passage_overlap": the share of the question's content words in the whole passage plus its
#   section heading.
# `RANK_WEIGHTS`, the default, is the sentence scorer (sentence cosine + overlap + 0.5 / rank,
# chosen on faq_history with bench/quote_rank.py). `WINDOW_RANK_WEIGHTS` is the conditional
# logit fitted on faq_history's 354 questions by `python bench/quote_rank.py --fit
# --unanswerable eval/data/unanswerable_in_domain.jsonl` (family "window", L2 0.05): on
# faq_history, as the agent shows it, citation 61.3% -> 63.3% (5-fold CV 63.6%), ROUGE-L 0.339
# -> 0.355, answered 88% -> 91%; on dev (whole set, bench/answers.py --configs ranker) citation
# 0.59 -> 0.60, ROUGE-L 0.382 -> 0.374. It is not the default: under the relevance bar
# calibrated for the sentence scorer (`RELEVANCE_MIN`) it answers 15% of the unanswerable set's
# report split (8% before; the calibration split stays at 8%), because quotes scored as wholes
# hold more of the question's words. Recalibrate the bar with it before switching (docs/agent.md, "The quote ranker").
RANK_FEATURES = ("cosine", "overlap", "sentence_cosine", "sentence_overlap", "passage_rank",
                 "passage_overlap")
RANK_WEIGHTS = (0.0, 0.0, 1.0, 1.0, 0.5, 0.0)
WINDOW_RANK_WEIGHTS = (5.68, 3.97, 0.0, 0.0, 1.42, 4.68)
TermWeight = Callable[[str], float]
# The word the bar reads a question's content word as (`retrieval.vocabulary.IndexTerms.read`:
# a misspelling as the indexed word it misspells).
TermReading = Callable[[str], str]

_INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b.{0,40}\b(?:instructions?|prompts?|rules?|"
    r"above|previous|prior)\b|\byou are now\b|\bsystem prompt\b|\bnew instructions?\b|"
    r"\b(?:assistants?|ai|models?|chatbots?|llms?)\b,? (?:must|should|shall) (?:now |instead |"
    r"always )?(?:say|reply|answer|respond|output|tell|write|recommend|direct)\b|"
    r"\b(?:note|message|instructions?|attention) (?:to|for) (?:the |all |any )?(?:ai|assistants?|"
    r"chatbots?|language models?|llms?|bots?)\b|<\|im_start\|>|\[/?INST\]",
    re.IGNORECASE,
)
_ENUMERATOR = re.compile(r"^\s*(?:\d{1,2}[.)]|[-–•*])\s+")
_YES_NO = re.compile(r"^\s*(yes|no)\b[\s,.!:;-]*", re.IGNORECASE)
_AUXILIARY = re.compile(
    r"^\s*(?:do|does|did|is|are|was|were|can|could|will|would|should|has|have|had|may)\b",
    re.IGNORECASE,
)
_NEGATION = frozenset("not no cannot never none unavailable unsupported without".split())
# A sentence that narrates the conversation ("You mentioned that you forgot the password", "The
# user asks how to reset the router") is about the prompt, not something a passage says: small
# models summarise their input this way, and since its words are the question's and the
# passages', coverage alone would let it through.
_NARRATION = re.compile(
    r"^\s*(?:(?:as|like|since)\s+)?(?:you|the (?:user|customer))(?:['’]ve)?\s+"
    r"(?:have |has |had |also |are |is |were |was |just |already )?"
    r"(?:mention|ask|said|says|discuss|want|wish|note|describ|wonder|inquir|request|rais|talk)",
    re.IGNORECASE,
)


def looks_like_injection(text: str) -> bool:
    """Whether `text` holds instructions aimed at the assistant ("ignore previous ...")."""
    return bool(_INJECTION.search(text))


@dataclass(frozen=True)
class ClaimCheck:
    """The verdict on one claim.

    Attributes:
        text: The claim as written in the answer.
        supported: Whether a passage supports it.
        passage: 1-based number of the supporting passage (or, when unsupported, of the passage
            that came closest), `None` when no passage was usable.
        evidence: The supporting sentences of that passage, verbatim (empty when unsupported).
        coverage: Share of the claim's content words found in the best window.
        reason: Why it is unsupported ("" when supported).
        also: 1-based numbers of the other passages that support the claim by the same rules
            (a manual says the same thing in its quick guide and in its chapter), in passage
            order; empty when unsupported.
    """

    text: str
    supported: bool
    passage: int | None = None
    evidence: tuple[str, ...] = ()
    coverage: float = 0.0
    reason: str = ""
    also: tuple[int, ...] = ()


def question_subjects(question: str) -> list[str]:
    """What a supporting passage must name: the question's names, quoted strings and menu paths
    (normalised)."""
    out = list(names(question))
    out += [normalise(q) for q in quoted(question)]
    out += [" ".join(path) for path in menu_paths(question)]
    return [s for s in dict.fromkeys(out) if s]


def _has(haystack: str, needle: str) -> bool:
    return f" {needle} " in f" {haystack} "


def _has_path(haystack: str, labels: list[str]) -> bool:
    position = 0
    padded = f" {haystack} "
    for label in labels:
        found = padded.find(f" {label} ", position)
        if found < 0:
            return False
        position = found + len(label) + 1
    return True


@dataclass(frozen=True)
class _Anchors:
    quantities: tuple
    quoted: tuple[str, ...]
    paths: tuple[tuple[str, ...], ...]
    urls: tuple[str, ...]
    names: tuple[str, ...]

    @classmethod
    def of(cls, text: str) -> _Anchors:
        return cls(tuple(quantities(text)), tuple(normalise(q) for q in quoted(text)),
                   tuple(tuple(p) for p in menu_paths(text)),
                   tuple(normalise(u) for u in urls(text)), tuple(names(text)))

    def missing(self, window: str, window_quantities: set) -> str | None:
        """The first anchor absent from the (normalised) window, as shown to a reader."""
        values = {q.value for q in window_quantities}
        for q in self.quantities:
            if (q not in window_quantities) if q.unit else (q.value not in values):
                return f'"{q}"'
        for item in (*self.quoted, *self.urls):
            if not _has(window, item):
                return f'"{item}"'
        for path in self.paths:
            if not _has_path(window, list(path)):
                return f'"{" > ".join(path)}"'
        for item in self.names:
            if not _has(window, item):
                return f'"{item}"'
        return None


@dataclass
class _Sentence:
    text: str
    norm: str
    words: set[str]
    quantities: set
    negated: set[str]


def _prepare(passage: PassageLike) -> tuple[list[_Sentence], str, set[str]]:
    sents = passage_sentences(passage.text)
    heading = passage.citation.section or ""
    return ([_Sentence(s, normalise(s), set(content_words(s)), set(quantities(s)), negated(s))
             for s in sents], normalise(heading), set(content_words(heading)))


def _claim_text(claim: str, question: str) -> tuple[str, bool]:
    """The text to check for `claim` and whether it asserts a negative yes/no answer."""
    text = _ENUMERATOR.sub("", claim).strip()
    m = _YES_NO.match(text)
    if not m:
        return text, False
    rest = text[m.end():]
    negative = m.group(1).lower() == "no"
    if _AUXILIARY.match(question):
        # "Yes." to "Does the TV support X?" claims that the TV supports X.
        proposition = _AUXILIARY.sub("", question).strip().rstrip("?")
        return f"{proposition}. {rest}".strip(), negative
    return rest, negative


def _polarity_clash(asserted: set[str], denied: set[str], window: Sequence[_Sentence],
                    heading_words: set[str]) -> str | None:
    """Why `window` says the opposite of a claim (rule 5 of the module docstring), or `None`."""
    negated_there = set().union(*(s.negated for s in window))
    affirmed_there = set().union(heading_words, *(s.words - s.negated for s in window))
    if (word := min(asserted & (negated_there - affirmed_there), default=None)):
        return f'says the opposite: it negates "{word}"'
    if (word := min(denied & (affirmed_there - negated_there), default=None)):
        return f'says the opposite: it affirms "{word}"'
    return None


def check_claim(
    claim: str,
    question: str,
    passages: Sequence[PassageLike],
    hints: Sequence[int] = (),
) -> ClaimCheck:
    """Check one claim against every passage (see the module docstring for the rules).

    Args:
        claim: One sentence of an answer.
        question: The question it answers (its subject must be named by the passage).
        passages: The retrieved passages, numbered from 1 in this order.
        hints: 1-based numbers of passages the model cited; they win ties, never decide.

    Returns:
        The verdict, with the supporting passage and sentences when supported.
    """
    text, negative = _claim_text(claim, question)
    if looks_like_injection(text):
        return ClaimCheck(claim, False, reason="is an instruction to the assistant, not an answer")
    words = set(content_words(text))
    if not words:
        return ClaimCheck(claim, False, reason="states nothing that a passage could support")
    if _NARRATION.match(text):
        return ClaimCheck(claim, False, reason="narrates the conversation, not the documents")
    if text.rstrip().rstrip(")\"'’”").endswith("?"):
        # Small models echo a past ticket's "Q: ...?" line, whose words a passage then covers.
        return ClaimCheck(claim, False, reason="asks a question, it does not answer one")
    if not _AUXILIARY.match(question) and words <= set(content_words(question)):
        # "Reset the router." to "How do I reset the router?" adds nothing to the question. A
        # yes/no question is left out: there the restated proposition is the answer ("You can
        # use Bluetooth headphones."), checked like a "Yes".
        return ClaimCheck(claim, False, reason="only restates the question")
    anchors = _Anchors.of(text)
    parts = [(c, ws) for c in clauses(text)
             if len(ws := set(content_words(c))) >= CLAUSE_MIN_WORDS and ws != words]
    # A "No." keeps the older, weaker rule below (its proposition is checked for a negation
    # anywhere in the window); every other claim must agree with its window on what is negated.
    denied = set() if negative else negated(text)  # a subset of `words`
    asserted = set() if negative else words - denied
    subjects = question_subjects(question)
    best: tuple | None = None  # (coverage, hinted, -window, passage, evidence)
    closest: tuple[float, int, str] | None = None  # (coverage, passage, why not)
    planted: int | None = None
    supporters: set[int] = set()
    for number, passage in enumerate(passages, start=1):
        if looks_like_injection(passage.text):
            if overlap(text, passage.text) >= MIN_COVERAGE or any(
                    _has(normalise(passage.text), u) for u in anchors.urls):
                planted = planted or number
            continue
        sents, heading, heading_words = _prepare(passage)
        whole = " ".join(s.norm for s in sents) + " " + heading
        missing_subject = next((s for s in subjects if not _has(whole, s)), None)
        for start in range(len(sents)):
            for size in range(1, MAX_WINDOW + 1):
                window = sents[start : start + size]
                if len(window) < size:
                    break
                held = set().union(heading_words, *(s.words for s in window))
                coverage = len(words & held) / len(words)
                norm = " ".join(s.norm for s in window) + " " + heading
                why = None
                if missing_subject:
                    why = f'does not name "{missing_subject}" (the question\'s subject)'
                elif coverage < MIN_COVERAGE:
                    why = (f"holds only {coverage:.0%} of its content words (needs "
                           f"{MIN_COVERAGE:.0%})")
                elif (thin := next((c for c, ws in parts
                                    if len(ws & held) <= CLAUSE_MIN_COVERAGE * len(ws)), None)):
                    why = (f'holds too little of its clause "{thin}" (needs more than '
                           f"{CLAUSE_MIN_COVERAGE:.0%} of its content words)")
                elif (gap := anchors.missing(norm, set().union(*(s.quantities for s in window)))):
                    why = f"does not contain {gap}"
                elif negative and not _NEGATION & set(norm.split()):
                    why = "does not say no: a 'no' needs a passage that negates"
                elif (clash := _polarity_clash(asserted, denied, window, heading_words)):
                    why = clash
                if why is None:
                    supporters.add(number)
                    key = (coverage, number in hints, -size, -number)
                    if best is None or key > best[:4]:
                        best = (*key, tuple(s.text for s in window))
                elif closest is None or coverage > closest[0]:
                    closest = (coverage, number, why)
    if best is not None:
        return ClaimCheck(claim, True, passage=-best[3], evidence=best[4], coverage=best[0],
                          also=tuple(sorted(supporters - {-best[3]})))
    if planted is not None:
        return ClaimCheck(claim, False, passage=planted,
                          reason=f"repeats an instruction planted in passage [{planted}]")
    if closest is None:
        return ClaimCheck(claim, False, reason="no passage can support it (none usable)")
    coverage, number, why = closest
    return ClaimCheck(claim, False, passage=number, coverage=coverage,
                      reason=f"passage [{number}], the closest, {why}")


def split_claims(answer: str) -> list[str]:
    """The claims of an answer: its sentences."""
    return sentences(answer)


def verify(
    answer: str,
    question: str,
    passages: Sequence[PassageLike],
    hints: Sequence[int] = (),
) -> list[ClaimCheck]:
    """Check every sentence of `answer` against `passages` (see `check_claim`).

    A supported sentence whose content words all occur in one earlier supported sentence adds
    nothing to it and is rejected as `REPEATED`: a small model loops ("Press the reset button
    again to reset the router." twelve times, then "Press the reset button" cut off by the
    token budget), and each copy would pass on its own.

    Returns:
        One verdict per claim, in answer order.
    """
    checks, kept = [], []
    for claim in split_claims(answer):
        check = check_claim(claim, question, passages, hints)
        if check.supported:
            words = set(content_words(_claim_text(claim, question)[0]))
            if words and any(words <= earlier for earlier in kept):
                check = ClaimCheck(claim, False, check.passage, coverage=check.coverage,
                                   reason=REPEATED)
            else:
                kept.append(words)
        checks.append(check)
    return checks


# Why `verify` removes a supported sentence that says again what an earlier one said.
REPEATED = "repeats an earlier sentence of the answer"


# --------------------------------------------------------------------------- quoted answers


@dataclass(frozen=True)
class Quote:
    """Sentences to show verbatim, from one passage.

    Attributes:
        passage: 1-based passage number.
        sentences: 1-based numbers of the quoted sentences in that passage, in order.
        texts: The sentences, verbatim.
        selected_by: `"model"` (numbers the model wrote) or `"ranker"`.
    """

    passage: int
    sentences: tuple[int, ...]
    texts: tuple[str, ...]
    selected_by: str = "ranker"

    @property
    def text(self) -> str:
        """The quoted sentences joined by spaces."""
        return " ".join(self.texts)


def relevance(question: str, text: str, weight: TermWeight | None = None,
              read: TermReading | None = None) -> float:
    """Share of the question's distinct content words found in `text`, each weighted by
    `weight(word)` (the index's IDF; `None`: all words count the same) and read as `read(word)`
    (a misspelling as the indexed word it misspells; `None`: as written). 0.0 for a question
    without content words."""
    words = {read(w) for w in content_words(question)} if read else set(content_words(question))
    found = set(content_words(text))
    weights = {w: weight(w) if weight else 1.0 for w in words}
    total = sum(weights.values())
    return sum(v for w, v in weights.items() if w in found) / total if total else 0.0


def unusable_passages(question: str, passages: Sequence[PassageLike],
                      numbers: Sequence[int]) -> str | None:
    """Why the passages `numbers` (1-based) cannot carry an answer to `question` (one is
    instruction-like, or none names a subject of the question), or `None`."""
    for p in numbers:
        if looks_like_injection(passages[p - 1].text):
            return f"passage [{p}] is instruction-like"
    wholes = " ".join(normalise(passages[p - 1].text + " " + (passages[p - 1].citation.section
                                                              or "")) for p in numbers)
    missing = next((s for s in question_subjects(question) if not _has(wholes, s)), None)
    if missing:
        return f'no passage it comes from names "{missing}" (the question\'s subject)'
    return None


def answer_relevance(
    question: str,
    passages: Sequence[PassageLike],
    shown: Sequence[tuple[int, str]],
    weight: TermWeight | None = None,
    read: TermReading | None = None,
) -> str | None:
    """Why the sentences `shown` (`(passage number, text)` pairs) do not answer `question` well
    enough to be shown, or `None` when they do.

    The bar: no sentence comes from an instruction-like passage, every question subject
    (`question_subjects`) is named by one of their passages, and the sentences plus their
    passages' headings reach `RELEVANCE_MIN` (`relevance` with `weight` and `read`).
    """
    numbers = list(dict.fromkeys(p for p, _ in shown))
    why = unusable_passages(question, passages, numbers)
    if why:
        return why
    headings = " ".join(passages[p - 1].citation.section or "" for p in numbers)
    share = relevance(question, " ".join(t for _, t in shown) + " " + headings, weight, read)
    if share < RELEVANCE_MIN:
        return (f"it holds {share:.0%} of the question's (IDF-weighted) content words (needs "
                f"{RELEVANCE_MIN:.0%})")
    return None


def quote_relevance(
    question: str, passages: Sequence[PassageLike], quote: Quote, weight: TermWeight | None = None,
    read: TermReading | None = None, context: int = 0,
) -> str | None:
    """Why `quote` does not answer `question` well enough to be shown (`answer_relevance`), or
    `None` when it does.

    Args:
        question: The (standalone) question.
        passages: The graded passages the quote's passage number refers to.
        quote: The quote to judge.
        weight: A content word's weight (the index's IDF; `None`: all the same).
        read: The word a question's content word is read as (`None`: as written).
        context: Sentences of the quote's passage either side of it that the bar reads with it
            (0: the quote alone; `choose_quote` gives the ranker's quote
            `RANKED_QUOTE_CONTEXT`).

    Returns:
        The reason, or `None`.
    """
    shown = [(quote.passage, t) for t in quote.texts]
    if context and quote.sentences:
        text = passages[quote.passage - 1].text
        sents = passage_sentences(text)
        first, last = min(quote.sentences) - 1, max(quote.sentences) - 1
        # a past ticket's question is never read: its words are the customer's, not an answer
        start = max(first - context, (_ticket_answer_start(sents) or 1) - 1)
        around = sents[start:first] + sents[last + 1:last + 1 + context]
        shown += [(quote.passage, t) for t in around]
    return answer_relevance(question, passages, shown, weight, read)


def selected_quotes(selection: Sequence[tuple[int, int]],
                    passages: Sequence[PassageLike]) -> list[Quote]:
    """The model's sentence selection as quotes, one per passage, invalid numbers dropped."""
    by_passage: dict[int, list[int]] = {}
    for p, s in list(selection)[:QUOTE_MAX_SELECTED]:
        if 1 <= p <= len(passages):
            n_sentences = len(passage_sentences(passages[p - 1].text))
            if 1 <= s <= n_sentences:
                by_passage.setdefault(p, []).append(s)
    out = []
    for p, numbers in by_passage.items():
        sents = passage_sentences(passages[p - 1].text)
        numbers = sorted(set(numbers))
        out.append(Quote(p, tuple(numbers), tuple(sents[s - 1] for s in numbers), "model"))
    return out


def quote_candidates(
    question: str, passages: Sequence[PassageLike], embedder: Embedder | None = None,
    embed_quotes: bool = True,
) -> list[tuple[int, int, Quote, dict[str, float]]]:
    """Every quote the ranker may pick, one per sentence of the usable passages, with the
    features it is scored on (`RANK_FEATURES`).

    A candidate is the quote `quote_from(passages, p, s)` would show: sentence `s` of passage
    `p` and the sentences that follow it within the quote limits. Instruction-like passages
    give none. `embed_quotes=False` leaves the whole quotes' "cosine" at 0 and embeds only the
    first sentences (half the texts, for a scorer that does not weigh it).

    Returns:
        `(passage, sentence, quote, features)` tuples in passage and sentence order, numbers
        1-based.
    """
    out = []
    starts = []  # each candidate's starting sentence, scored on its own too
    for p, passage in enumerate(passages, start=1):
        if looks_like_injection(passage.text):
            continue
        whole = f"{passage.text} {passage.citation.section or ''}"
        passage_overlap = overlap(question, whole)
        sents = passage_sentences(passage.text)
        for s, sentence in enumerate(sents, start=1):
            quote = quote_from(passages, p, s)
            starts.append(sentence)
            out.append((p, s, quote, {
                "cosine": 0.0, "overlap": overlap(question, quote.text),
                "sentence_cosine": 0.0, "sentence_overlap": overlap(question, sentence),
                "passage_rank": 1.0 / p, "passage_overlap": passage_overlap}))
    if out and embedder is not None:
        import numpy as np

        quotes = [quote.text for _, _, quote, _ in out] if embed_quotes else []
        texts = list(dict.fromkeys(quotes + starts))
        vectors = np.asarray(embedder.embed_documents(texts))
        query = np.asarray(embedder.embed_query(question))
        norms = np.linalg.norm(vectors, axis=1) * (np.linalg.norm(query) or 1.0)
        cosine = dict(zip(texts, (vectors @ query / np.where(norms == 0, 1.0, norms)).tolist(),
                          strict=True))
        for (_, _, quote, features), sentence in zip(out, starts, strict=True):
            features["cosine"] = cosine[quote.text] if embed_quotes else 0.0
            features["sentence_cosine"] = cosine[sentence]
    return out


def rank_sentences(
    question: str, passages: Sequence[PassageLike], embedder: Embedder | None = None,
    weights: Sequence[float] | None = None,
) -> list[tuple[float, int, int]]:
    """Every quote candidate (`quote_candidates`) scored against the question, best first.

    Score: `weights` (default `RANK_WEIGHTS`) times the candidate's `RANK_FEATURES` (embedding
    similarity and word overlap of the quote and of its first sentence, the passage's retrieval
    rank and how much of the question the passage and its heading cover). Ties go to the
    earlier passage, then the earlier sentence.

    Returns:
        `(score, passage, sentence)` triples, numbers 1-based: `quote_from(passages, passage,
        sentence)` is the quote scored.
    """
    weights = RANK_WEIGHTS if weights is None else weights
    embed_quotes = weights[RANK_FEATURES.index("cosine")] != 0
    scored = [(sum(w * features[f] for w, f in zip(weights, RANK_FEATURES, strict=True)),
               p, s) for p, s, _, features in quote_candidates(question, passages, embedder,
                                                                embed_quotes)]
    return sorted(scored, key=lambda t: (-t[0], t[1], t[2]))


def rank_passages(
    question: str, passages: Sequence[PassageLike], embedder: Embedder | None = None,
    weights: Sequence[float] | None = None,
) -> list[int]:
    """The passages' order by their best quote candidate (`rank_sentences`, whose score counts
    the passage's retrieval rank): indices into `passages`, 0-based, best first; passages with no
    candidate (instruction-like) last, in retrieval order. Deterministic: ties keep retrieval
    order."""
    order = list(dict.fromkeys(p - 1 for _, p, _ in rank_sentences(question, passages,
                                                                    embedder, weights)))
    return order + [i for i in range(len(passages)) if i not in order]


def ranked_quote(
    question: str, passages: Sequence[PassageLike], embedder: Embedder | None = None,
    weights: Sequence[float] | None = None,
) -> Quote | None:
    """The best-ranked quote candidate (`rank_sentences`): a sentence and the ones that follow it
    in its passage, up to `QUOTE_MAX_SENTENCES` sentences and `QUOTE_MAX_WORDS` words; `None`
    when no passage is usable."""
    ranked = rank_sentences(question, passages, embedder, weights)
    if not ranked:
        return None
    _, p, s = ranked[0]
    return quote_from(passages, p, s)


def quote_from(
    passages: Sequence[PassageLike], passage: int, sentence: int,
    max_sentences: int = QUOTE_MAX_SENTENCES, max_words: int = QUOTE_MAX_WORDS,
) -> Quote:
    """The ranker's quote starting at sentence `sentence` of passage `passage` (1-based): that
    sentence and the ones that follow it, up to `max_sentences` sentences and (beyond the first)
    `max_words` words. In a past ticket's passage the quote is its answer, from the start."""
    sents = passage_sentences(passages[passage - 1].text)
    answer = _ticket_answer_start(sents)
    if answer:
        # A past ticket ("Question: ... Answer: ..."): its answer is one unit written for that
        # question, so the quote is the answer from its first sentence, never the question.
        sentence = answer
    numbers, words = [sentence], len(sents[sentence - 1].split())
    for j in range(sentence + 1, len(sents) + 1):
        if len(numbers) >= max_sentences or words + len(sents[j - 1].split()) > max_words:
            break
        numbers.append(j)
        words += len(sents[j - 1].split())
    texts = [sents[j - 1] for j in numbers]
    if answer:
        texts[0] = texts[0].removeprefix(TICKET_ANSWER).lstrip()  # still verbatim text
    return Quote(passage, tuple(numbers), tuple(texts), "ranker")


# How ingest writes a ticket row as a passage (`ingest.loaders`: "Question: ...\nAnswer: ...").
TICKET_QUESTION, TICKET_ANSWER = "Question:", "Answer:"


def _ticket_answer_start(sents: Sequence[str]) -> int | None:
    """The 1-based number of the sentence where a ticket passage's answer starts, or `None`
    when the passage is not a ticket row."""
    if not sents or not sents[0].startswith(TICKET_QUESTION):
        return None
    return next((i for i, t in enumerate(sents, start=1) if t.startswith(TICKET_ANSWER)), None)


def choose_quote(
    question: str,
    passages: Sequence[PassageLike],
    selection: Sequence[tuple[int, int]] = (),
    embedder: Embedder | None = None,
    weight: TermWeight | None = None,
    read: TermReading | None = None,
    first: Literal["ranker", "model"] = "ranker",
) -> tuple[list[Quote], str]:
    """What to quote, and why nothing when nothing qualifies.

    Two candidates, each shown only if it reaches `quote_relevance`: the ranker's quote (read
    with `RANKED_QUOTE_CONTEXT` sentences of its passage either side of it) and the sentences
    the model selected by number (read alone). `first` says which is tried first; the other is
    the fallback. Either order answers exactly when one of them reaches the bar, so the order
    changes what is quoted, never whether: the ranker goes first by default because the
    adapter's selections score below it (docs/agent.md, "The quote: the ranker first").

    Returns:
        `(quotes, reason)`: the quotes to show (empty when none reaches the bar) and, when
        empty, why (the ranker's reason).
    """
    def model() -> list[Quote]:
        return [q for q in selected_quotes(selection, passages)
                if quote_relevance(question, passages, q, weight, read) is None]

    if first == "model" and (chosen := model()):
        return chosen, ""
    ranked = ranked_quote(question, passages, embedder)
    why = "no usable passage" if ranked is None else quote_relevance(
        question, passages, ranked, weight, read, RANKED_QUOTE_CONTEXT)
    if not why:
        return [ranked], ""
    if first == "ranker" and (chosen := model()):
        return chosen, ""
    return [], why
