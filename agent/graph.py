"""The agent graph: guard -> contextualize -> FAQ match -> retrieve -> grade -> answer or abstain.

    guard ──harmful──> refuse
      │  └──self-harm──> escalate (a supportive reply that points to human help)
      │
    contextualize (follow-ups rewritten with the conversation)
      │
    match_faq -> retrieve -> grade ──relevant passages──> generate
                    ^          │
                    │          ├──none, rewrites left──> rewrite_query ─┐
                    └──────────┼────────────────────────────────────────┘
                               └──none, no rewrites left──> abstain

Grading does not ask the model: it keeps passages whose cosine similarity to the query (from
retrieval) reaches `Context.min_similarity`, or that share most of the question's content words
while staying above `Context.overlap_floor`. A 135M model cannot grade relevance reliably; these
signals can, and they are cheap.

`generate` streams the model's tokens to `stream_mode="custom"` listeners (the CLI), parses
the answer in the shared format, drops citations of passages that were not retrieved, and turns
an answer left with no support into the abstain answer. Small models often forget the
`Sources:` line; then the answer is attributed to the passage its reasoning points at ("[2]",
"passage 2", or a quoted sentence), else to the kept passage that holds most of the answer's
words, and only if none qualifies does it abstain. Passages that look like instructions to the
assistant are shown to the model as plain text inside the numbered passages (never in the system
prompt) and are never used as fallback support.
"""

from __future__ import annotations

import re
import time
from pathlib import PurePath
from typing import Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agent.context import Context
from agent.guards import SELF_HARM, SELF_HARM_ANSWER, default_guard
from agent.prompts import (
    CONTEXTUALIZE_PROMPT,
    REWRITE_QUERY_PROMPT,
    content_words,
    contextualize as keyword_contextualize,
    is_follow_up,
    keyword_query,
    lexical_overlap,
    looks_like_injection,
)
from agent.state import InputState, State
from finetune.format import ABSTAIN_ANSWER, REFUSAL_ANSWER, build_messages, parse_answer
from retrieval.types import Citation, Hit

# Fraction of the answer's content words a passage must hold to be its fallback source.
FALLBACK_MIN_OVERLAP = 0.5
# A reply that already starts with a section label is complete, not a continuation.
_SECTION_START = re.compile(r"\s*(?:reasoning|answer|sources?)\s*:", re.IGNORECASE)
_PER_TURN_RESET = {
    "standalone": "", "query": "", "rewrites": 0, "hits": [], "contexts": [], "faq_match": None,
    "raw": "", "answer": "", "reasoning": "", "citations": [], "abstained": False,
    "refused": False, "guard": None,
}


def _timed(state: State, key: str, start: float) -> dict[str, float]:
    timings = dict(state.get("timings") or {})
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - start
    return timings


def _turn(state: State, answer: str, citations: list[Citation] = ()) -> list[dict]:
    """The two messages one turn adds to the conversation."""
    return [
        {"role": "user", "content": state["question"],
         "standalone": state.get("standalone") or state["question"]},
        {"role": "assistant", "content": answer,
         "citations": [f"[{c.label()}]" for c in citations]},
    ]


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), "")


# --- nodes -------------------------------------------------------------------------------------


def guard(state: State, runtime: Runtime[Context]) -> dict:
    """Reset the per-turn keys and judge the request (rules, then classifier) before any search."""
    start = time.perf_counter()
    verdict = (runtime.context.guard or default_guard()).check(state["question"])
    return {**_PER_TURN_RESET, "refused": verdict.harmful,
            "guard": verdict.to_dict() if verdict.harmful else None,
            "timings": {"guard": time.perf_counter() - start}}


def refuse(state: State, runtime: Runtime[Context]) -> dict:
    """Answer a harmful request with the fixed refusal."""
    return {"answer": REFUSAL_ANSWER, "refused": True, "messages": _turn(state, REFUSAL_ANSWER)}


def escalate(state: State, runtime: Runtime[Context]) -> dict:
    """Answer a self-harm request with support and human help instead of the product refusal.

    It stays a refusal (`refused`, mode "refused": nothing is searched or generated);
    `guard["category"] == "self-harm"` tells a help desk to hand the conversation to a person.
    """
    return {"answer": SELF_HARM_ANSWER, "refused": True,
            "messages": _turn(state, SELF_HARM_ANSWER)}


def contextualize(state: State, runtime: Runtime[Context]) -> dict:
    """Rewrite a follow-up question with the conversation so that it stands alone."""
    question = state["question"].strip()
    previous = [m for m in state.get("messages") or [] if m["role"] == "user"]
    if not previous or not is_follow_up(question):
        return {"standalone": question, "query": question}
    if runtime.context.rewrite_with_llm:
        history = "\n".join(
            f"{m['role']}: {m['content']}" for m in (state.get("messages") or [])[-4:]
        )
        prompt = CONTEXTUALIZE_PROMPT.format(history=history, question=question)
        reply = runtime.context.llm.complete([{"role": "user", "content": prompt}],
                                             max_new_tokens=64)
        standalone = _first_line(reply) or question
    else:
        standalone = keyword_contextualize(question, previous[-1].get("standalone", ""))
    return {"standalone": standalone, "query": standalone}


def match_faq(state: State, runtime: Runtime[Context]) -> dict:
    """Look for a past ticket that this question repeats."""
    if runtime.context.faq is None:
        return {}
    start = time.perf_counter()
    found = runtime.context.faq.match(state["standalone"])
    return {"faq_match": found, "timings": _timed(state, "faq", start)}


def retrieve(state: State, runtime: Runtime[Context]) -> dict:
    """Hybrid search for the current query."""
    start = time.perf_counter()
    hits = runtime.context.searcher.search(state["query"], k=runtime.context.top_k)
    return {"hits": hits, "timings": _timed(state, "retrieve", start)}


def is_relevant(hit: Hit, question: str, ctx: Context) -> bool:
    """Grading rule: similar enough, or lexically close enough and not far off."""
    similarity = hit.similarity if hit.similarity is not None else -1.0
    if similarity >= ctx.min_similarity:
        return True
    return similarity >= ctx.overlap_floor and lexical_overlap(question, hit.text) >= ctx.min_overlap


def grade(state: State, runtime: Runtime[Context]) -> dict:
    """Keep the retrieved passages that are relevant to the question."""
    ctx = runtime.context
    kept = [h for h in state["hits"] if is_relevant(h, state["standalone"], ctx)]
    return {"contexts": kept[: ctx.max_contexts]}


def rewrite_query(state: State, runtime: Runtime[Context]) -> dict:
    """Rewrite the search query once after grading kept nothing."""
    question = state["standalone"]
    if runtime.context.rewrite_with_llm:
        prompt = REWRITE_QUERY_PROMPT.format(question=question)
        reply = runtime.context.llm.complete([{"role": "user", "content": prompt}],
                                             max_new_tokens=32)
        query = _first_line(reply) or keyword_query(question)
    else:
        query = keyword_query(question)
    return {"query": query, "rewrites": state.get("rewrites", 0) + 1}


def abstain(state: State, runtime: Runtime[Context]) -> dict:
    """Say that the documentation does not cover the question."""
    return {"answer": ABSTAIN_ANSWER, "abstained": True, "contexts": [],
            "messages": _turn(state, ABSTAIN_ANSWER)}


def filter_citations(cited: list[Citation], contexts: list[Hit]) -> list[Citation]:
    """Keep the citations that point at a passage given to the model, as that passage's citation.

    Labels are compared by file name and page (the model writes `[file.pdf p.3]`); a label
    without a page matches a passage of that file only when the file has a single such passage.
    """
    kept: list[Citation] = []
    for c in cited:
        name = PurePath(c.source).name
        same_file = [h.citation for h in contexts if PurePath(h.citation.source).name == name]
        if c.page is not None:
            match = next((x for x in same_file if x.page == c.page), None)
        else:
            match = same_file[0] if len(set(same_file)) == 1 else None
        if match is not None and match not in kept:
            kept.append(match)
    return kept


def fallback_support(reasoning: str, answer: str, contexts: list[Hit]) -> list[Citation]:
    """Attribute an answer that named no sources, or return `[]` when nothing supports it.

    In order: passages the text points at by number ("[2]", "passage 2"); a passage containing
    a quoted sentence (4+ words) from the reasoning; the passage holding at least
    `FALLBACK_MIN_OVERLAP` of the answer's content words (the best one). Instruction-like
    passages never count as support.
    """
    usable = {i: h for i, h in enumerate(contexts, start=1) if not looks_like_injection(h.text)}
    text = f"{reasoning}\n{answer}"
    numbers = re.findall(r"\[(\d+)\]|passage\s+\[?(\d+)", text, re.IGNORECASE)
    pointed = [usable[int(a or b)] for a, b in numbers if int(a or b) in usable]
    if pointed:
        return list(dict.fromkeys(h.citation for h in pointed))
    for quote in re.findall(r"[\"“']([^\"”']{12,})[\"”']", reasoning):
        words = content_words(quote)
        if len(words) < 4:
            continue
        for h in usable.values():
            if lexical_overlap(quote, h.text) >= 0.9:
                return [h.citation]
    if content_words(answer):
        best = max(usable.values(), key=lambda h: lexical_overlap(answer, h.text), default=None)
        if best is not None and lexical_overlap(answer, best.text) >= FALLBACK_MIN_OVERLAP:
            return [best.citation]
    return []


def generate(state: State, runtime: Runtime[Context]) -> dict:
    """Reason over the numbered passages and answer with citations (streamed)."""
    ctx = runtime.context
    start = time.perf_counter()
    history = []
    if ctx.history_turns:
        for m in (state.get("messages") or [])[-2 * ctx.history_turns:]:
            history.append({"role": m["role"], "content": m.get("standalone", m["content"])})
    messages = build_messages(state["standalone"], state["contexts"], history)
    prefix = ctx.answer_prefix
    if prefix:
        # Prefilled assistant turn: the reply continues it (see ChatBackend).
        messages.append({"role": "assistant", "content": prefix})
        runtime.stream_writer(prefix)
    pieces = []
    for piece in ctx.llm.stream(messages, max_new_tokens=ctx.max_new_tokens):
        pieces.append(piece)
        runtime.stream_writer(piece)
    raw = "".join(pieces)
    if prefix and not _SECTION_START.match(raw):
        raw = prefix + raw
    timings = _timed(state, "generate", start)
    parsed = parse_answer(raw)
    if not parsed.well_formed and parsed.reasoning:
        # The model wrote only free text after the prefilled label: that text is its answer.
        parsed.answer = parsed.reasoning
    result = {"raw": raw, "reasoning": parsed.reasoning, "timings": timings}
    if parsed.refused:
        return {**result, "answer": REFUSAL_ANSWER, "refused": True,
                "messages": _turn(state, REFUSAL_ANSWER)}
    if parsed.abstained or not parsed.answer.strip():
        return {**result, "answer": ABSTAIN_ANSWER, "abstained": True,
                "messages": _turn(state, ABSTAIN_ANSWER)}
    citations = filter_citations(parsed.citations, state["contexts"])
    if not citations and not parsed.citations:
        citations = fallback_support(parsed.reasoning, parsed.answer, state["contexts"])
    if not citations:
        # Every source it named was never retrieved, or nothing retrieved supports it.
        return {**result, "answer": ABSTAIN_ANSWER, "abstained": True,
                "messages": _turn(state, ABSTAIN_ANSWER)}
    return {**result, "answer": parsed.answer.strip(), "citations": citations,
            "messages": _turn(state, parsed.answer.strip(), citations)}


# --- routing -----------------------------------------------------------------------------------


def route_after_guard(state: State) -> Literal["refuse", "escalate", "contextualize"]:
    """Self-harm goes to the supportive escalation, other harm to the refusal, the rest on."""
    verdict = state.get("guard")
    if not state["refused"]:
        if verdict is not None:
            raise RuntimeError(f"guard verdict {verdict} on a request it let through")
        return "contextualize"
    if verdict is None:
        raise RuntimeError("refused before retrieval without a guard verdict: wiring is broken")
    return "escalate" if verdict["category"] == SELF_HARM else "refuse"


def route_after_grade(state: State, runtime: Runtime[Context]) -> Literal[
    "generate", "rewrite_query", "abstain"
]:
    """Answer from relevant passages, else rewrite the query (once), else abstain."""
    if state["contexts"]:
        return "generate"
    rewrites = state.get("rewrites", 0)
    if rewrites < runtime.context.max_rewrites:
        return "rewrite_query"
    if rewrites == runtime.context.max_rewrites:
        return "abstain"
    raise RuntimeError(f"rewrites ({rewrites}) exceeded max_rewrites: graph wiring is broken")


# --- wiring ------------------------------------------------------------------------------------
# guard decides refuse / escalate (self-harm) vs. answer; the answer path resolves follow-ups,
# checks the FAQ history, then loops retrieve -> grade (-> rewrite_query -> retrieve) until
# passages survive grading or the rewrites are used up.
builder = StateGraph(State, context_schema=Context, input_schema=InputState)
builder.add_node("guard", guard)
builder.add_node("refuse", refuse)
builder.add_node("escalate", escalate)
builder.add_node("contextualize", contextualize)
builder.add_node("match_faq", match_faq)
builder.add_node("retrieve", retrieve)
builder.add_node("grade", grade)
builder.add_node("rewrite_query", rewrite_query)
builder.add_node("generate", generate)
builder.add_node("abstain", abstain)
builder.add_edge(START, "guard")
builder.add_conditional_edges("guard", route_after_guard)
builder.add_edge("contextualize", "match_faq")
builder.add_edge("match_faq", "retrieve")
builder.add_edge("retrieve", "grade")
builder.add_conditional_edges("grade", route_after_grade)
builder.add_edge("rewrite_query", "retrieve")
builder.add_edge("refuse", END)
builder.add_edge("escalate", END)
builder.add_edge("generate", END)
builder.add_edge("abstain", END)


def build_graph(checkpointer=None):
    """Compile the graph, with a checkpointer (conversation memory) when given."""
    return builder.compile(checkpointer=checkpointer)


graph = build_graph()
