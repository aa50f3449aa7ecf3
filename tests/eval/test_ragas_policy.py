import pytest

from eval.metrics import aggregate
from eval.questions import Question
from eval.ragas_metrics import (
    LLM_METRICS,
    JudgeOutputError,
    RagasScorer,
    chat_judge,
    claims_text,
    parse_structured,
)
from tests.eval.conftest import SchemaJudge

Q = Question(id="q", question="How do I change Picture Mode?", page=10,
             reference="Open Settings and choose Picture Mode.")
REC = {"answer": "Open Settings and choose Picture Mode.",
       "contexts": [{"text": "Open Settings and choose Picture Mode to change it."},
                    {"text": "Unrelated passage about the remote battery."}]}


def test_parse_structured_finds_json_in_chatter():
    from pydantic import BaseModel

    class M(BaseModel):
        verdict: int

    assert parse_structured('Sure! ```json\n{"verdict": 1}\n``` done', M).verdict == 1
    with pytest.raises(JudgeOutputError, match="no JSON"):
        parse_structured("yes", M)
    with pytest.raises(JudgeOutputError, match="does not match M"):
        parse_structured('{"other": 2}', M)


def test_all_metrics_scored_with_a_cooperative_judge(hash_embedder):
    scorer = RagasScorer(hash_embedder, chat_judge(SchemaJudge()))
    names = scorer.applicable(Q, retrieval=True, judged=True)
    assert set(LLM_METRICS) <= set(names)
    scores = {m: scorer.score(m, Q, REC) for m in names}
    assert all(s.scored for s in scores.values()), scores
    assert scores["faithfulness"].value == 1.0
    assert scores["context_recall"].value == 1.0
    assert "scripted" in scores["faithfulness"].reason  # the judge's reasons are kept
    assert scores["rouge_l"].value == pytest.approx(1.0)


def test_unparseable_judge_output_is_not_scored_never_zero(hash_embedder):
    judge = SchemaJudge(garbage_for={"NLIStatementOutput", "ContextPrecisionOutput"})
    scorer = RagasScorer(hash_embedder, chat_judge(judge))
    f = scorer.score("faithfulness", Q, REC)
    assert f.value is None and "unparseable judge output" in f.reason
    cp = scorer.score("context_precision", Q, REC)
    assert cp.value is None and "unparseable" in cp.reason
    agg = aggregate([f, scorer.score("context_recall", Q, REC)])
    assert agg.n_scored == 1 and agg.n_not_scored == 1 and agg.mean == 1.0


def test_timeout_and_missing_contexts_are_not_scored(hash_embedder):
    import time

    class Slow(SchemaJudge):
        def complete(self, messages, *, max_new_tokens=256):
            time.sleep(0.5)
            return super().complete(messages)

    scorer = RagasScorer(hash_embedder, chat_judge(Slow()), timeout=0.1)
    s = scorer.score("faithfulness", Q, REC)
    assert s.value is None and s.reason.startswith("timeout")
    s = scorer.score("context_recall", Q, {"answer": "x", "contexts": []})
    assert s == s.__class__(None, "no retrieved contexts")


def test_nan_from_ragas_is_not_scored(hash_embedder):
    class NoStatements(SchemaJudge):
        def complete(self, messages, *, max_new_tokens=256):
            return '{"statements": []}'

    scorer = RagasScorer(hash_embedder, chat_judge(NoStatements()))
    s = scorer.score("faithfulness", Q, REC)
    assert s.value is None and "NaN" in s.reason


def test_applicability(hash_embedder):
    scorer = RagasScorer(hash_embedder, None)
    assert scorer.judge_name == "none"
    names = scorer.applicable(Q, retrieval=True, judged=True)
    assert not set(LLM_METRICS) & set(names)  # no judge, no LLM metrics
    assert "non_llm_context_recall" in names
    no_rag = scorer.applicable(Q, retrieval=False, judged=True)
    assert "non_llm_context_recall" not in no_rag and "rouge_l" in no_rag
    harmful = Question(id="h", question="x", answerable=False, kind="harmful")
    assert scorer.applicable(harmful, retrieval=True, judged=True) == []
    judged = RagasScorer(hash_embedder, chat_judge(SchemaJudge()))
    assert "faithfulness" not in judged.applicable(Q, retrieval=True, judged=False)


def test_rouge_l_claims_scores_what_the_answer_asserts_without_its_frame(hash_embedder):
    scorer = RagasScorer(hash_embedder, None)
    assert "rouge_l_claims" in scorer.applicable(Q, retrieval=True, judged=False)
    quoted = {"answer": 'The manual says (tv.pdf p.10): "Open Settings and choose Picture Mode."',
              "claims": [{"text": "Open Settings and choose Picture Mode.", "supported": True}],
              "contexts": REC["contexts"]}
    assert claims_text(quoted) == "Open Settings and choose Picture Mode."
    framed = scorer.score("rouge_l", Q, quoted).value
    assert scorer.score("rouge_l_claims", Q, quoted).value == pytest.approx(1.0)
    assert framed < 0.8  # the frame's words are in no reference
    # No claims (abstained, refused, no-rag): the answer as shown, the same as rouge_l.
    abstained = {"answer": "The documents do not cover Picture Mode.", "claims": [],
                 "contexts": REC["contexts"]}
    assert claims_text(abstained) == abstained["answer"]
    assert scorer.score("rouge_l_claims", Q, abstained).value == pytest.approx(
        scorer.score("rouge_l", Q, abstained).value)
    empty = scorer.score("rouge_l_claims", Q, {"answer": "", "claims": []})
    assert empty.value is None and empty.reason == "empty answer"
