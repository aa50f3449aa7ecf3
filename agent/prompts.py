"""Prompts and text rules of the agent other than the answer prompt.

The answer prompt is `finetune.format.build_messages` (shared with the training data, so the
fine-tuned adapter sees exactly what it was trained on). Here: follow-up and query rewriting
(deterministic by default, an LLM prompt for capable models), and the optional model check of
verified claims (`MODEL_CHECK_PROMPT`, `Context.model_check`). Words, stop words and overlap come
from `retrieval.text`; the detector for instruction-like passages is
`retrieval.grounding.looks_like_injection`.
"""

from __future__ import annotations

import re

from retrieval.text import content_words, keywords, stem

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

MODEL_CHECK_PROMPT = (
    "You check an answer against a product manual. Reply yes only if the passage states "
    "everything the answer sentence says, with the same steps, names, numbers and relations; "
    "otherwise reply no. Reply with one word.\n\nQuestion: {question}\n\nPassage: {passage}\n\n"
    "Answer sentence: {claim}\n\nDoes the passage state it?"
)
# Tokens the check's reply may take by default: "yes" or "no" and a little slack. A model that
# thinks before it answers needs room for its thinking (`Context.model_check_tokens`).
MODEL_CHECK_MAX_NEW_TOKENS = 4
# Why `verify` removes a claim under `Context.model_check` (the reply follows in brackets).
NOT_CONFIRMED = "the model check did not confirm it from its passage"
_CONFIRMS = re.compile(r"^\W*yes\b", re.IGNORECASE)
# A reasoning model's thinking before its reply (closed: a cut-off one confirms nothing).
_THINKING = re.compile(r"^\s*<think>.*?</think>", re.IGNORECASE | re.DOTALL)

# Openings that carry the previous question over to a new object ("what about the TV?").
_FOLLOW_UP_START = re.compile(
    r"^\s*(?:and |but )?(?:what about|how about|what if|same for|and for|and on)\b",
    re.IGNORECASE,
)
_PRONOUN = re.compile(r"\b(?:it|its|that|this|those|these|them|they|one|there)\b", re.IGNORECASE)


def model_confirms(reply: str) -> bool:
    """Whether a reply to `MODEL_CHECK_PROMPT` confirms the claim: it starts with "yes", after
    a reasoning model's closed `<think>...</think>` block if there is one.

    Anything else (no, an empty or cut-off reply, thinking that never closed, a sentence) is
    not a confirmation: the check is a gate the operator turned on, so only an explicit yes
    lets a claim through.
    """
    return bool(_CONFIRMS.match(_THINKING.sub("", reply, count=1)))


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
    # Unstemmed words go into the query (the embedder reads it); stems decide what is new.
    topic = [w for w in dict.fromkeys(keywords(previous_standalone)) if stem(w) not in new]
    if not topic:
        return question
    return f"{question.strip()} ({' '.join(topic)})"


def keyword_query(question: str) -> str:
    """Deterministic query rewrite after a failed search: the content words only.

    Question phrasing ("how do I", "is it possible to") dilutes both the dense vector and BM25;
    the bare key terms often find the passage the full question missed.
    """
    return " ".join(dict.fromkeys(keywords(question))) or question
