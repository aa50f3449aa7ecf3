"""FAQ match: does a new ticket repeat a solved one from the ticket history?

The FAQ rows are indexed as chunks of type `"faq"` (by `python -m ingest` from a CSV/JSONL
history). For a new question we search only those chunks; when the best one's cosine similarity
reaches the threshold, the past question and its resolution are shown beside the answer with the
similarity and a one-line reason. The default threshold is calibrated by `bench/faq_match.py` on
the history's own paraphrase groups (questions that share one answer), not on dev questions.
"""

from __future__ import annotations

import re

from agent.prompts import content_words
from agent.state import FaqMatch
from retrieval.types import Hit, Searcher

# Calibrated by `python bench/faq_match.py --calibrate` (see notes/agent.md).
DEFAULT_FAQ_THRESHOLD = 0.60

_QA_RE = re.compile(
    r"^\s*(?:Q(?:uestion)?)\s*[:.]\s*(?P<q>.+?)\s*\n+\s*(?:A(?:nswer)?)\s*[:.]\s*(?P<a>.+)\s*$",
    re.IGNORECASE | re.DOTALL,
)


def split_faq(hit: Hit) -> tuple[str, str]:
    """The past question and its answer from an FAQ chunk.

    Uses the chunk's `question`/`answer` metadata when ingest stored them, else a
    `Question: ... / Answer: ...` (or `Q:`/`A:`) layout, else the first line as the question.
    """
    meta = hit.chunk.metadata
    if meta.get("question") and meta.get("answer"):
        return str(meta["question"]), str(meta["answer"])
    m = _QA_RE.match(hit.text)
    if m:
        return m.group("q").strip(), m.group("a").strip()
    first, _, rest = hit.text.strip().partition("\n")
    return first.strip(), rest.strip()


class FaqMatcher:
    """Find the most similar past ticket.

    Args:
        searcher: Retrieval over an index holding FAQ chunks (`type == "faq"`).
        threshold: Minimum cosine similarity for a match.
        candidates: FAQ hits considered per question.
    """

    def __init__(
        self, searcher: Searcher, threshold: float = DEFAULT_FAQ_THRESHOLD, candidates: int = 5
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"faq threshold ({threshold}) must be within [-1, 1]")
        if candidates < 1:
            raise ValueError(f"candidates ({candidates}) must be at least 1")
        self.searcher = searcher
        self.threshold = threshold
        self.candidates = candidates

    def best(self, question: str) -> Hit | None:
        """The best FAQ hit for `question` regardless of the threshold, or `None`."""
        hits = self.searcher.search(question, k=self.candidates, where={"type": "faq"})
        scored = [h for h in hits if h.similarity is not None]
        # Similarity ranks past tickets; the fused rank only breaks exact ties.
        return max(scored, key=lambda h: h.similarity, default=None)

    def match(self, question: str) -> FaqMatch | None:
        """The matching past ticket when its similarity reaches the threshold, else `None`."""
        hit = self.best(question)
        if hit is None or hit.similarity < self.threshold:
            return None
        past_question, answer = split_faq(hit)
        shared = [w for w in dict.fromkeys(content_words(question))
                  if w in set(content_words(past_question))]
        reason = f"similar past ticket (cosine {hit.similarity:.2f})"
        if shared:
            reason += f"; shares {', '.join(shared[:6])}"
        return FaqMatch(
            question=past_question,
            answer=answer,
            similarity=round(float(hit.similarity), 4),
            reason=reason,
            source=hit.citation.source,
            page=hit.citation.page,
            ticket_id=str(hit.chunk.metadata.get("faq_id") or hit.chunk.id),
        )
