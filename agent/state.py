"""Agent state, reducers and the structured result handed to the CLI and to eval."""

from __future__ import annotations

from dataclasses import dataclass, field

from retrieval.types import Citation, Hit


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
