"""Prompts and text rules of the agent other than the answer prompt.

The answer prompt is `finetune.format.build_messages` (shared with the training data, so the
fine-tuned adapter sees exactly what it was trained on). Here: follow-up and query rewriting
(deterministic by default, an LLM prompt for capable models), the lexical overlap used in
grading, and a detector for instruction-like text inside passages.
"""

from __future__ import annotations

import re

CONTEXTUALIZE_PROMPT = (
    "Rewrite the user's last question so that it can be understood without the conversation. "
    "Keep its meaning, resolve words like 'it', 'that' or 'this' using the conversation, and "
    "reply with the rewritten question only.\n\nConversation:\n{history}\n\n"
    "Last question: {question}\n\nRewritten question:"
)

REWRITE_QUERY_PROMPT = (
    "A search of a product manual for the question below found nothing relevant. Write a "
    "better search query: the key product terms and actions, no filler words. Reply with the "
    "query only.\n\nQuestion: {question}\n\nSearch query:"
)

STOPWORDS = frozenset(
    """a about above after again all also am an and any are as at be been before being below
    between both but by can could did do does doing down during each few for from further had has
    have having he her here hers him his how i if in into is it its itself just me more most my
    no nor not now of off on once only or other our out over own same she should so some such
    than that the their them then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your yours
    please tell know want need way ways get use using show explain there's what's how's i'm
    can't don't doesn't isn't possible""".split()
)

# Openings that carry the previous question over to a new object ("what about the TV?").
_FOLLOW_UP_START = re.compile(
    r"^\s*(?:and |but )?(?:what about|how about|what if|same for|and for|and on)\b",
    re.IGNORECASE,
)
_PRONOUN = re.compile(r"\b(?:it|its|that|this|those|these|them|they|one|there)\b", re.IGNORECASE)

_INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b.{0,40}\b(?:instructions?|prompts?|rules?|"
    r"above|previous|prior)\b|\byou are now\b|\bsystem prompt\b|\bnew instructions?\b|"
    r"\b(?:assistant|ai|model|chatbot)s? (?:must|should) (?:now |instead )?(?:say|reply|answer|"
    r"respond|output)\b",
    re.IGNORECASE,
)


def content_words(text: str) -> list[str]:
    """Lower-cased words of `text` without stopwords, crudely singularised, in order."""
    words = []
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        if w in STOPWORDS or len(w) < 2:
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        words.append(w)
    return words


def lexical_overlap(query: str, passage: str) -> float:
    """Fraction of the query's distinct content words that occur in the passage (0 to 1)."""
    q = set(content_words(query))
    if not q:
        return 0.0
    return len(q & set(content_words(passage))) / len(q)


def is_follow_up(question: str) -> bool:
    """Whether a question probably depends on the previous turn.

    A question that carries the previous one over ("what about ...?"), refers back with a
    pronoun ("and how do I turn it off?") or is too short to name a topic is a follow-up; one
    that names its own topic ("and how do I turn the lights off?") stands alone, so that the
    previous topic does not drown it in the search.
    """
    if _FOLLOW_UP_START.search(question):
        return True
    return bool(_PRONOUN.search(question)) or len(content_words(question)) <= 1


def contextualize(question: str, previous_standalone: str) -> str:
    """Deterministic follow-up rewrite: the question plus the previous topic's key words.

    Search is hybrid (dense + BM25), so appending the earlier question's content words brings
    back the passages about that topic while the new words pick the right part of it.
    """
    new = set(content_words(question))
    topic = [w for w in dict.fromkeys(content_words(previous_standalone)) if w not in new]
    if not topic:
        return question
    return f"{question.strip()} ({' '.join(topic)})"


def keyword_query(question: str) -> str:
    """Deterministic query rewrite after a failed search: the content words only.

    Question phrasing ("how do I", "is it possible to") dilutes both the dense vector and BM25;
    the bare key terms often find the passage the full question missed.
    """
    words = list(dict.fromkeys(content_words(question)))
    return " ".join(words) or question


def looks_like_injection(text: str) -> bool:
    """Whether a passage contains instructions aimed at the assistant ("ignore previous ...")."""
    return bool(_INJECTION.search(text))
