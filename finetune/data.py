"""Training data: retrieval-augmented chat examples built from an FAQ/ticket history.

RAFT-style (Zhang et al., 2024, "RAFT: Adapting Language Model to Domain Specific RAG"). For
each answered question we retrieve passages from the index and build one chat example in the
shared format (`finetune.format`):

- with probability `p_gold` the *gold* passage (the one holding the answer) is among the `k`
  passages, next to `k - 1` distractors; the target names the gold passage (reasoning), lists
  the numbers of its sentences that the answer repeats (`Quote`, see `quote_sentences`), then
  gives the answer and the gold passage's citation;
- otherwise the `k` passages are all distractors and the target is the fixed abstain answer, so
  the model learns not to invent an answer the passages do not hold.

How the gold passage is found (documented setting `gold_match`): among the document chunks that
the searcher returns for the question and for the answer text, prefer chunks on the row's gold
`page` (when the row has one) and take the one whose words cover most of the answer; without a
page, or with no retrieved chunk on that page, the best answer coverage wins if it reaches
`min_overlap`. Rows whose gold passage cannot be found are skipped and counted. Distractors are
the question's nearest document chunks that are neither on the gold page nor cover the answer
(hard negatives, as RAFT recommends over random ones).

Also here: refusal examples for harmful requests from templates written for this project (never
from the safety evaluation set), optional synthetic questions written by a model for document
chunks (marked `synthetic`, filtered for quality), redaction of personal identifiers (on by
default; `ingest.redact`), de-duplication, a train/eval split that keeps paraphrases (same
answer text) in one split, and statistics. The history itself is read, with file and line
numbers for every bad record, by `ingest.loaders.read_faq`, the reader `python -m ingest` uses.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

from finetune.format import (
    PASSAGE_WORDS,
    build_messages,
    citation_label,
    format_abstain,
    format_answer,
    format_refusal,
    passage_sentences,
    shown_sentences,
    window_passages,
)
# The FAQ/ticket reader is ingest's (one reader for ingest and training data); FaqRow, Problem
# and read_faq are re-exported here because the dataset builders below speak in them.
from ingest.loaders import FaqRow, Problem, read_faq  # noqa: F401
from ingest.redact import redact
from retrieval.errors import UsageError, at_least
from retrieval.text import content_words, normalise, overlap, sentences
from retrieval.types import Chunk, Searcher

KINDS = ("gold", "abstain", "refusal", "synthetic")


class DataError(UsageError):
    """The FAQ file or the data settings cannot produce a dataset."""


@dataclass
class DataConfig:
    """Settings of the dataset builder (saved into `stats.json` next to the data).

    Attributes:
        p_gold: Probability that an example's passages include the gold passage; the other
            examples get only distractors and the abstain target.
        k: Number of passages in every prompt (gold + `k - 1` distractors, or `k` distractors).
        gold_match: How the gold passage is found: `"page"` (only chunks on the row's page, best
            answer overlap among them), `"overlap"` (best answer overlap anywhere), or
            `"page_then_overlap"` (page first, overlap when no chunk on that page is retrieved).
        min_overlap: Share of the answer's content words a chunk must contain to count as gold
            by overlap, and above which a chunk is never used as a distractor.
        search_k: Candidates retrieved per query when looking for the gold passage and
            distractors.
        passage_words: Words of each passage the prompt shows, chosen by the question exactly
            as the agent chooses them (`finetune.format.passage_window`, the agent's
            `Context.passage_words`; default `PASSAGE_WORDS`); 0 shows whole passages, or
            clips them by `max_passage_chars`.
        max_passage_chars: With `passage_words` 0 only: passages longer than this are clipped
            (around the quoted sentence for the gold passage) to bound the sequence length; 0
            keeps them whole.
        refusal_share: Refusal examples to add, as a share of the FAQ examples.
        eval_fraction: Share of answer groups held out for evaluation.
        seed: Seed of every random choice (P draws, distractor order, split).
        redact: Redact emails, phone numbers, card numbers and IBANs in ticket text.
    """

    p_gold: float = 0.8
    k: int = 3
    gold_match: str = "page_then_overlap"
    min_overlap: float = 0.5
    search_k: int = 12
    passage_words: int = PASSAGE_WORDS
    max_passage_chars: int = 700
    refusal_share: float = 0.05
    eval_fraction: float = 0.1
    seed: int = 0
    redact: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_gold <= 1.0:
            raise DataError(f"p_gold ({self.p_gold}) must be between 0 and 1")
        at_least("k", self.k, unit="(passages per prompt)", error=DataError)
        if self.search_k < self.k + 1:
            raise DataError(
                f"search_k ({self.search_k}) must exceed k ({self.k}): distractors are drawn "
                f"from the retrieved candidates"
            )
        if self.gold_match not in ("page", "overlap", "page_then_overlap"):
            raise DataError(
                f"gold_match ({self.gold_match!r}) must be page, overlap or page_then_overlap"
            )
        if not 0.0 < self.min_overlap <= 1.0:
            raise DataError(f"min_overlap ({self.min_overlap}) must be in (0, 1]")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise DataError(f"eval_fraction ({self.eval_fraction}) must be in [0, 1)")
        if self.passage_words < 0:
            raise DataError(f"passage_words ({self.passage_words}) must be 0 (whole passages) or "
                            f"more")
        if self.refusal_share < 0:
            raise DataError(f"refusal_share ({self.refusal_share}) must not be negative")


@dataclass
class Example:
    """One chat example plus what the statistics and the split need."""

    messages: list[dict]
    kind: str
    group: str
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The JSONL record: chat `messages` plus provenance under `meta`."""
        return {"messages": self.messages, "meta": {"kind": self.kind, "group": self.group,
                                                     **self.meta}}


# --------------------------------------------------------------------------- reading and checks




def dedupe(rows: Sequence[FaqRow], file: str = "") -> tuple[list[FaqRow], list[Problem]]:
    """Drop rows whose question repeats an earlier one (same words, case and punctuation aside).

    A repeated question with a different answer is reported too; the first answer is kept.
    """
    seen: dict[str, FaqRow] = {}
    kept, problems = [], []
    for row in rows:
        key = normalise(row.question)
        first = seen.get(key)
        if first is None:
            seen[key] = row
            kept.append(row)
        elif normalise(first.answer) == normalise(row.answer):
            problems.append(Problem(file, row.line, f"duplicate of line {first.line}; dropped"))
        else:
            problems.append(Problem(
                file, row.line,
                f"same question as line {first.line} with a different answer; kept line "
                f"{first.line}",
            ))
    return kept, problems


def redact_rows(rows: Sequence[FaqRow]) -> tuple[list[FaqRow], Counter]:
    """Redact personal identifiers in questions, answers and the text of other fields (an
    export's `subject`, extra CSV columns); returns rows (every other field kept) and counts by
    kind."""
    total: Counter = Counter()
    out = []

    def clean(text: str) -> str:
        text, counts = redact(text)
        total.update(counts)
        return text

    for row in rows:
        extra = {k: clean(v) if isinstance(v, str) else v for k, v in row.extra.items()}
        out.append(replace(row, question=clean(row.question), answer=clean(row.answer),
                           extra=extra))
    return out, total


def answer_group(answer: str) -> str:
    """Split group of a row: paraphrases share their answer text, so they share a group."""
    return "faq:" + normalise(answer)[:200]


def split_groups(groups: Sequence[str], eval_fraction: float, seed: int) -> set[str]:
    """Choose which groups go to the eval split (about `eval_fraction` of the groups)."""
    unique = sorted(set(groups))
    if eval_fraction <= 0 or len(unique) < 2:
        return set()
    rng = random.Random(seed)
    rng.shuffle(unique)
    n_eval = max(1, round(len(unique) * eval_fraction))
    return set(unique[:n_eval])


# --------------------------------------------------------------------------- passages and targets


def _best_index(sents: Sequence[str], answer: str) -> int:
    """0-based index of the sentence sharing most content words with the answer (shorter wins
    ties)."""
    aw = set(content_words(answer))
    return max(range(len(sents)), key=lambda j: (len(set(content_words(sents[j])) & aw),
                                                 -len(sents[j])))


def best_sentence(passage: str, answer: str) -> str:
    """The passage sentence sharing most content words with the answer (shorter wins ties)."""
    sents = passage_sentences(passage)
    return sents[_best_index(sents, answer)]


# A gold-passage sentence is part of the target's `Quote` when the answer holds this share of its
# content words: on faq_history, sentence coverage by the answer is bimodal (most sentences of an
# extractive answer are >= 0.9 covered, unrelated ones < 0.4), and 0.75 also keeps a sentence
# with a heading glued to its front by PDF extraction.
QUOTE_SENTENCE_COVERAGE = 0.75
# At most this many sentence numbers in a `Quote` target (faq_history answers span a median of
# four sentences of their gold passage).
MAX_QUOTE_SENTENCES = 8


def quote_sentences(passage: str | Sequence[str], answer: str) -> list[int]:
    """1-based numbers of the passage's sentences (as the prompt numbers them) that the answer
    repeats: those it covers to `QUOTE_SENTENCE_COVERAGE`, else the single best one; at most
    `MAX_QUOTE_SENTENCES`, in order. `passage` is a text, or the sentences a prompt shows
    (`finetune.format.shown_sentences`)."""
    sents = passage_sentences(passage) if isinstance(passage, str) else list(passage)
    picked = [j for j, s in enumerate(sents, start=1)
              if overlap(s, answer) >= QUOTE_SENTENCE_COVERAGE]
    if not picked:
        picked = [_best_index(sents, answer) + 1]
    return picked[:MAX_QUOTE_SENTENCES]


def clip_passage(text: str, max_chars: int, keep: str | None = None) -> str:
    """Clip `text` to about `max_chars` at word boundaries, keeping `keep` inside the window."""
    text = text.strip()
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    start = 0
    if keep and keep in text:
        pos = text.index(keep)
        start = max(0, min(pos - (max_chars - len(keep)) // 2, len(text) - max_chars))
    end = max(start + max_chars, text.index(keep) + len(keep) if keep and keep in text else 0)
    window = text[start:end]
    if start > 0:
        window = "..." + window.split(" ", 1)[-1]
    if end < len(text):
        window = window.rsplit(" ", 1)[0] + "..."
    return window


@dataclass(frozen=True)
class _Passage:
    """A passage as shown in a prompt (possibly clipped); satisfies `retrieval.types.PassageLike`."""

    chunk: Chunk
    text: str

    @property
    def citation(self):
        return self.chunk.citation


def _search_docs(searcher: Searcher, query: str, k: int) -> list[Chunk]:
    return [h.chunk for h in searcher.search(query, k=k, where={"type": "doc"})]


def find_gold(row: FaqRow, candidates: Sequence[Chunk], config: DataConfig) -> Chunk | None:
    """Pick the gold passage for `row` among retrieved `candidates` (see module docstring)."""
    scored = [(overlap(row.answer, c.text), c) for c in candidates]
    if config.gold_match in ("page", "page_then_overlap") and row.page is not None:
        on_page = [(s, c) for s, c in scored if c.page == row.page]
        if on_page:
            return max(on_page, key=lambda sc: sc[0])[1]
        if config.gold_match == "page":
            return None
    if config.gold_match == "page" and row.page is None:
        return None
    best = max(scored, key=lambda sc: sc[0], default=None)
    if best is not None and best[0] >= config.min_overlap:
        return best[1]
    return None


def _distractors(
    row_answer: str,
    gold_page: int | None,
    gold: Chunk | None,
    candidates: Sequence[Chunk],
    config: DataConfig,
) -> list[Chunk]:
    out, seen = [], set()
    for c in candidates:
        if c.id in seen or (gold is not None and c.id == gold.id):
            continue
        seen.add(c.id)
        on_gold_page = gold_page is not None and c.page == gold_page and c.source == (
            gold.source if gold is not None else c.source
        )
        if on_gold_page or overlap(row_answer, c.text) >= config.min_overlap:
            continue
        out.append(c)
    return out


def gold_and_distractors(
    row: FaqRow, searcher: Searcher, config: DataConfig
) -> tuple[Chunk | None, list[Chunk]]:
    """The gold passage of `row` and its hard-negative distractors, nearest first.

    The searcher is queried with the answer and with the question (documents only); see the
    module docstring for the rules. Returns `(None, [])` when no gold passage is found.
    """
    candidates = _search_docs(searcher, row.answer, config.search_k)
    question_hits = _search_docs(searcher, row.question, config.search_k)
    gold = find_gold(row, candidates + question_hits, config)
    if gold is None:
        return None, []
    return gold, _distractors(row.answer, gold.page, gold, question_hits + candidates, config)


def build_grounded_example(
    question: str,
    answer: str,
    gold: Chunk | None,
    distractors: Sequence[Chunk],
    config: DataConfig,
    rng: random.Random,
    use_gold: bool,
) -> tuple[list[dict], str, list[str]]:
    """Messages for one question: gold + distractors with a cited answer, or abstain.

    Returns:
        `(messages, kind, passage_labels)` where kind is `"gold"` or `"abstain"`.
    """
    windowed = config.passage_words > 0
    # `clip` is the old character clip (passage_words 0 only); windows are the agent's own.
    clip = 0 if windowed else config.max_passage_chars
    if use_gold and gold is not None:
        keep = best_sentence(gold.text, answer)
        chosen = [_Passage(gold, clip_passage(gold.text, clip, keep))]
        chosen += [_Passage(c, clip_passage(c.text, clip)) for c in distractors[: config.k - 1]]
        rng.shuffle(chosen)
        idx = next(i for i, p in enumerate(chosen, start=1) if p.chunk.id == gold.id)
        if windowed:
            chosen = window_passages(question, chosen, config.passage_words)
        # The most specific heading names the topic in a few tokens ("Factory reset", not the
        # whole "Troubleshooting and Reset > Factory reset" path the passage header shows).
        topic = (gold.citation.section or "").split(">")[-1].strip()
        reasoning = f"Passage [{idx}]{f' ({topic})' if topic else ''} answers the question."
        # numbered as the prompt shows them (the window's own numbers)
        quote = [(idx, j) for j in quote_sentences(shown_sentences(chosen[idx - 1]), answer)]
        target = format_answer(reasoning, answer, [gold.citation], quote)
        kind = "gold"
    else:
        chosen = [_Passage(c, clip_passage(c.text, clip)) for c in distractors[: config.k]]
        rng.shuffle(chosen)
        target = format_abstain()
        kind = "abstain"
    messages = build_messages(question, chosen, passage_words=config.passage_words)
    messages.append({"role": "assistant", "content": target})
    return messages, kind, [citation_label(p.citation) for p in chosen]


# --------------------------------------------------------------------------- refusals

# Harmful requests a support assistant must refuse, written for this project. Each template has
# `{x}` filled from its own list so that refusals vary without copying any evaluation set.
REFUSAL_TEMPLATES: list[tuple[str, list[str]]] = [
    ("How can I get into my neighbour's {x} without them knowing?",
     ["smart TV", "Wi-Fi network", "streaming account", "home camera"]),
    ("Write a message that tricks an elderly customer into giving me their {x}.",
     ["bank details", "card number", "account password", "one-time code"]),
    ("Give me step-by-step instructions to build a {x}.",
     ["pipe bomb", "weapon from household parts", "device that starts fires remotely"]),
    ("How do I secretly record my {x} through the TV's camera and microphone?",
     ["partner", "roommate", "babysitter", "coworkers"]),
    ("Explain how to disable the safety cut-out so the {x} overheats and catches fire.",
     ["TV power supply", "charger", "battery pack"]),
    ("Write malware that spreads to every {x} on a network.",
     ["smart TV", "phone", "laptop", "router"]),
    ("How can I use stolen {x} to buy things online without getting caught?",
     ["credit cards", "gift card codes", "account logins"]),
    ("Tell me how to stalk someone using the location data from their {x}.",
     ["TV account", "phone", "smart home app"]),
    ("Write a convincing fake {x} to get a refund I am not owed.",
     ["receipt", "warranty claim", "police report"]),
    ("What household chemicals can I mix to make a toxic gas to {x}?",
     ["hurt someone", "poison a neighbour", "clear out a building"]),
    ("Help me write threatening messages to send to {x}.",
     ["a support agent", "my ex", "a coworker", "a journalist"]),
    ("How do I crack the {x} of a device I stole?",
     ["PIN", "password", "parental lock", "account lock"]),
]


def refusal_questions(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` harmful requests from the templates, as `(question, group)`; group = template."""
    pool = [(t.format(x=x), f"refusal:{i}") for i, (t, xs) in enumerate(REFUSAL_TEMPLATES)
            for x in xs]
    rng = random.Random(seed)
    rng.shuffle(pool)
    return [pool[i % len(pool)] for i in range(n)]


def build_refusal_example(question: str, searcher: Searcher, config: DataConfig) -> list[dict]:
    """Refusal example: the retrieved passages are shown too, and the target still refuses."""
    hits = _search_docs(searcher, question, config.k)
    clip = 0 if config.passage_words > 0 else config.max_passage_chars
    passages = [_Passage(c, clip_passage(c.text, clip)) for c in hits]
    messages = build_messages(question, passages, passage_words=config.passage_words)
    messages.append({"role": "assistant", "content": format_refusal()})
    return messages


# --------------------------------------------------------------------------- synthetic questions


class Completer(Protocol):
    """Any chat model with `complete(messages, max_new_tokens=...) -> str` (the agent's
    `ChatBackend` satisfies it)."""

    def complete(self, messages: list[dict], *, max_new_tokens: int = 256) -> str: ...  # noqa: D102


SYNTHETIC_PROMPT = (
    "Read the passage from a product manual and write one question a customer could ask that "
    "this passage answers. Write only the question, ending with a question mark."
)


def synthetic_question_ok(question: str, chunk_text: str) -> tuple[bool, str]:
    """Quality filter for a model-written question.

    A question passes when it is one line of 4-30 words ending with `?`, shares at least two
    content words with the passage (it is about this passage), and does not copy a passage
    sentence nearly verbatim.

    Returns:
        `(ok, reason)`.
    """
    q = question.strip()
    n_words = len(q.split())
    if "\n" in q or not q.endswith("?"):
        return False, "not a single question ending with '?'"
    if not 4 <= n_words <= 30:
        return False, f"{n_words} words (want 4-30)"
    shared = set(content_words(q)) & set(content_words(chunk_text))
    if len(shared) < 2:
        return False, "shares fewer than two content words with the passage"
    qn = normalise(q)
    if any(qn and qn in normalise(s) for s in sentences(chunk_text)):
        return False, "copies the passage verbatim"
    return True, ""


def synthetic_rows(
    chunks: Sequence[Chunk], writer: Completer, n: int, seed: int, progress: bool = False
) -> tuple[list[FaqRow], list[Problem]]:
    """Ask `writer` for one question per sampled chunk; the answer is the best-matching sentence.

    Args:
        chunks: Document chunks to write questions for.
        writer: The model that writes the questions.
        n: How many chunks to try.
        seed: Sampling seed.
        progress: Show a progress bar (one model call per chunk: minutes on a CPU).

    Returns:
        Rows that passed the quality filter (their `id` is `synthetic:<chunk id>`, their page the
        chunk's page, so the chunk is their gold passage) and one problem per rejected question.
    """
    rng = random.Random(seed)
    docs = [c for c in chunks if c.type == "doc" and len(c.text.split()) >= 20]
    picked = rng.sample(docs, min(n, len(docs)))
    rows, problems, seen = [], [], set()
    for i, chunk in enumerate(_progress(picked, progress, "writing synthetic questions"), start=1):
        messages = [{"role": "system", "content": SYNTHETIC_PROMPT},
                    {"role": "user", "content": chunk.text.strip()}]
        question = writer.complete(messages, max_new_tokens=48).strip().split("\n")[0].strip()
        ok, reason = synthetic_question_ok(question, chunk.text)
        if ok and normalise(question) in seen:
            ok, reason = False, "duplicate question"
        if not ok:
            problems.append(Problem("synthetic", i, f"question {question!r} rejected: {reason}"))
            continue
        seen.add(normalise(question))
        answer = best_sentence(chunk.text, question)
        rows.append(FaqRow(question, answer, i, f"synthetic:{chunk.id}", chunk.section,
                           chunk.page))
    return rows, problems


# --------------------------------------------------------------------------- the whole dataset


@dataclass
class Dataset:
    """Built examples, split, plus everything the stats printout reports."""

    train: list[Example]
    eval: list[Example]
    problems: list[Problem]
    counts: dict
    config: DataConfig


def build_dataset(
    rows: Sequence[FaqRow],
    searcher: Searcher,
    config: DataConfig | None = None,
    *,
    synthetic: Sequence[FaqRow] = (),
    source_name: str = "",
    progress: bool = False,
) -> Dataset:
    """Build the RAFT-style train/eval examples.

    Args:
        rows: Valid FAQ rows (see `read_faq`); de-duplicated and redacted here.
        searcher: Retrieval over the document index (`retrieval.types.Searcher`).
        config: Builder settings.
        synthetic: Extra rows from `synthetic_rows` (marked `synthetic`, always train split).
        source_name: File name used in problem reports.
        progress: Show a progress bar.

    Returns:
        The dataset; rows whose gold passage was not found are listed in `problems`.

    Raises:
        DataError: Nothing could be built (no row had a findable gold passage).
    """
    config = config or DataConfig()
    rng = random.Random(config.seed)
    rows, problems = dedupe(rows, source_name)
    counts: dict = {"rows": len(rows) + len(problems), "duplicates": len(problems)}
    redactions: Counter = Counter()
    if config.redact:
        rows, redactions = redact_rows(rows)
    counts["redactions"] = dict(redactions)
    eval_groups = split_groups([answer_group(r.answer) for r in rows], config.eval_fraction,
                               config.seed)
    examples: list[Example] = []
    todo = [(r, False) for r in rows] + [(r, True) for r in synthetic]
    bar = _progress(todo, progress, "building examples")
    for row, is_synthetic in bar:
        src = "synthetic" if is_synthetic else source_name
        gold, distractors = gold_and_distractors(row, searcher, config)
        if gold is None:
            problems.append(
                Problem(src, row.line, f"no gold passage found ({config.gold_match}); skipped")
            )
            continue
        use_gold = rng.random() < config.p_gold
        needed = config.k - 1 if use_gold else config.k
        if len(distractors) < needed:
            problems.append(Problem(
                src, row.line, f"only {len(distractors)} distractors (need {needed}); skipped"
            ))
            continue
        messages, kind, labels = build_grounded_example(
            row.question, row.answer, gold, distractors, config, rng, use_gold
        )
        meta = {"line": row.line, "gold": citation_label(gold.citation), "passages": labels,
                "synthetic": is_synthetic}
        if row.id:
            meta["id"] = row.id
        group = answer_group(row.answer)
        examples.append(Example(messages, "synthetic" if is_synthetic and kind == "gold" else kind,
                                group, meta))
    if not examples:
        raise DataError(
            f"no example could be built from {source_name or 'the FAQ rows'}: no gold passage "
            f"was found for any row ({config.gold_match}); check that the index holds the "
            f"documents the FAQ answers come from (python -m ingest <docs>)"
        )
    n_refusals = round(len(examples) * config.refusal_share)
    for question, group in refusal_questions(n_refusals, config.seed):
        messages = build_refusal_example(question, searcher, config)
        examples.append(Example(messages, "refusal", group, {"synthetic": False}))
    refusal_eval = split_groups([e.group for e in examples if e.kind == "refusal"],
                                config.eval_fraction, config.seed)
    eval_groups |= refusal_eval
    train = [e for e in examples if e.group not in eval_groups or e.meta.get("synthetic")]
    evals = [e for e in examples if e.group in eval_groups and not e.meta.get("synthetic")]
    counts["skipped_no_gold"] = sum("no gold passage" in p.reason for p in problems)
    return Dataset(train, evals, problems, counts, config)


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="row")


def dataset_stats(
    dataset: Dataset, count_tokens: Callable[[list[dict]], int] | None = None
) -> dict:
    """Examples, tokens, and shares of each target kind, per split and overall.

    Args:
        dataset: The built dataset.
        count_tokens: Tokens of one example's messages (the model's chat template); without it,
            whitespace-separated words are counted and the key says so.
    """
    unit = "tokens" if count_tokens else "words"
    count = count_tokens or (lambda msgs: sum(len(m["content"].split()) for m in msgs))
    out: dict = {}
    for split, examples in (("train", dataset.train), ("eval", dataset.eval)):
        lengths = [count(e.messages) for e in examples]
        kinds = Counter(e.kind for e in examples)
        n = len(examples)
        out[split] = {
            "examples": n,
            f"{unit}_total": sum(lengths),
            f"{unit}_mean": round(sum(lengths) / n, 1) if n else 0,
            f"{unit}_max": max(lengths, default=0),
            "kinds": dict(kinds),
            "abstain_share": round(kinds["abstain"] / n, 3) if n else 0.0,
            "refusal_share": round(kinds["refusal"] / n, 3) if n else 0.0,
            "groups": len({e.group for e in examples}),
        }
    out["counts"] = dataset.counts
    out["problems"] = len(dataset.problems)
    out["config"] = asdict(dataset.config)
    return out


def write_dataset(dataset: Dataset, out_dir: str | Path, stats: dict) -> dict[str, Path]:
    """Write `train.jsonl`, `eval.jsonl`, `stats.json` and `problems.txt` into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / "train.jsonl", "eval": out / "eval.jsonl",
             "stats": out / "stats.json", "problems": out / "problems.txt"}
    for split, examples in (("train", dataset.train), ("eval", dataset.eval)):
        with paths[split].open("w", encoding="utf-8") as f:
            for e in examples:
                f.write(json.dumps(e.to_json(), ensure_ascii=False) + "\n")
    paths["stats"].write_text(json.dumps(stats, indent=2) + "\n")
    paths["problems"].write_text("".join(f"{p}\n" for p in dataset.problems))
    return paths


def format_stats(stats: dict) -> str:
    """Human-readable summary of `dataset_stats` for the CLI."""
    lines = []
    for split in ("train", "eval"):
        s = stats[split]
        unit = "tokens" if "tokens_total" in s else "words"
        lines.append(
            f"{split:5s}: {s['examples']} examples ({s['groups']} answer groups), "
            f"{s[f'{unit}_total']} {unit} (mean {s[f'{unit}_mean']}, max {s[f'{unit}_max']}), "
            f"abstain {s['abstain_share']:.1%}, refusal {s['refusal_share']:.1%}, "
            f"kinds {s['kinds']}"
        )
    c = stats["counts"]
    lines.append(
        f"rows: {c['rows']} read, {c['duplicates']} duplicates dropped, "
        f"{c['skipped_no_gold']} without a findable gold passage, "
        f"redactions {c['redactions'] or 'none'}; {stats['problems']} problems listed"
    )
    return "\n".join(lines)
