"""Run-scoped dependencies and settings of the agent graph (LangGraph's `context_schema`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Literal, get_args, get_origin, get_type_hints

from agent.faq import FaqMatcher
from agent.guards import Guard
from agent.llm import ChatBackend
from agent.prompts import MODEL_CHECK_MAX_NEW_TOKENS
from finetune.format import PASSAGE_TOKENS, PASSAGE_WORDS
from retrieval.errors import UsageError, at_least
from retrieval.types import Embedder, Searcher


class Cancelled(Exception):
    """Raised inside a run once its caller set `Context.cancel` (the user pressed Ctrl-C)."""


# Grading thresholds for all-MiniLM-L6-v2 cosine similarities. Checked on the emanual manual: the
# 354 faq_history questions (all answerable) keep a passage on the first search 99.4% of the time,
# the 25 hand-written off-topic questions of eval/data never do (docs/agent.md has the sweep).
# Re-check them when you change the embedder.
DEFAULT_MIN_SIMILARITY = 0.40
DEFAULT_MIN_OVERLAP = 0.5
DEFAULT_OVERLAP_FLOOR = 0.20


@dataclass
class Context:
    """What every node of one run may use.

    Attributes:
        searcher: Retrieval over the index (`retrieval.search.HybridSearcher` or a fake).
        llm: The reasoning model.
        top_k: Passages retrieved per search.
        max_contexts: Passages kept after grading and shown to the model.
        rerank: Which graded passages the model sees (docs/agent.md, "Re-ranking the graded
            passages"): `"select"` (default), the `max_contexts` with the best quote candidates
            (`retrieval.grounding.rank_passages`), in retrieval order; `"best_first"`, the same
            passages best first; `"off"`, the first `max_contexts` in retrieval order.
        passage_words: Words of each graded passage the prompt shows: the window of sentences
            that best matches the question (`finetune.format.passage_window`, default
            `PASSAGE_WORDS`); 0 shows whole passages. Verification and quotes always read the
            whole passages.
        passage_tokens: Token budget of the passages block the prompt shows (the windows
            numbered, with their label lines): over it, windows lose their sentences least
            relevant to the question, never the one each is centred on
            (`finetune.format.fit_windows`; default `PASSAGE_TOKENS`, 0 = no budget). Counted
            by the model's tokenizer when the backend has `count_tokens`, else estimated
            (`finetune.format.estimate_tokens`). Verification and quotes still read the whole
            passages.
        min_similarity: A passage whose cosine similarity to the query reaches this is relevant.
        min_overlap: Alternatively, a passage holding at least this fraction of the query's
            content words is relevant if its similarity is at least `overlap_floor`.
        overlap_floor: See `min_overlap`.
        max_rewrites: Query rewrites allowed when grading keeps nothing (then abstain).
        rewrite_with_llm: Rewrite follow-ups and failed queries with the LLM instead of the
            deterministic keyword rules (worth it with a capable remote model, not with 135M).
        history_turns: Earlier question/answer pairs placed before the question in the prompt.
        max_new_tokens: Cap on generated tokens per answer.
        faq: FAQ matcher run beside retrieval, or `None`.
        answer_prefix: Text the answer is prefilled with (the first label of the shared
            format). Small models follow the format far more often when it is started for
            them; the fine-tuned adapter's targets start with the same label. `""` turns it off.
        answer_mode: `"generate"`: the model writes the answer, verification keeps its supported
            sentences, and the passages are quoted when none survives. `"extract"`: the answer
            is always the quote (the sentences the model selects by number, else the ranker's);
            generation stops after the `Quote` part. `bench/answers.py` measures both.
        separate_answer_call: Run `answer` as its own model call after `reason` (a capable or
            remote model); off, one generation serves both (cheaper with a small local model).
        support_quote: After a generated answer that verification kept, also quote the passage
            sentences that best answer the question (the quote the `quote` node would give,
            when it reaches the relevance bar), marked as a quote with its page: the support
            agent sees the manual's own words beside the model's. Off: the verified sentences
            alone.
        quote_first: Which quote candidate is tried first, each shown only if it reaches the
            relevance bar: `"ranker"` (the model-free sentence ranker's quote, the model's
            selection as the fallback) or `"model"` (the sentences the model selected by
            number first). Whether a quote is shown is the same either way. The ranker goes
            first because the adapter's selections score below it on dev (docs/agent.md).
        model_check: After the word-level checks, ask the model of `llm`, one short call per
            kept sentence, whether the passage sentences that support it state it
            (`agent.prompts.MODEL_CHECK_PROMPT`); a sentence it does not answer "yes" for is
            removed (`agent.prompts.NOT_CONFIRMED`). It catches what word checks cannot: the
            passage's words in a relation the passage does not state. Worth it with a capable
            or remote model; the embedded 135M model cannot judge it (docs/agent.md, "The
            model check"). Off by default: the default needs no extra model call.
        model_check_tokens: The tokens each model-check reply may take. The default is
            enough for "yes" or "no". A model that thinks first (`<think>...</think>`, or
            a server that spends reasoning tokens) needs a few hundred; a reply cut off before
            its "yes" confirms nothing.
        embedder: The retrieval embedder, reused to rank passage sentences for a quote (`None`:
            word overlap alone).
        term_weight: A content word's weight in the answer relevance bar, the index's IDF
            (`retrieval.grounding.relevance`; `None`: every word counts the same).
        term_reading: The word the relevance bar reads a question's content word as: a
            misspelling of an indexed word as that word (`retrieval.vocabulary.IndexTerms.read`;
            `None`: every word as written).
        guard: The harmful-request guard; `None` uses the process-wide default (the shipped
            classifier on the bundled embedder, loaded on first use).
        cancel: Set by the caller to stop this run: the graph checks it before every model
            call and between generated tokens and raises `Cancelled` there, where stopping
            leaves the model, the thread pool and the checkpoints whole (`None`: never).
    """

    searcher: Searcher
    llm: ChatBackend
    top_k: int = 5
    max_contexts: int = 3
    rerank: Literal["off", "best_first", "select"] = "select"
    passage_words: int = PASSAGE_WORDS
    passage_tokens: int = PASSAGE_TOKENS
    min_similarity: float = DEFAULT_MIN_SIMILARITY
    min_overlap: float = DEFAULT_MIN_OVERLAP
    overlap_floor: float = DEFAULT_OVERLAP_FLOOR
    max_rewrites: int = 1
    rewrite_with_llm: bool = False
    history_turns: int = 0
    max_new_tokens: int = 256
    faq: FaqMatcher | None = None
    answer_prefix: str = "Reasoning:"
    answer_mode: Literal["generate", "extract"] = "generate"
    separate_answer_call: bool = False
    support_quote: bool = True
    quote_first: Literal["ranker", "model"] = "ranker"
    model_check: bool = False
    model_check_tokens: int = MODEL_CHECK_MAX_NEW_TOKENS
    embedder: Embedder | None = None
    term_weight: Callable[[str], float] | None = None
    term_reading: Callable[[str], str] | None = None
    guard: Guard | None = None
    cancel: threading.Event | None = None

    def __post_init__(self) -> None:
        at_least("top_k", self.top_k)
        at_least("max_contexts", self.max_contexts)
        at_least("max_new_tokens", self.max_new_tokens)
        if not -1.0 <= self.overlap_floor <= self.min_similarity <= 1.0:
            raise UsageError(
                f"thresholds must satisfy -1 <= overlap_floor ({self.overlap_floor}) <= "
                f"min_similarity ({self.min_similarity}) <= 1"
            )
        if not 0.0 < self.min_overlap <= 1.0:
            raise UsageError(f"min_overlap ({self.min_overlap}) must be in (0, 1]")
        if self.passage_words < 0:
            raise UsageError(f"passage_words ({self.passage_words}) must be 0 (whole passages) "
                             f"or more")
        if self.passage_tokens < 0:
            raise UsageError(f"passage_tokens ({self.passage_tokens}) must be 0 (no budget) "
                             f"or more")
        at_least("model_check_tokens", self.model_check_tokens)
        if self.max_rewrites < 0:
            raise UsageError(f"max_rewrites ({self.max_rewrites}) must be 0 or more")
        for name, choices in _choices().items():  # rerank, answer_mode, quote_first
            value = getattr(self, name)
            if value not in choices:
                raise UsageError(f"{name} ({value!r}) must be one of {', '.join(choices)}")


@cache
def _choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of each `Literal` field of `Context`, from its annotations."""
    return {name: get_args(hint) for name, hint in get_type_hints(Context).items()
            if get_origin(hint) is Literal}
