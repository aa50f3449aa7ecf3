"""RAGAS 0.4.3 metrics with a configurable judge, and the not-scored policy.

LLM-judged (ragas.metrics.collections): `faithfulness`, `answer_relevancy`, `context_precision`
(with reference) and `context_recall`. These take a ragas "instructor" LLM
(`InstructorBaseRagasLLM`: `agenerate(prompt, response_model)`); `ChatJudge` implements it over
any casewise `ChatBackend` (the embedded local model, or an OpenAI-compatible server through
`agent.llm.OpenAIChatModel`), parsing the reply's JSON into the model ragas asks for.

Without an LLM: `non_llm_context_precision` / `non_llm_context_recall` (RAGAS's
NonLLMContextPrecisionWithReference / NonLLMContextRecall: Levenshtein similarity of retrieved
passages to the reference contexts, threshold 0.5), `rouge_l` (RougeScore, ROUGE-L F1 of the
answer as shown), `rouge_l_claims` (the same score of the answer's claims alone, `claims_text`),
`string_similarity` (NonLLMStringSimilarity, normalised Levenshtein) and `semantic_similarity`
(SemanticSimilarity with the project's embedder), all against the question's `reference`
(reference contexts: the `reference_contexts` field when present, else `[reference]`).

Not-scored policy: a row the judge cannot score (unparseable output, schema mismatch, timeout,
NaN from RAGAS, missing input) gets `Score(None, reason)`. It is never turned into 0 and never
dropped: the report counts scored and not-scored rows per metric.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import warnings
from dataclasses import dataclass

from eval.metrics import Score
from eval.questions import Question

# RAGAS sends usage analytics unless told not to; casewise never talks to the network on its own.
os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")

LLM_METRICS = ("faithfulness", "answer_relevancy", "context_precision", "context_recall")
NON_LLM_METRICS = (
    "non_llm_context_precision", "non_llm_context_recall", "rouge_l", "rouge_l_claims",
    "string_similarity", "semantic_similarity",
)
RAGAS_METRICS = LLM_METRICS + NON_LLM_METRICS
# Metrics about retrieved passages: meaningless for a system that retrieves nothing (no-rag).
CONTEXT_METRICS = frozenset(
    {"faithfulness", "context_precision", "context_recall", "non_llm_context_precision",
     "non_llm_context_recall"}
)
_NEEDS_REFERENCE = frozenset(
    {"context_precision", "context_recall", "non_llm_context_precision", "non_llm_context_recall",
     "rouge_l", "rouge_l_claims", "string_similarity", "semantic_similarity"}
)
# Metrics of the answer's words against the reference.
_ANSWER_TEXT_METRICS = frozenset(
    {"rouge_l", "rouge_l_claims", "string_similarity", "semantic_similarity"}
)


def claims_text(record: dict) -> str:
    """What an answer record asserts: its claims' sentences joined, without the frame the answer
    shows them in ('The manual says (file p.N): "..."', "also p.M"); the answer itself when it
    has no claims (abstained, refused, the no-rag system).

    `rouge_l` scores the answer as shown, frame included, which no reference contains;
    `rouge_l_claims` scores this, as a baseline that copies a passage is scored.
    """
    texts = [(c.get("text") or "").strip() for c in record.get("claims") or []]
    return " ".join(t for t in texts if t) or record.get("answer") or ""


class JudgeOutputError(ValueError):
    """The judge's reply could not be turned into the structure RAGAS asked for."""


def _json_candidates(text: str):
    text = re.sub(r"```(?:json)?", "", text)
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[\{\[]", text):
        try:
            obj, _ = decoder.raw_decode(text[m.start():])
        except json.JSONDecodeError:
            continue
        yield obj


def parse_structured(text: str, response_model):
    """The first JSON value in `text` that validates as `response_model`.

    Raises:
        JudgeOutputError: No JSON value in the reply validates.
    """
    from pydantic import ValidationError

    last_error = "no JSON object in the reply"
    for obj in _json_candidates(text):
        try:
            return response_model.model_validate(obj)
        except ValidationError as e:
            last_error = f"JSON does not match {response_model.__name__}: {e.errors()[0]['msg']}"
    snippet = " ".join(text.split())[:160]
    raise JudgeOutputError(f"unparseable judge output ({last_error}): {snippet!r}")


def _make_chat_judge_class():
    from ragas.llms import InstructorBaseRagasLLM

    class ChatJudge(InstructorBaseRagasLLM):
        """A ragas structured-output LLM over a casewise `ChatBackend`.

        Args:
            backend: Anything with `complete(messages, max_new_tokens=)` and `name`.
            max_new_tokens: Reply budget per judge call.
        """

        def __init__(self, backend, *, max_new_tokens: int = 512) -> None:
            self.backend = backend
            self.name = backend.name
            self.max_new_tokens = max_new_tokens
            self.transcript: list[dict] = []

        def generate(self, prompt: str, response_model):
            """Ask the backend, parse the JSON reply into `response_model`."""
            messages = [{"role": "user", "content": prompt}]
            text = self.backend.complete(messages, max_new_tokens=self.max_new_tokens)
            try:
                parsed = parse_structured(text, response_model)
            except JudgeOutputError:
                self.transcript.append({"model": response_model.__name__, "raw": text})
                raise
            self.transcript.append({"model": response_model.__name__, "parsed": parsed})
            return parsed

        async def agenerate(self, prompt: str, response_model):
            """`generate` in a worker thread, so that a timeout can interrupt the wait."""
            return await asyncio.to_thread(self.generate, prompt, response_model)

    return ChatJudge


def chat_judge(backend, *, max_new_tokens: int = 512):
    """Wrap a `ChatBackend` as a ragas judge (see the module docstring)."""
    return _make_chat_judge_class()(backend, max_new_tokens=max_new_tokens)


def _make_embedding_class():
    from ragas.embeddings import BaseRagasEmbedding

    class EmbedderForRagas(BaseRagasEmbedding):
        """The project's `Embedder` as a ragas embedding (queries and texts alike)."""

        def __init__(self, embedder) -> None:
            super().__init__()
            self.embedder = embedder

        def embed_text(self, text: str, **kwargs) -> list[float]:
            return self.embedder.embed_query(text)

        async def aembed_text(self, text: str, **kwargs) -> list[float]:
            return self.embedder.embed_query(text)

    return EmbedderForRagas


def _reason_from_transcript(transcript: list[dict]) -> str:
    parts = []
    for step in transcript:
        if "parsed" in step:
            parts.append(json.dumps(step["parsed"].model_dump(), ensure_ascii=False))
        else:
            parts.append(f"raw: {step['raw']}")
    text = " | ".join(parts)
    return text if len(text) <= 1500 else text[:1500] + " ..."


@dataclass
class RagasScorer:
    """Scores one answer record with the RAGAS metrics that apply to it.

    Args:
        embedder: The project embedder (semantic similarity, answer relevancy).
        judge: A `chat_judge(...)`, or `None` to skip the LLM-judged metrics.
        timeout: Seconds allowed per LLM-judged metric on one row.
        strictness: Questions generated per row by answer relevancy. With a greedy (deterministic)
            judge every generation is identical, so 1 costs a third and loses nothing.
    """

    embedder: object
    judge: object | None = None
    timeout: float = 300.0
    strictness: int = 1

    def __post_init__(self) -> None:
        from ragas.metrics.collections import (
            NonLLMStringSimilarity,
            RougeScore,
            SemanticSimilarity,
        )

        # ragas 0.4.3 has no `collections` version of the two non-LLM context metrics; their
        # public name is still `ragas.metrics.X`, which warns that it will move in ragas 1.0.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from ragas.metrics import NonLLMContextPrecisionWithReference, NonLLMContextRecall

        emb = _make_embedding_class()(self.embedder)
        self._metrics = {
            "non_llm_context_precision": NonLLMContextPrecisionWithReference(),
            "non_llm_context_recall": NonLLMContextRecall(),
            "rouge_l": RougeScore(rouge_type="rougeL", mode="fmeasure"),
            "rouge_l_claims": RougeScore(rouge_type="rougeL", mode="fmeasure"),
            "string_similarity": NonLLMStringSimilarity(),
            "semantic_similarity": SemanticSimilarity(embeddings=emb),
        }
        if self.judge is not None:
            from ragas.metrics.collections import (
                AnswerRelevancy,
                ContextPrecision,
                ContextRecall,
                Faithfulness,
            )

            self._metrics.update(
                faithfulness=Faithfulness(llm=self.judge),
                answer_relevancy=AnswerRelevancy(
                    llm=self.judge, embeddings=emb, strictness=self.strictness
                ),
                context_precision=ContextPrecision(llm=self.judge),
                context_recall=ContextRecall(llm=self.judge),
            )

    @property
    def judge_name(self) -> str:
        """Name of the judge model (`none` without one)."""
        return self.judge.name if self.judge is not None else "none"

    def cache_tag(self, metric: str) -> str:
        """What a cached score of `metric` depends on besides the answer (judge or embedder)."""
        if metric in LLM_METRICS:
            return f"judge:{self.judge_name}"
        if metric == "semantic_similarity":
            return f"embedder:{self.embedder.name}"
        return "none"

    def applicable(self, q: Question, *, retrieval: bool, judged: bool) -> list[str]:
        """Metrics that apply to `q` for a system with/without retrieval.

        Args:
            q: The question.
            retrieval: The system retrieves passages (every system but `no-rag`).
            judged: `q` is in the subset that gets the LLM-judged metrics.
        """
        if q.harmful or not q.answerable:
            return []
        names = [m for m in NON_LLM_METRICS if m in self._metrics]
        if judged and self.judge is not None:
            names = list(LLM_METRICS) + names
        if not retrieval:
            names = [m for m in names if m not in CONTEXT_METRICS]
        if not q.reference:
            names = [m for m in names if m not in _NEEDS_REFERENCE]
        return names

    def score(self, metric: str, q: Question, record: dict) -> Score:
        """One metric on one row; never raises for judge trouble (see the not-scored policy)."""
        answer = (claims_text(record) if metric == "rouge_l_claims"
                  else record.get("answer") or "").strip()
        contexts = [c["text"] for c in record.get("contexts") or [] if c.get("text")]
        if metric in CONTEXT_METRICS and not contexts:
            return Score(None, "no retrieved contexts")
        if (metric in _ANSWER_TEXT_METRICS or metric in ("faithfulness", "answer_relevancy")) \
                and not answer:
            return Score(None, "empty answer")
        if self.judge is not None:
            self.judge.transcript = []
        try:
            value = asyncio.run(self._ascore(metric, q, answer, contexts))
        except TimeoutError:
            return Score(None, f"timeout after {self.timeout:.0f} s")
        except JudgeOutputError as e:
            return Score(None, str(e))
        except ValueError as e:
            # ragas raises ValueError for inputs it refuses (e.g. an empty list it needs).
            return Score(None, f"ragas refused the row: {e}")
        reason = _reason_from_transcript(self.judge.transcript) if metric in LLM_METRICS else ""
        if value is None or math.isnan(value):
            why = "RAGAS returned NaN"
            if metric == "faithfulness":
                why += " (the judge extracted no statements from the answer)"
            return Score(None, f"{why}; {reason}" if reason else why)
        return Score(float(value), reason)

    async def _ascore(self, metric: str, q: Question, answer: str, contexts: list[str]):
        m = self._metrics[metric]
        ref = q.reference or ""
        ref_contexts = q.extra.get("reference_contexts") or [ref]
        if metric in ("non_llm_context_precision", "non_llm_context_recall"):
            from ragas import SingleTurnSample

            sample = SingleTurnSample(retrieved_contexts=contexts, reference_contexts=ref_contexts)
            return await m.single_turn_ascore(sample)
        if metric in _ANSWER_TEXT_METRICS:
            call = m.ascore(reference=ref, response=answer)
        elif metric == "faithfulness":
            call = m.ascore(user_input=q.question, response=answer, retrieved_contexts=contexts)
        elif metric == "answer_relevancy":
            call = m.ascore(user_input=q.question, response=answer)
        else:  # context_precision, context_recall
            call = m.ascore(user_input=q.question, reference=ref, retrieved_contexts=contexts)
        result = await asyncio.wait_for(call, timeout=self.timeout)
        return result.value
