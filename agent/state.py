"""Agent state, reducers and the structured result handed to the CLI and to eval.

- `InputState`: what a caller passes to the graph (one question).
- `State`: the graph's internal state. `messages` (the conversation) accumulates across turns
  through its reducer and is what the SQLite checkpointer keeps per thread; every other key is
  per-turn and reset by the first node.
- `AgentAnswer` / `FaqMatch`: the structured result shared by the CLI and eval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, TypedDict

from retrieval.types import Citation, Hit


def add_messages(left: list[dict] | None, right: list[dict] | None) -> list[dict]:
    """Reducer for the conversation: append new turns to the old ones."""
    return [*(left or []), *(right or [])]


class InputState(TypedDict):
    """What the caller provides for one turn."""

    question: str


class State(InputState, total=False):
    """Internal graph state.

    Attributes:
        messages: Conversation so far, `{"role", "content"}` dicts; user turns also carry
            `"standalone"` (the rewritten question). Persisted per thread.
        standalone: The question rewritten to stand alone (follow-ups resolved).
        query: The search query of the latest retrieval.
        rewrites: How many times the query was rewritten after grading found nothing.
        hits: Passages of the latest retrieval, best first.
        contexts: Passages kept by grading, in prompt order.
        faq_match: The matching past ticket, or `None`.
        raw: The model's raw output.
        answer: Final answer text.
        reasoning: The model's reasoning part.
        citations: Citations kept after filtering.
        abstained: The documentation does not cover the question.
        refused: The request was refused as harmful.
        timings: Seconds per stage.
    """

    messages: Annotated[list[dict], add_messages]
    standalone: str
    query: str
    rewrites: int
    hits: list[Hit]
    contexts: list[Hit]
    faq_match: FaqMatch | None
    raw: str
    answer: str
    reasoning: str
    citations: list[Citation]
    abstained: bool
    refused: bool
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
        }
