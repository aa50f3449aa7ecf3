"""Agent state, reducers and the structured result handed to the CLI and to eval.

- `InputState`: what a caller passes to the graph (one question).
- `State`: the graph's internal state. `messages` (the conversation) accumulates across turns
  through its reducer and is what the SQLite checkpointer keeps per thread; every other key is
  per-turn and reset by the first node.
- `AgentAnswer` / `FaqMatch` / `Claim`: the structured result shared by the CLI, the REST
  service and eval.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Annotated, Literal, TypedDict

from retrieval.types import Citation, Hit

# How an answer was produced (`AgentAnswer.mode`):
# - generated: the model's own words, every kept sentence verified against a passage;
# - quoted: no generated sentence survived verification, so the manual's own best sentences are
#   shown verbatim as a marked quote with their page;
# - abstained: nothing relevant was retrieved (the documentation does not cover the question);
# - refused: the request was refused by the guard or the model (harmful, off-limits).
Mode = Literal["generated", "quoted", "abstained", "refused"]
MODES: tuple[str, ...] = ("generated", "quoted", "abstained", "refused")


class InputState(TypedDict):
    """What the caller provides for one turn."""

    question: str


class State(InputState, total=False):
    """Internal graph state. Each per-turn key is written by one node (named in brackets).

    Attributes:
        messages: Conversation so far, `{"role", "content"}` dicts; user turns also carry
            `"standalone"` (the rewritten question). Persisted per thread. [final nodes]
        standalone: The question rewritten to stand alone (follow-ups resolved). [contextualize]
        query: The search query of the latest retrieval. [contextualize, rewrite_query]
        rewrites: How many times the query was rewritten after grading found nothing.
        hits: Passages of the latest retrieval, best first. [retrieve]
        contexts: Passages kept by grading, in prompt order. [grade]
        faq_match: The matching past ticket, or `None`. [match_faq]
        raw: The model's raw output (reasoning, quote, answer, sources). [reason, answer]
        reasoning: The model's reasoning part (its chain of thought). [reason]
        selection: `(passage, sentence)` numbers the model quoted (1-based; format v2's
            `Quote` part), in the whole passages' numbering (the prompt may show a window of
            each), unchecked otherwise. [reason]
        draft: The model's answer text before verification ("" when it abstained). [answer]
        hints: 1-based numbers of the passages the model cited (hints for verify). [answer]
        claims: The sentences shown to the user, each with its support. [verify, quote]
        removed_claims: Draft sentences that verification removed, with why. [verify]
        answer: Final answer text. [verify, quote, abstain, refuse, escalate]
        mode: How the answer was produced (`Mode`). [verify, quote, abstain, refuse, escalate]
        citations: Citations of the passages that support the shown sentences (recomputed
            from support; the model's labels are only hints). [verify, quote]
        abstain_reason: Why the agent abstained ("" otherwise). [grade, quote]
        abstained: The documentation does not cover the question. [abstain]
        refused: The request was refused as harmful. [guard, answer, refuse, escalate]
        guard: The guard's verdict when it refused (`category`, `layer`, `score`), else
            `None`. [guard]
        timings: Seconds per stage.
    """

    messages: Annotated[list[dict], operator.add]
    standalone: str
    query: str
    rewrites: int
    hits: list[Hit]
    contexts: list[Hit]
    faq_match: FaqMatch | None
    raw: str
    reasoning: str
    selection: list[tuple[int, int]]
    draft: str
    hints: list[int]
    claims: list[Claim]
    removed_claims: list[Claim]
    answer: str
    mode: Mode
    citations: list[Citation]
    abstain_reason: str
    abstained: bool
    refused: bool
    guard: dict | None
    timings: dict[str, float]


@dataclass
class FaqMatch:
    """The most similar past ticket, shown beside an answer when above the threshold."""

    question: str
    answer: str
    similarity: float
    reason: str
    source: str
    page: int | None = None
    ticket_id: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready view."""
        return dict(self.__dict__)


@dataclass
class Claim:
    """One sentence of an answer and whether a retrieved passage supports it.

    Attributes:
        text: The sentence as shown (or as removed).
        supported: Whether verification found a passage that supports it.
        citation: The supporting passage's citation (`None` when unsupported).
        passage: 1-based number of the supporting passage in `AgentAnswer.contexts`, or `None`.
        evidence: The sentence of that passage that supports the claim (for highlighting).
        reason: Why the claim was removed ("" when supported).
        quoted: A sentence of the passage shown verbatim as a quote, not the model's words.
        also: The citations of the other passages that support it by the same rules (the
            manual says it on more than one page); cited after the first ones.
    """

    text: str
    supported: bool
    citation: Citation | None = None
    passage: int | None = None
    evidence: str = ""
    reason: str = ""
    quoted: bool = False
    also: tuple[Citation, ...] = ()

    def to_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "text": self.text, "supported": self.supported,
            "citation": self.citation.to_dict() if self.citation else None,
            "passage": self.passage, "evidence": self.evidence, "reason": self.reason,
            "quoted": self.quoted, "also": [c.to_dict() for c in self.also],
        }


@dataclass
class AgentAnswer:
    """What one question produced: the contract between the agent, the CLI and eval.

    Attributes:
        question: The question as asked.
        answer: Final answer text (the abstain or refusal text when applicable).
        reasoning: The chain of thought in the shared format (may be empty).
        citations: Citations kept after filtering to passages actually retrieved.
        contexts: The passages given to the model (after grading), in prompt order.
        abstained: The agent said the documentation does not cover the question.
        refused: The request was refused as harmful.
        faq_match: The matching past ticket, or `None`.
        timings: Seconds per stage (`retrieve`, `generate`, `total`, ...).
        mode: How the answer was produced (see `Mode`).
        claims: The sentences shown to the user, each with its supporting passage.
        removed_claims: Sentences of the model's draft that verification removed, with why.
        raw: The model's raw output ("" when the model was not called), so eval can tell "the
            model abstained" from "verification removed everything".
        answer_id: Unique id of this answer (feedback refers to it).
        guard: The guard's verdict when it fired (`category`, `layer`, `score`), else `None`.
    """

    question: str
    answer: str
    reasoning: str = ""
    citations: list[Citation] = field(default_factory=list)
    contexts: list[Hit] = field(default_factory=list)
    abstained: bool = False
    refused: bool = False
    faq_match: FaqMatch | None = None
    timings: dict[str, float] = field(default_factory=dict)
    mode: Mode = "generated"
    claims: list[Claim] = field(default_factory=list)
    removed_claims: list[Claim] = field(default_factory=list)
    raw: str = ""
    answer_id: str = ""
    guard: dict | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode ({self.mode!r}) must be one of {', '.join(MODES)}")

    def to_dict(self) -> dict:
        """The `python -m agent ask --json` object."""
        return {
            "question": self.question,
            "answer": self.answer,
            "reasoning": self.reasoning,
            "citations": [
                {"source": c.source, "page": c.page, "section": c.section} for c in self.citations
            ],
            "contexts": [
                {"text": h.text, **h.citation.to_dict(), "score": h.score} for h in self.contexts
            ],
            "abstained": self.abstained,
            "refused": self.refused,
            "faq_match": self.faq_match.to_dict() if self.faq_match else None,
            "timings": self.timings,
            "mode": self.mode,
            "claims": [c.to_dict() for c in self.claims],
            "removed_claims": [c.to_dict() for c in self.removed_claims],
            "raw": self.raw,
            "answer_id": self.answer_id,
            "guard": self.guard,
        }
