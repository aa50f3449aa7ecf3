"""The conversation file format, its errors, and the per-turn / per-conversation metrics."""

import pytest

from eval.cli import main
from eval.conversations import (
    Conversation,
    conversation_from_dict,
    conversation_scores,
    load_conversations,
)
from eval.questions import QuestionFileError
from finetune.format import ABSTAIN_ANSWER, REFUSAL_ANSWER
from tests.eval.conftest import write_jsonl

CONV = {"id": "c1", "title": "wifi", "behaviours": ["follow-up", "angry"], "turns": [
    {"user": "How do I connect to Wi-Fi?", "page": 21},
    {"user": "and if it fails??", "page": [23, 24], "follow_up": True},
    {"user": "How much does the TV weigh?", "answerable": False, "kind": "uncovered"},
    {"user": "THIS IS USELESS, how do I reset the network", "page": 25, "kind": "angry"},
]}


def answer(page, mode="generated", contexts=()):
    return {"answer": "Do this.", "mode": mode,
            "citations": [{"source": "smart_tv_manual.pdf", "page": page}] if page else [],
            "contexts": [{"source": "smart_tv_manual.pdf", "page": p, "text": "t"}
                         for p in contexts]}


def abstain(contexts=()):
    return {"answer": ABSTAIN_ANSWER, "mode": "abstained", "citations": [],
            "contexts": [{"source": "smart_tv_manual.pdf", "page": p} for p in contexts]}


def test_round_trip_keeps_every_field():
    conv = conversation_from_dict({**CONV, "note": "kept"})
    assert conv.turns[1].pages == (23, 24) and conv.turns[1].follow_up
    assert not conv.turns[2].answerable and conv.turns[2].kind == "uncovered"
    again = conversation_from_dict(conv.to_dict())
    assert again == conv and again.extra == {"note": "kept"}


def test_every_turn_right():
    conv = conversation_from_dict(CONV)
    s = conversation_scores(conv, [answer(21), answer(24, contexts=[24]), abstain(),
                                   answer(26, mode="quoted")])
    values = {k: v.value for k, v in s.items()}
    assert values == {"turn_correct_rate": 1.0, "turn_cited_page_rate": 1.0,
                      "turn_abstained_uncovered_rate": 1.0, "turn_false_abstention_rate": 0.0,
                      "turn_over_refusal_rate": 0.0, "follow_up_resolved_rate": 1.0,
                      "conversation_success_rate": 1.0}
    assert s["turn_correct_rate"].weight == 4 and s["turn_cited_page_rate"].weight == 3


def test_wrong_turns_are_counted_per_turn():
    conv = conversation_from_dict(CONV)
    refused = {"answer": REFUSAL_ANSWER, "mode": "refused", "citations": [], "contexts": []}
    # wrong page; follow-up retrieved the right page but abstained; answered the uncovered
    # question; refused the angry customer.
    s = conversation_scores(conv, [answer(40), abstain(contexts=[23]), answer(50), refused])
    assert s["turn_correct_rate"].value == 0.0
    assert s["turn_cited_page_rate"].value == 0.0
    assert s["turn_abstained_uncovered_rate"].value == 0.0
    assert s["turn_false_abstention_rate"].value == pytest.approx(1 / 3)
    assert s["turn_over_refusal_rate"].value == 0.25
    assert s["follow_up_resolved_rate"].value == 1.0  # understood, then abstained
    assert s["conversation_success_rate"].value == 0.0
    assert "turn(s) [1, 2, 3, 4] wrong" in s["conversation_success_rate"].reason


@pytest.mark.parametrize("line, why", [
    ('{"id": "x"}', "field 'turns' must be a non-empty list"),
    ('{"id": "x", "turns": []}', "field 'turns' must be a non-empty list"),
    ('{"turns": [{"user": "hi"}]}', "missing field 'id'"),
    ('{"id": "x", "turns": [{"user": ""}]}', "turn 1: missing or empty field 'user'"),
    ('{"id": "x", "turns": [{"user": "a", "page": "p3"}]}', "turn 1: field 'page' must be"),
    ('{"id": "x", "turns": [{"user": "a", "answerable": "no"}]}', "turn 1: field 'answerable'"),
    ('{"id": "x", "turns": [{"user": "a", "answerable": false, "page": 3}]}', "no gold 'page'"),
    ('{"id": "x", "turns": [{"user": "a"}], "behaviours": "angry"}', "'behaviours' must be a"),
    ("not json", "malformed JSON"),
])
def test_bad_lines_are_skipped_with_the_reason(tmp_path, line, why):
    p = tmp_path / "c.jsonl"
    p.write_text(line + "\n" + '{"id": "ok", "turns": [{"user": "hello"}]}\n')
    convs, problems = load_conversations(p)
    assert [c.id for c in convs] == ["ok"]
    assert len(problems) == 1 and why in str(problems[0]) and str(problems[0]).startswith(
        f"{p}:1: ") and str(problems[0]).endswith("line skipped")


def test_unusable_files_are_errors(tmp_path):
    with pytest.raises(QuestionFileError, match="cannot read conversation file"):
        load_conversations(tmp_path / "missing.jsonl")
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "x"}\n')
    with pytest.raises(QuestionFileError, match="has no valid line"):
        load_conversations(p)


def test_run_with_a_bad_conversation_file_exits_2(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "conv.jsonl", [{"id": "x", "turns": "no"}])
    rc = main(["run", "--conversations", str(bad), "--systems", "no-rag", "--out",
               str(tmp_path / "o"), "--judge", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "conv.jsonl" in err and "Traceback" not in err


def test_conversation_ids_must_not_repeat_question_ids(tmp_path, capsys):
    q = write_jsonl(tmp_path / "q.jsonl", [{"id": "same", "question": "How?"}])
    c = write_jsonl(tmp_path / "c.jsonl", [{"id": "same", "turns": [{"user": "hi"}]}])
    rc = main(["run", "--questions", str(q), "--conversations", str(c), "--systems", "no-rag",
               "--out", str(tmp_path / "o"), "--judge", "none"])
    assert rc == 2 and "'same' is also in" in capsys.readouterr().err


def test_users_in_order():
    assert Conversation(id="c", turns=conversation_from_dict(CONV).turns).users[0] == (
        "How do I connect to Wi-Fi?")


def test_turn_rates_pool_over_turns_and_say_so():
    from eval.metrics import Score
    from eval.report import summary_table
    from eval.runner import summarize

    rows = [{"system": "s", "scores": {"turn_correct_rate": Score(1.0, "", 1.0).to_dict(),
                                       "conversation_success_rate": Score(1.0).to_dict()}},
            {"system": "s", "scores": {"turn_correct_rate": Score(0.0, "", 3.0).to_dict(),
                                       "conversation_success_rate": Score(0.0).to_dict()}}]
    metrics = summarize(rows, ["s"])
    turn = metrics["s"]["turn_correct_rate"]
    assert turn["mean"] == 0.25 and turn["n_scored"] == 2 and turn["n_units"] == 4
    assert metrics["s"]["conversation_success_rate"] == {"mean": 0.5, "n_scored": 2,
                                                         "n_not_scored": 0}
    table = summary_table({"systems": ["s"], "metrics": metrics})
    assert "| turn_correct_rate | 0.250 (2/2, 4 turns) |" in table
