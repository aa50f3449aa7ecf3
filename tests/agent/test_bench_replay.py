"""`bench/replay_answers.py`: its command line and the replay of recorded answers."""

import json

import pytest

from agent.context import Context
from bench.replay_answers import main, replay, replay_conversation, summarize
from eval.conversations import conversation_from_dict
from finetune.format import ABSTAIN_ANSWER
from tests.agent.conftest import RESET, FakeSearcher, make_chunk

REMOTE = make_chunk(
    "About the Samsung Smart Remote (QLED TV) Learn about the buttons on the Samsung Smart "
    "Remote that comes with the QLED TV.", source="smart_tv_manual.pdf", page=20,
    section="About the Samsung Smart Remote (QLED TV)")
# IDF in the index of smart_tv_manual.pdf (5.89: in no chunk)
IDF = {"qled": 3.05, "tv": 0.16, "router": 1.0, "reset": 1.0, "factory": 1.0, "setting": 1.0}


def record(question, chunk, raw, mode):
    """An answer record as `python -m eval run` writes it (the keys replay reads)."""
    return {"question": question, "raw": raw, "mode": mode, "answer": "x", "citations": [],
            "contexts": [{"text": chunk.text, "source": chunk.source, "page": chunk.page,
                          "section": chunk.section, "score": 0.1}]}


def context(**kw):
    return Context(searcher=FakeSearcher([]), llm=None,
                   term_weight=lambda w: IDF.get(w, 5.89), **kw)


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python bench/replay_answers.py" in out and "Examples:" in out


def test_a_directory_that_is_no_run_exits_2_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "answers.jsonl: not found" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "answers.jsonl").write_text("{}\n")
    (tmp_path / "questions.jsonl").write_text("{}\n")
    assert main([str(tmp_path), "--home", str(tmp_path / "none")]) == 2
    assert "no index there" in capsys.readouterr().err


def test_replay_applies_todays_rules_to_the_recorded_reply():
    # Recorded as a quote (eval ran without the IDF weights); today's bar rejects it.
    off = record("How much does the QLED TV cost?", REMOTE,
                 f"Reasoning: Passage [1].\nQuote: 1.1\nAnswer: {ABSTAIN_ANSWER}", "quoted")
    assert replay(off, context())["mode"] == "abstained"
    assert replay(off, Context(searcher=FakeSearcher([]), llm=None))["mode"] == "quoted"
    # A supported answer stays generated, with the passage's citation.
    good = record("How do I reset the router to factory settings?", RESET,
                  "Reasoning: Passage [1].\nQuote: 1.1\nAnswer: Press and hold the Reset button "
                  "for 10 seconds.", "generated")
    again = replay(good, context())
    assert again["mode"] == "generated" and again["citations"][0]["page"] == 4
    # Answers that never reached the model keep their mode.
    assert replay({"question": "q", "mode": "refused", "contexts": []}, context())["mode"] \
        == "refused"


def test_the_summary_reports_answered_unanswerable_by_split():
    rows = [{"kind": "in-domain-unanswerable", "split": s, "answerable": False,
             "recorded": "quoted", "replayed": m}
            for s, m in (("calibration", "abstained"), ("calibration", "quoted"),
                         ("report", "abstained"), ("report", "abstained"))]
    part = summarize(rows)["in-domain-unanswerable"]
    assert part["answered_recorded"] == 1.0 and part["answered_replayed"] == 0.25
    assert part["answered_replayed_calibration"] == 0.5 and part["answered_replayed_report"] == 0
    assert part["changed"] == 3
    assert json.dumps(part)  # JSON-ready


def test_a_conversation_is_replayed_with_each_follow_up_rewritten_and_scored_as_eval_does():
    first, second = "How do I reset the router to factory settings?", "how long do i hold it?"
    conv = conversation_from_dict({"id": "c1", "turns": [
        {"user": first, "page": 4}, {"user": second, "page": 4, "follow_up": True}]})
    turns = [record(first, RESET, "Reasoning: Passage [1].\nQuote: 1.1\nAnswer: Press and hold "
                    "the Reset button for 10 seconds.", "abstained"),
             record(second, RESET, f"Reasoning: Passage [1].\nQuote: 1.1\nAnswer: "
                    f"{ABSTAIN_ANSWER}", "abstained")]
    row = replay_conversation({"id": "c1", "system": "base", "turns": turns}, conv, context())
    assert row["turns"][0]["standalone"] == first
    # the follow-up is judged on the agent's rewrite: the first turn's topic words appended
    assert row["turns"][1]["standalone"] == f"{second} (reset router factory settings)"
    assert [t["replayed"] for t in row["turns"]] == ["generated", "quoted"]
    assert row["scores"]["recorded"]["turn_correct_rate"] == 0.0
    assert row["scores"]["replayed"]["turn_correct_rate"] == 1.0


def test_context_settings_are_read_as_the_fields_types():
    from bench.replay_answers import with_settings
    from retrieval.errors import UsageError

    base = context()
    changed = with_settings(base, ["support_quote=true", "max_new_tokens=64"])
    assert changed.support_quote is True and changed.max_new_tokens == 64
    assert with_settings(base, []) == base
    for bad, why in (("support_quote=maybe", "takes true or false"),
                     ("max_new_tokens=many", "takes a number"),
                     ("no_such_field=1", "FIELD=VALUE"), ("support_quote", "FIELD=VALUE"),
                     ("quote_first=foo", r"quote_first \('foo'\) must be one of ranker, model"),
                     ("rerank=up", "rerank .* must be one of off, best_first, select"),
                     ("max_new_tokens=0", r"max_new_tokens \(0\) must be at least 1"),
                     ("max_contexts=0", r"max_contexts \(0\) must be at least 1")):
        with pytest.raises(UsageError, match=why):
            with_settings(base, [bad])
    assert with_settings(base, ["quote_first=model"]).quote_first == "model"
