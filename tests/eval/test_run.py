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

    def generate_then_clobber(cfg, questions, conversations, cache, build, make_llm):
        real_generate(cfg, questions, conversations, cache=cache, build=build, make_llm=make_llm)
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


def _run_config(tmp_path, question_file, systems, **options):
    """A run of `systems` over the question file with the fake systems; returns the config."""
    settings = Settings.resolve(home=tmp_path / "home")
    config = RunConfig(questions=[str(question_file)], systems=systems, out=tmp_path / "run",
                       options=SystemOptions(settings=settings, **options),
                       judge=JudgeConfig(kind="none"))
    return config


def test_cached_answers_are_reused_only_under_the_options_that_made_them(
        tmp_path, question_file, hash_embedder):
    from eval.runner import RunDirError

    calls = []
    config = _run_config(tmp_path, question_file, ["base"], top_k=5)
    run(config, build=_builder(calls), embedder=hash_embedder)
    assert len(calls) == 4
    record = answer_cache(config.out).get("base", "a1")
    assert record["made_from"]["asked"] == "How do I change Picture Mode"
    assert record["made_from"]["options"]["top_k"] == 5
    saved = (config.out / "config.json").read_text()

    other = _run_config(tmp_path, question_file, ["base"], top_k=8)
    with pytest.raises(RunDirError, match=r"base were made with top_k=5; this run asks top_k=8"):
        run(other, build=_builder(calls), embedder=hash_embedder)
    assert len(calls) == 4  # nothing answered
    assert (config.out / "config.json").read_text() == saved  # the old run's options kept
    # Scoring what is cached answers nothing, so it needs no matching options.
    assert run(other, build=_builder(calls), embedder=hash_embedder, answer=False)
    # The same options resume (nothing left to answer).
    run(config, build=_builder(calls), embedder=hash_embedder)
    assert len(calls) == 4


def test_a_system_is_compared_on_the_options_it_reads(tmp_path, question_file, hash_embedder):
    from eval.runner import RunDirError

    calls = []
    run(_run_config(tmp_path, question_file, ["base", "no-rag"]), build=_builder(calls),
        embedder=hash_embedder)
    # Adding finetuned (with its adapter) and a new top_k for it alone: base and no-rag were
    # not asked again with a changed option they read, so only finetuned answers.
    added = _run_config(tmp_path, question_file, ["finetuned"], adapter="a1", top_k=3)
    run(added, build=_builder(calls), embedder=hash_embedder)
    assert sorted({name for name, _ in calls}) == ["base", "finetuned", "no-rag"]
    assert len(calls) == 12
    # no-rag reads neither the index nor top_k; base does not read the adapter.
    both = _run_config(tmp_path, question_file, ["base", "no-rag"], adapter="other", top_k=5)
    run(both, build=_builder(calls), embedder=hash_embedder)
    assert len(calls) == 12
    moved = _run_config(tmp_path, question_file, ["finetuned"], adapter="a2", top_k=3)
    with pytest.raises(RunDirError, match=r"finetuned were made with adapter='a1'; this run "
                                          r"asks adapter='a2'"):
        run(moved, build=_builder(calls), embedder=hash_embedder)


def test_a_changed_question_under_the_same_id_is_not_answered_from_the_cache(
        tmp_path, question_file, hash_embedder):
    from eval.runner import RunDirError

    calls = []
    run(_run_config(tmp_path, question_file, ["base"]), build=_builder(calls),
        embedder=hash_embedder)
    lines = question_file.read_text().splitlines()
    row = json.loads(lines[0])
    row["question"] = "How do I change Sound Mode"
    lines[0] = json.dumps(row)
    question_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError, match=r"'a1' was asked 'How do I change Picture Mode'; the "
                                          r"question files now ask 'How do I change Sound Mode'"):
        run(_run_config(tmp_path, question_file, ["base"]), build=_builder(calls),
            embedder=hash_embedder)
    assert len(calls) == 4


def test_answers_cached_before_the_stamp_are_reused_with_a_warning(
        tmp_path, question_file, hash_embedder, capsys):
    calls = []
    config = _run_config(tmp_path, question_file, ["base"])
    run(config, build=_builder(calls), embedder=hash_embedder)
    path = config.out / "answers.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "made_from"}) + "\n"
                            for r in rows))
    capsys.readouterr()
    run(_run_config(tmp_path, question_file, ["base"], top_k=9), build=_builder(calls),
        embedder=hash_embedder)
    assert len(calls) == 4
    assert "4 cached answers carry no record of the options" in capsys.readouterr().err


def test_cli_names_the_changed_option_and_exits_2(tmp_path, question_file, capsys):
    from eval.cli import main

    home, out = tmp_path / "home", tmp_path / "run"
    options = SystemOptions(settings=Settings.resolve(home=home), top_k=5)
    out.mkdir()
    (out / "answers.jsonl").write_text(json.dumps({
        "system": "base", "id": "a1", "question": "How do I change Picture Mode", "answer": "x",
        "made_from": {"asked": "How do I change Picture Mode",
                      "options": options.answer_options("base")}}) + "\n")
    code = main(["run", "--questions", str(question_file), "--systems", "base", "--home",
                 str(home), "--judge", "none", "--top-k", "7", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "the cached answers of base were made with top_k=5; this run asks top_k=7" in err
    assert "Traceback" not in err and not (out / "config.json").exists()


def test_answers_of_another_index_are_not_reused(tmp_path, question_file, hash_embedder):
    from eval.runner import RunDirError

    calls = []
    config = _run_config(tmp_path, question_file, ["base", "no-rag"])
    manifest = config.options.settings.manifest_path
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text('{"files": {"manual.pdf": {}}}')
    run(config, build=_builder(calls), embedder=hash_embedder)
    run(config, build=_builder(calls), embedder=hash_embedder)  # the same index: resumes
    assert len(calls) == 8
    manifest.write_text('{"files": {"manual.pdf": {}, "other.pdf": {}}}')  # re-ingested
    with pytest.raises(RunDirError, match=r"cached answers of base were made with "
                                          r"index_manifest='[0-9a-f]{16}'; this run asks "
                                          r"index_manifest='[0-9a-f]{16}'"):
        run(config, build=_builder(calls), embedder=hash_embedder)
    assert len(calls) == 8


@pytest.mark.parametrize("flag", ["--top-k", "--max-new-tokens", "--model-check-tokens"])
def test_a_bad_budget_stops_before_anything_is_written_or_loaded(tmp_path, question_file, flag,
                                                                  capsys):
    from eval.cli import main

    out = tmp_path / "run"
    assert main(["run", "--questions", str(question_file), "--systems", "base", "--judge",
                 "none", "--out", str(out), flag, "0"]) == 2
    name = flag.lstrip("-").replace("-", "_")
    assert f"error: {name} (0) must be at least 1" in capsys.readouterr().err
    assert not out.exists()
