"""FAQ match: does a new ticket repeat a solved one from the ticket history?

The FAQ rows are indexed as chunks of type `"faq"` (by `python -m ingest` from a CSV/JSONL
history). For a new question we search only those chunks and score each candidate ticket as

    score = cosine(question, ticket chunk) + QUESTION_WEIGHT * word overlap(question, past question)

The cosine compares against the whole ticket (question and answer), which ranks tickets on the
right topic; the overlap of the two questions' content words (Jaccard) then prefers the ticket
that asks the same thing. When the best score reaches the threshold, the past question and its
resolution are shown beside the answer with the cosine similarity and a one-line reason. Weight
and threshold are calibrated by `bench/faq_match.py` on the history's own paraphrase groups
(questions that share one answer), not on dev questions: on faq_history the question overlap
lifts accuracy@1 from 0.79 to 0.84 and the F1 of the shown matches from 0.65 to 0.75.
"""

from __future__ import annotations

import re

from agent.state import FaqMatch
from retrieval.text import content_words
from retrieval.types import Hit, Searcher
from retrieval.errors import UsageError, at_least

# Calibrated by `python bench/faq_match.py` on faq_history's paraphrase groups: the lowest
# threshold within 0.025 F1 of the best (1.01), since a shown match is advisory (docs/agent.md).
DEFAULT_FAQ_THRESHOLD = 0.88
QUESTION_WEIGHT = 0.5

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
        threshold: Minimum match score (cosine + `QUESTION_WEIGHT` x question overlap).
        candidates: FAQ hits considered per question.
    """

    def __init__(
        self, searcher: Searcher, threshold: float = DEFAULT_FAQ_THRESHOLD, candidates: int = 5
    ) -> None:
        if not -1.0 <= threshold <= 1.0 + QUESTION_WEIGHT:
            raise UsageError(
                f"faq threshold ({threshold}) must be within [-1, {1.0 + QUESTION_WEIGHT}]"
            )
        at_least("candidates", candidates)
        self.searcher = searcher
        self.threshold = threshold
        self.candidates = candidates

    @staticmethod
    def score(question: str, hit: Hit) -> float:
        """Match score of a past ticket: cosine plus weighted question word overlap."""
        a = set(content_words(question))
        b = set(content_words(split_faq(hit)[0]))
        overlap = len(a & b) / len(a | b) if a | b else 0.0
        return (hit.similarity if hit.similarity is not None else -1.0) + QUESTION_WEIGHT * overlap

    def best(self, question: str) -> tuple[Hit, float] | None:
        """The best FAQ hit for `question` and its score, regardless of the threshold."""
        hits = self.searcher.search(question, k=self.candidates, where={"type": "faq"})
        return max(((h, self.score(question, h)) for h in hits), key=lambda t: t[1], default=None)

    def match(self, question: str) -> FaqMatch | None:
        """The matching past ticket when its score reaches the threshold, else `None`."""
        found = self.best(question)
        if found is None or found[1] < self.threshold:
            return None
        hit, score = found
        past_question, answer = split_faq(hit)
        shared = [w for w in dict.fromkeys(content_words(question))
                  if w in set(content_words(past_question))]
        reason = f"cosine {hit.similarity:.2f}, match score {score:.2f}"
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
