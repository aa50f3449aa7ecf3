"""The agent graph: retrieve, grade, reason, answer, verify; quote, abstain or refuse.

    guard ──harmful──> refuse
      │  └──self-harm──> escalate (a supportive reply that points to human help)
      │
    contextualize (follow-ups rewritten with the conversation)
      │
    match_faq -> retrieve -> grade ──relevant passages──> reason -> answer ──refused──> refuse
                    ^          │                                     │
                    │          ├──none, rewrites left──> rewrite_query
                    └──────────┘                                    verify ──claims kept──> END
                               └──none, no rewrites left──> abstain   │
                                                                     quote ──bar reached──> END
                                                                      └──not reached──> abstain

- **grade** does not ask the model: it keeps passages whose cosine similarity to the query
  reaches `Context.min_similarity`, or that share most of the question's content words while
  staying above `Context.overlap_floor`. A 135M model cannot grade relevance; these signals can.
- **reason** prompts with the shared format (`finetune.format`: sentence-numbered passages, each
  shown as the window of `Context.passage_words` words that best matches the question) and keeps
  the chain of thought (`reasoning`) and the sentences the model quoted (`selection`, in the
  whole passages' numbering). Verification and quotes read the whole passages.
- **answer** takes the answer text (`draft`) and the passages the model cited (`hints`). A small
  model writes reasoning and answer in one generation, which `reason` keeps in `raw`; with
  `Context.separate_answer_call` (a capable or remote model) `reason` stops at the `Answer:`
  label and `answer` asks for the rest in a second call.
- **verify** checks every sentence of the draft against every passage
  (`retrieval.grounding.verify`): unsupported sentences are removed and reported, citations are
  recomputed from the passages that support the kept ones (the model's labels only break ties).
  With `Context.model_check` the model is then asked, per kept sentence, whether its supporting
  passage sentences state it; what it does not confirm is removed.
  Kept sentences that together do not answer the question (`answer_relevance`: the subject
  named, enough of the question's IDF-weighted words) are removed too.
- **quote**: when no sentence survives (or the model abstained, or `Context.answer_mode` is
  `"extract"`), the answer is the passage sentences that best answer the question, verbatim and
  marked as a quote with their page: the ranker's when it reaches the relevance bar, else those
  the model selected by number (`retrieval.grounding.choose_quote`, `Context.quote_first`).
  Below the bar: abstain.

Streaming (`stream_mode="custom"`): the model's tokens go out as `("draft", token)` and the
final nodes write the verified answer (or the quote, the abstain or the refusal text) as
`("answer", text)`. `Assistant.stream` passes on only the answers unless asked for drafts, so
the chat CLI never shows a sentence that verification rejects; the REST service shows drafts
labelled as such (`token` events, `reasoning_content`) and replaces them with the answer.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import PurePath
from typing import Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agent.context import Cancelled, Context
from agent.guards import SELF_HARM, SELF_HARM_ANSWER, default_guard
from agent.prompts import (
    CONTEXTUALIZE_PROMPT,
    MODEL_CHECK_PROMPT,
    NOT_CONFIRMED,
    REWRITE_QUERY_PROMPT,
    contextualize as keyword_contextualize,
    is_follow_up,
    keyword_query,
    model_confirms,
)
from agent.state import Claim, InputState, State
from finetune.format import (
    ABSTAIN_ANSWER,
    REFUSAL_ANSWER,
    Window,
    build_messages,
    estimate_tokens,
    fit_windows,
    parse_answer,
    whole_sentence_numbers,
    window_passages,
)
from retrieval.grounding import (
    ClaimCheck,
    Quote,
    answer_relevance,
    check_claim,
    choose_quote,
    rank_passages,
    verify as verify_claims,
)
from retrieval.text import normalise, overlap
from retrieval.types import Citation, Hit

# A reply that already starts with a section label is complete, not a continuation.
_SECTION_START = re.compile(r"\s*(?:reasoning|quote|answer|sources?)\s*:", re.IGNORECASE)
_ANSWER_LABEL = re.compile(r"^\s*answer\s*:", re.IGNORECASE | re.MULTILINE)
# Passage pointers in the reasoning: "[2]", "passage 2", "passage [2]".
_POINTER = re.compile(r"\[(\d+)\]|passage\s+\[?(\d+)", re.IGNORECASE)
# Tokens the reasoning may take when it stops at the `Answer:` label (extract mode, separate
# answer call): "Reasoning: Passage [2] (<heading>) answers the question.\nQuote: 2.1 2.2" fits.
REASON_MAX_NEW_TOKENS = 96
_PER_TURN_RESET = {
    "standalone": "", "query": "", "rewrites": 0, "hits": [], "contexts": [], "faq_match": None,
    "raw": "", "reasoning": "", "selection": [], "draft": "", "hints": [], "claims": [],
    "removed_claims": [], "answer": "", "citations": [], "abstain_reason": "",
    "abstained": False, "refused": False, "guard": None,
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


def _emit(runtime: Runtime[Context], text: str) -> None:
    """Stream a final (verified) answer to listeners, a sentence at a time."""
    for piece in re.findall(r"\S.*?(?:[.!?]\s+|$)", text, re.DOTALL) or [text]:
        runtime.stream_writer(("answer", piece))


def _stop_if_cancelled(ctx: Context) -> None:
    if ctx.cancel is not None and ctx.cancel.is_set():
        raise Cancelled("the answer was stopped")


def _read(ctx: Context, messages: list[dict], max_new_tokens: int) -> Iterator[str]:
    """The backend's reply stream as a generator that stops between tokens once `ctx.cancel`
    is set (raising `Cancelled`); closing it closes the backend's stream too, whatever
    iterator the backend returns."""
    _stop_if_cancelled(ctx)
    stream = ctx.llm.stream(messages, max_new_tokens=max_new_tokens)
    try:
        for piece in stream:
            _stop_if_cancelled(ctx)
            yield piece
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # stops a local generation early


def _complete(ctx: Context, messages: list[dict], max_new_tokens: int) -> str:
    _stop_if_cancelled(ctx)
    return ctx.llm.complete(messages, max_new_tokens=max_new_tokens)


def prompt_windows(state: State, ctx: Context) -> list[Window]:
    """What the prompt shows of each graded passage (`Context.passage_words`, then trimmed to
    `Context.passage_tokens`). Only the prompt: verification and quotes read the whole
    passages (`state["contexts"]`)."""
    windows = window_passages(state["standalone"], state["contexts"], ctx.passage_words)
    if not ctx.passage_tokens:
        return windows
    count = getattr(ctx.llm, "count_tokens", None) or estimate_tokens
    return fit_windows(state["standalone"], windows, ctx.passage_tokens, count)


def _prompt(state: State, ctx: Context, windows: list[Window] | None = None) -> list[dict]:
    history = []
    if ctx.history_turns:
        for m in (state.get("messages") or [])[-2 * ctx.history_turns:]:
            history.append({"role": m["role"], "content": m.get("standalone", m["content"])})
    return build_messages(state["standalone"], windows or prompt_windows(state, ctx), history)


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
    _emit(runtime, REFUSAL_ANSWER)
    return {"answer": REFUSAL_ANSWER, "refused": True, "mode": "refused",
            "messages": _turn(state, REFUSAL_ANSWER)}


def escalate(state: State, runtime: Runtime[Context]) -> dict:
    """Answer a self-harm request with support and human help instead of the product refusal.

    It stays a refusal (`refused`, mode "refused": nothing is searched or generated);
    `guard["category"] == "self-harm"` tells a help desk to hand the conversation to a person.
    """
    _emit(runtime, SELF_HARM_ANSWER)
    return {"answer": SELF_HARM_ANSWER, "refused": True, "mode": "refused",
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
        reply = _complete(runtime.context, [{"role": "user", "content": prompt}], 64)
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
    return similarity >= ctx.overlap_floor and overlap(question, hit.text) >= ctx.min_overlap


def shown_contexts(kept: list[Hit], question: str, ctx: Context) -> list[Hit]:
    """The graded passages the model sees (`Context.rerank`): the first `ctx.max_contexts` in
    retrieval order, or the `ctx.max_contexts` with the best quote candidates (`rank_passages`),
    best first (`"best_first"`) or in retrieval order (`"select"`)."""
    if ctx.rerank == "off" or len(kept) <= 1 or (
            ctx.rerank == "select" and len(kept) <= ctx.max_contexts):
        return kept[: ctx.max_contexts]  # nothing to choose: no sentence is embedded
    best = rank_passages(question, kept, ctx.embedder)[: ctx.max_contexts]
    return [kept[i] for i in (best if ctx.rerank == "best_first" else sorted(best))]


def grade(state: State, runtime: Runtime[Context]) -> dict:
    """Keep the retrieved passages that are relevant to the question (`shown_contexts`)."""
    ctx = runtime.context
    kept = [h for h in state["hits"] if is_relevant(h, state["standalone"], ctx)]
    reason = "" if kept else "no retrieved passage is relevant to the question"
    return {"contexts": shown_contexts(kept, state["standalone"], ctx), "abstain_reason": reason}


def rewrite_query(state: State, runtime: Runtime[Context]) -> dict:
    """Rewrite the search query once after grading kept nothing."""
    question = state["standalone"]
    if runtime.context.rewrite_with_llm:
        prompt = REWRITE_QUERY_PROMPT.format(question=question)
        reply = _complete(runtime.context, [{"role": "user", "content": prompt}], 32)
        query = _first_line(reply) or keyword_query(question)
    else:
        query = keyword_query(question)
    return {"query": query, "rewrites": state.get("rewrites", 0) + 1}


def reason(state: State, runtime: Runtime[Context]) -> dict:
    """Reason over the numbered passages (chain of thought) and select sentences to quote.

    One generation with a small model (it continues into the answer, kept in `raw` for the
    `answer` node); it stops at the `Answer:` label in extract mode or when the answer is a
    separate call. Nothing is streamed to the user.
    """
    ctx = runtime.context
    start = time.perf_counter()
    windows = prompt_windows(state, ctx)
    messages = _prompt(state, ctx, windows)
    prefix = ctx.answer_prefix
    if prefix:
        # Prefilled assistant turn: the reply continues it (see ChatBackend).
        messages.append({"role": "assistant", "content": prefix})
    stop_at_answer = ctx.answer_mode == "extract" or ctx.separate_answer_call
    budget = min(ctx.max_new_tokens, REASON_MAX_NEW_TOKENS) if stop_at_answer \
        else ctx.max_new_tokens
    pieces: list[str] = []
    first_token = None
    stream = _read(ctx, messages, budget)
    if prefix:
        runtime.stream_writer(("draft", prefix))
    try:
        for piece in stream:
            if first_token is None:
                first_token = time.perf_counter() - start
            pieces.append(piece)
            runtime.stream_writer(("draft", piece))
            if stop_at_answer and _ANSWER_LABEL.search("".join(pieces)):
                break
    finally:
        stream.close()  # stops a local generation early (see _read)
    raw = "".join(pieces)
    if prefix and not _SECTION_START.match(raw):
        raw = prefix + raw
    if stop_at_answer:
        label = _ANSWER_LABEL.search(raw)
        raw = raw[: label.start()].rstrip() if label else raw.rstrip()
    parsed = parse_answer(raw)
    timings = _timed(state, "generate", start)
    if first_token is not None:
        timings["first_token"] = first_token
    # The model numbers the sentences it was shown; quotes read the whole passages.
    return {"raw": raw, "reasoning": parsed.reasoning,
            "selection": whole_sentence_numbers(parsed.quote, windows), "timings": timings}


def cited_passages(reasoning: str, cited: list[Citation], contexts: list[Hit]) -> list[int]:
    """1-based numbers of the passages the model pointed at: by number in its reasoning
    ("[2]", "passage 2") and by label in its sources (file name and page; a label without a
    page matches a file's single passage)."""
    numbers = [int(a or b) for a, b in _POINTER.findall(reasoning)]
    for c in cited:
        name = PurePath(c.source).name
        same_file = [i for i, h in enumerate(contexts, start=1)
                     if PurePath(h.citation.source).name == name]
        if c.page is not None:
            numbers += [i for i in same_file if contexts[i - 1].citation.page == c.page]
        elif len(same_file) == 1:
            numbers += same_file
    return [n for n in dict.fromkeys(numbers) if 1 <= n <= len(contexts)]


def answer(state: State, runtime: Runtime[Context]) -> dict:
    """The model's final text (`draft`) and the passages it claims (`hints`)."""
    ctx = runtime.context
    raw = state["raw"]
    if ctx.answer_mode == "extract":
        return {"draft": "", "hints": cited_passages(state["reasoning"], [], state["contexts"])}
    start = time.perf_counter()
    result: dict = {}
    if ctx.separate_answer_call:
        messages = _prompt(state, ctx)
        continued = f"{raw.rstrip()}\nAnswer:"
        messages.append({"role": "assistant", "content": continued})
        reply = _complete(ctx, messages, ctx.max_new_tokens)
        runtime.stream_writer(("draft", "\nAnswer:" + reply))
        raw = continued + reply
        result = {"raw": raw, "timings": _timed(state, "generate", start)}
    parsed = parse_answer(raw)
    text = parsed.answer.strip()
    if not parsed.well_formed and parsed.reasoning:
        # The model wrote only free text after the prefilled label: that text is its answer.
        text = parsed.reasoning.strip()
    hints = cited_passages(parsed.reasoning, parsed.citations, state["contexts"])
    if parsed.refused:
        return {**result, "refused": True, "draft": "", "hints": hints}
    return {**result, "draft": "" if parsed.abstained else text, "hints": hints}


def as_claim(check: ClaimCheck, contexts: list[Hit]) -> Claim:
    """One verification verdict as the answer's `Claim`, its passage number read in `contexts`."""
    supported = check.supported and check.passage is not None
    return Claim(
        text=check.text, supported=check.supported,
        citation=contexts[check.passage - 1].citation if supported else None,
        passage=check.passage if supported else None,
        evidence=" ".join(check.evidence), reason=check.reason,
        also=_other_citations(check.also, check.passage, contexts) if supported else (),
    )


def _other_citations(numbers, passage: int | None, contexts: list[Hit]) -> tuple[Citation, ...]:
    """The citations of passages `numbers` other than `passage`'s own page."""
    own = contexts[passage - 1].citation if passage else None
    return tuple(dict.fromkeys(contexts[n - 1].citation for n in numbers
                               if n != passage and contexts[n - 1].citation != own))


def _citations(claims: list[Claim]) -> list[Citation]:
    """The kept claims' citations: each claim's first passage, then the others that support it."""
    return list(dict.fromkeys([c.citation for c in claims if c.citation is not None]
                              + [a for c in claims for a in c.also]))


def model_check(state: State, ctx: Context, kept: list[Claim]) -> tuple[list[Claim], list[Claim]]:
    """`Context.model_check`: ask the model whether each kept claim's evidence states it.

    Returns:
        `(confirmed, rejected)`: the claims the model answered "yes" for, and the others as
        removed claims whose reason quotes the reply.
    """
    confirmed, rejected = [], []
    for claim in kept:
        passage = claim.evidence or state["contexts"][claim.passage - 1].text
        prompt = MODEL_CHECK_PROMPT.format(question=state["standalone"], passage=passage,
                                           claim=claim.text)
        reply = _complete(ctx, [{"role": "user", "content": prompt}], ctx.model_check_tokens)
        if model_confirms(reply):
            confirmed.append(claim)
        else:
            said = _first_line(reply)[:40]
            rejected.append(replace(claim, supported=False, citation=None, passage=None, also=(),
                                    reason=f"{NOT_CONFIRMED} (it replied {said!r})"))
    return confirmed, rejected


def verify(state: State, runtime: Runtime[Context]) -> dict:
    """Check every sentence of the draft against every passage; keep the supported ones."""
    start = time.perf_counter()
    contexts = state["contexts"]
    checks = verify_claims(state["draft"], state["standalone"], contexts, state["hints"])
    claims = [as_claim(c, contexts) for c in checks]
    kept = [c for c in claims if c.supported]
    removed = [c for c in claims if not c.supported]
    if kept and runtime.context.model_check:
        kept, rejected = model_check(state, runtime.context, kept)
        removed += rejected
    off_topic = kept and answer_relevance(state["standalone"], contexts,
                                          # a "Yes." is read with the sentence it rests on
                                          [(c.passage, f"{c.text} {c.evidence}") for c in kept],
                                          runtime.context.term_weight,
                                          runtime.context.term_reading)
    if off_topic:
        # Supported by a passage, but not an answer to this question: nothing is kept.
        removed += [replace(c, supported=False, citation=None, passage=None,
                            reason=f"supported, but does not answer the question: {off_topic}")
                    for c in kept]
        kept = []
    if not kept:
        return {"claims": [], "removed_claims": removed, "timings": _timed(state, "verify", start)}
    text = " ".join(c.text for c in kept)
    if runtime.context.support_quote:
        quotes = _new_sentences(_best_quote(state, runtime)[0], kept)
        if quotes:
            quoted = _quote_claims(quotes, state["standalone"], contexts)
            end = "" if text.rstrip().endswith((".", "!", "?", ":", '"')) else "."  # "Yes."
            text = f"{text}{end} {render_quote(quotes, contexts, quoted)}"
            kept = kept + quoted
    timings = _timed(state, "verify", start)
    citations = _citations(kept)
    _emit(runtime, text)
    return {"claims": kept, "removed_claims": removed, "answer": text, "citations": citations,
            "mode": "generated", "timings": timings, "messages": _turn(state, text, citations)}


def render_quote(quotes: list[Quote], contexts: list[Hit], claims: list[Claim] = ()) -> str:
    """The quoted answer: 'The manual says (file p.N): "..."', one clause per passage; the
    other pages that support every quoted sentence of a clause (`claims`, as `_quote_claims`
    gives them) are named after its own ('also p.M')."""
    parts = []
    for q in quotes:
        hit = contexts[q.passage - 1]
        who = "A past ticket says" if hit.chunk.type == "faq" else "The manual says"
        mine = [c for c in claims if c.passage == q.passage]
        also = [c for c in mine[0].also if c.page is not None and c.source == hit.citation.source
                and all(c in m.also for m in mine)] if mine else []
        where = hit.citation.label() + (
            f", also p.{', p.'.join(str(c.page) for c in also)}" if also else "")
        parts.append(f'{who} ({where}): "{q.text}"')
    return " ".join(parts)


def _best_quote(state: State, runtime: Runtime[Context]) -> tuple[list[Quote], str]:
    """The passage sentences that best answer the question (`choose_quote`), or why none."""
    ctx = runtime.context
    return choose_quote(state["standalone"], state["contexts"], state["selection"],
                        ctx.embedder, ctx.term_weight, ctx.term_reading, ctx.quote_first)


def _quote_claims(quotes: list[Quote], question: str, contexts: list[Hit]) -> list[Claim]:
    """Each quoted sentence as a supported claim of its own passage (its own evidence), with
    the other passages that support it as verification would (`check_claim`)."""
    claims = []
    for q in quotes:
        for t in q.texts:
            check = check_claim(t, question, contexts)
            others = {check.passage, *check.also} if check.supported else set()
            claims.append(Claim(text=t, supported=True, citation=contexts[q.passage - 1].citation,
                                passage=q.passage, evidence=t, quoted=True,
                                also=_other_citations(sorted(others - {None}), q.passage,
                                                      contexts)))
    return claims


def _new_sentences(quotes: list[Quote], kept: list[Claim]) -> list[Quote]:
    """`quotes` without the sentences that repeat a kept claim (the model copied them)."""
    said = [f" {normalise(c.text)} " for c in kept if normalise(c.text)]
    out = []
    for q in quotes:
        pairs = [(n, t) for n, t in zip(q.sentences, q.texts)
                 if not any(s in f" {normalise(t)} " for s in said)]
        if pairs:
            out.append(replace(q, sentences=tuple(n for n, _ in pairs),
                               texts=tuple(t for _, t in pairs)))
    return out


def quote(state: State, runtime: Runtime[Context]) -> dict:
    """Quote the passage sentences that best answer the question, or say why none qualifies."""
    contexts = state["contexts"]
    quotes, why = _best_quote(state, runtime)
    if not quotes:
        return {"abstain_reason": f"no passage sentence answers the question well enough: {why}"}
    claims = _quote_claims(quotes, state["standalone"], contexts)
    text = render_quote(quotes, contexts, claims)
    citations = _citations(claims)
    _emit(runtime, text)
    return {"claims": claims, "answer": text, "citations": citations, "mode": "quoted",
            "messages": _turn(state, text, citations)}


def abstain(state: State, runtime: Runtime[Context]) -> dict:
    """Say that the documentation does not cover the question."""
    _emit(runtime, ABSTAIN_ANSWER)
    return {"answer": ABSTAIN_ANSWER, "abstained": True, "mode": "abstained", "citations": [],
            "messages": _turn(state, ABSTAIN_ANSWER)}


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
    "reason", "rewrite_query", "abstain"
]:
    """Answer from relevant passages, else rewrite the query (once), else abstain."""
    if state["contexts"]:
        return "reason"
    rewrites = state.get("rewrites", 0)
    if rewrites < runtime.context.max_rewrites:
        return "rewrite_query"
    if rewrites == runtime.context.max_rewrites:
        return "abstain"
    raise RuntimeError(f"rewrites ({rewrites}) exceeded max_rewrites: graph wiring is broken")


def route_after_answer(state: State) -> Literal["refuse", "verify"]:
    """A model that refused gets the fixed refusal; every other draft is verified."""
    return "refuse" if state["refused"] else "verify"


def route_after_verify(state: State) -> Literal["quote", "__end__"]:
    """Done when a verified sentence survives, else quote the passages."""
    return END if state["claims"] else "quote"


def route_after_quote(state: State) -> Literal["abstain", "__end__"]:
    """Done when a quote reached the relevance bar, else abstain."""
    return "abstain" if state["abstain_reason"] else END


# --- wiring ------------------------------------------------------------------------------------
# guard decides refuse / escalate (self-harm) vs. answer; the answer path resolves follow-ups,
# checks the FAQ history, then loops retrieve -> grade (-> rewrite_query -> retrieve) until
# passages survive grading or the rewrites are used up; then reason -> answer -> verify, and quote
# when nothing verified.
builder = StateGraph(State, context_schema=Context, input_schema=InputState)
builder.add_node("guard", guard)
builder.add_node("refuse", refuse)
builder.add_node("escalate", escalate)
builder.add_node("contextualize", contextualize)
builder.add_node("match_faq", match_faq)
builder.add_node("retrieve", retrieve)
builder.add_node("grade", grade)
builder.add_node("rewrite_query", rewrite_query)
builder.add_node("reason", reason)
builder.add_node("answer", answer)
builder.add_node("verify", verify)
builder.add_node("quote", quote)
builder.add_node("abstain", abstain)
builder.add_edge(START, "guard")
builder.add_conditional_edges("guard", route_after_guard)
builder.add_edge("contextualize", "match_faq")
builder.add_edge("match_faq", "retrieve")
builder.add_edge("retrieve", "grade")
builder.add_conditional_edges("grade", route_after_grade)
builder.add_edge("rewrite_query", "retrieve")
builder.add_edge("reason", "answer")
builder.add_conditional_edges("answer", route_after_answer)
builder.add_conditional_edges("verify", route_after_verify)
builder.add_conditional_edges("quote", route_after_quote)
builder.add_edge("refuse", END)
builder.add_edge("escalate", END)
builder.add_edge("abstain", END)


def build_graph(checkpointer=None):
    """Compile the graph, with a checkpointer (conversation memory) when given."""
    return builder.compile(checkpointer=checkpointer)


graph = build_graph()
