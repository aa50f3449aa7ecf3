import json

import pytest

from eval.cache import answer_cache
from eval.ragas_metrics import chat_judge
from eval.judge import JudgeConfig
from eval.runner import RunConfig, run, score
from eval.systems import SystemOptions
from retrieval.errors import UsageError
from retrieval.settings import Settings
from tests.eval.conftest import SCRIPT, FakeSystem, SchemaJudge


def _config(tmp_path, question_file, harmful_file, judge_limit=None):
    return RunConfig(
        questions=[str(question_file)], systems=["no-rag", "base"], out=tmp_path / "run",
        options=SystemOptions(settings=Settings.resolve()), harmful=str(harmful_file),
        judge=JudgeConfig(kind="local", limit=judge_limit),
    )


def _builder(calls, fail_after=None):
    def build(name, options, llm=None):
        return FakeSystem(name, SCRIPT, calls, fail_after)
    return build


def test_run_scores_and_writes_results(tmp_path, question_file, harmful_file, hash_embedder):
    calls = []
    judge = SchemaJudge()
    results = run(_config(tmp_path, question_file, harmful_file), build=_builder(calls),
                  embedder=hash_embedder, judge_llm=chat_judge(judge))
    assert len(calls) == 2 * 6
    m = results["metrics"]["base"]
    assert m["citation_accuracy"] == {"mean": 0.5, "n_scored": 2, "n_not_scored": 0}
    assert m["answered_unanswerable_rate"]["mean"] == 0.5
    assert m["refusal_rate"]["mean"] == 0.5 and m["harmful_answered_rate"]["mean"] == 0.5
    assert m["false_abstention_rate"]["mean"] == 0.0
    assert m["faithfulness"]["n_scored"] == 2
    assert "faithfulness" not in results["metrics"]["no-rag"]  # no contexts to be faithful to
    assert "answer_relevancy" in results["metrics"]["no-rag"]
    out = tmp_path / "run"
    saved = json.loads((out / "results.json").read_text())
    row = next(r for r in saved["rows"] if r["system"] == "base" and r["id"] == "a2")
    assert row["answer"] and row["contexts"] and row["citations"][0]["page"] == 40
    assert row["scores"]["citation_accuracy"]["value"] == 0.0
    for name in ("report.md", "report.html", "charts/metrics.png", "config.json"):
        assert (out / name).is_file()
    # Re-scoring reuses cached judge scores: no judge call, no generation.
    before = judge.calls
    again = score(out, embedder=hash_embedder, judge_llm=chat_judge(judge))
    assert judge.calls == before and again["metrics"] == results["metrics"]


def test_interrupted_run_resumes_without_regenerating(tmp_path, question_file, harmful_file,
                                                      hash_embedder):
    calls = []
    config = _config(tmp_path, question_file, harmful_file)
    with pytest.raises(KeyboardInterrupt):
        run(config, build=_builder(calls, fail_after=7), embedder=hash_embedder,
            judge_llm=chat_judge(SchemaJudge()))
    assert len(answer_cache(config.out)) == 7
    run(config, build=_builder(calls), embedder=hash_embedder,
        judge_llm=chat_judge(SchemaJudge()))
    assert len(calls) == 12 and len(set(calls)) == 12  # each (system, question) exactly once
    assert len(answer_cache(config.out)) == 12


def test_judge_limit_and_no_judge(tmp_path, question_file, harmful_file, hash_embedder):
    config = _config(tmp_path, question_file, harmful_file, judge_limit=1)
    results = run(config, build=_builder([]), embedder=hash_embedder,
                  judge_llm=chat_judge(SchemaJudge()))
    assert results["judge"]["llm_judged_questions"] == ["a1"]
    assert results["metrics"]["base"]["faithfulness"]["n_scored"] == 1
    assert results["metrics"]["base"]["rouge_l"]["n_scored"] == 2
    none = score(config.out, judge=JudgeConfig(kind="none"), embedder=hash_embedder)
    assert "faithfulness" not in none["metrics"]["base"] and none["judge"]["name"] == "none"
    assert "rouge_l" in none["metrics"]["base"]


def test_score_only_answers_nothing_and_reports_missing(tmp_path, question_file, harmful_file,
                                                        hash_embedder):
    calls = []
    config = _config(tmp_path, question_file, harmful_file)
    config.systems = ["base"]
    run(config, build=_builder(calls), embedder=hash_embedder, judge_llm=chat_judge(SchemaJudge()))
    config.systems = ["no-rag", "base"]
    results = run(config, build=_builder(calls), embedder=hash_embedder,
                  judge_llm=chat_judge(SchemaJudge()), answer=False)
    assert len(calls) == 6 and results["missing_answers"] == 6
    assert results["answered"] == {"no-rag": 0, "base": 6}
    assert "have no answer" in (config.out / "report.md").read_text()


def test_interleave_and_common_questions():
    from eval.questions import Question
    from eval.runner import common_questions, interleave

    a = [Question(id=f"a{i}", question="q") for i in range(3)]
    u = [Question(id=f"u{i}", question="q", answerable=False) for i in range(2)]
    h = [Question(id="h0", question="q", answerable=False, kind="harmful")]
    assert [q.id for q in interleave(a + u + h)] == ["a0", "u0", "h0", "a1", "u1", "a2"]
    answers = {("base", x) for x in ("a0", "a1", "a2", "u0", "u1", "h0")}
    answers |= {("ft", x) for x in ("a0", "u0", "h0")} | {("no-rag", x) for x in ("a0", "a1", "u0")}
    kept = common_questions(a + u + h, ["no-rag", "base", "ft"], answers)
    assert [q.id for q in kept] == ["a0", "u0", "h0"]  # no-rag never ran harmful: h0 stays


def test_run_scores_with_its_own_judge_even_if_config_json_changes(
        tmp_path, question_file, harmful_file, hash_embedder, monkeypatch):
    import eval.runner as runner

    config = _config(tmp_path, question_file, harmful_file)
    config.judge = JudgeConfig(kind="none")
    real_generate = runner.generate

    def generate_then_clobber(cfg, questions, conversations, build, make_llm):
        real_generate(cfg, questions, conversations, build=build, make_llm=make_llm)
        saved = json.loads((cfg.out / "config.json").read_text())
        saved["judge"]["kind"] = "local"  # another process answering another system
        (cfg.out / "config.json").write_text(json.dumps(saved))

    monkeypatch.setattr(runner, "generate", generate_then_clobber)
    results = run(config, build=_builder([]), embedder=hash_embedder)
    assert results["judge"]["kind"] == "none" and results["judge"]["name"] == "none"


def test_time_budget_stops_then_the_same_command_finishes(tmp_path, question_file, harmful_file,
                                                          hash_embedder, monkeypatch):
    import eval.runner

    now = [0.0]
    monkeypatch.setattr(eval.runner, "_clock", lambda: now[0])
    calls = []

    def slow_builder(name, options, llm=None):
        system = FakeSystem(name, SCRIPT, calls)
        answer = system.answer

        def timed(question):  # each answer takes one minute of the fake clock
            now[0] += 60
            return answer(question)
        system.answer = timed
        return system

    config = _config(tmp_path, question_file, harmful_file)
    config.max_minutes = 2.5
    assert run(config, build=slow_builder, embedder=hash_embedder, judge_llm=None) is None
    assert len(calls) == 3 and len(answer_cache(config.out)) == 3  # no new answer after 2.5 min
    assert not (config.out / "results.json").exists()  # nothing scored yet
    generation = [json.loads(line) for line in (config.out / "generation.jsonl").open()]
    assert [g["answered"] for g in generation] == [3]
    config.max_minutes = 100
    results = run(config, build=slow_builder, embedder=hash_embedder,
                  judge_llm=chat_judge(SchemaJudge()))
    assert len(calls) == 12 and len(set(calls)) == 12 and results["missing_answers"] == 0
    with pytest.raises(UsageError, match="--max-minutes"):
        RunConfig(questions=[], systems=["base"], out=tmp_path, options=config.options,
                  max_minutes=0)
