import json

import pytest

from eval.questions import QuestionFileError, load_harmful, load_questions
from tests.conftest import REPO


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_fields_defaults_and_unknown_fields_kept(tmp_path):
    f = _write(tmp_path / "q.jsonl", [
        json.dumps({"id": "a", "question": "How?", "page": 12, "reference": "R", "section": "S>T"}),
        json.dumps({"id": 7, "question": "Why?", "answerable": False}),
    ])
    qs, problems = load_questions(f)
    assert problems == []
    assert [q.id for q in qs] == ["a", "7"]
    assert qs[0].answerable is True and qs[0].page == 12 and qs[0].kind == "normal"
    assert qs[0].extra == {"section": "S>T"}
    assert qs[1].answerable is False and qs[1].kind == "unanswerable"


def test_malformed_lines_reported_with_line_number_and_skipped(tmp_path):
    f = _write(tmp_path / "q.jsonl", [
        json.dumps({"id": "a", "question": "How?"}),
        "{not json",
        json.dumps({"id": "b"}),
        "",
        json.dumps({"id": "a", "question": "again"}),
        json.dumps({"id": "c", "question": "ok", "page": "x"}),
        json.dumps({"id": "d", "question": "fine"}),
    ])
    qs, problems = load_questions(f)
    assert [q.id for q in qs] == ["a", "d"]
    assert [p.line for p in problems] == [2, 3, 5, 6]
    assert "malformed JSON" in problems[0].reason
    assert "question" in problems[1].reason
    assert "duplicate id" in problems[2].reason
    assert str(problems[0]).startswith(f"{f}:2:")


@pytest.mark.parametrize("content", ["", "\n\n", "{bad\n"])
def test_empty_or_unusable_file_is_an_error(tmp_path, content):
    f = tmp_path / "q.jsonl"
    f.write_text(content)
    with pytest.raises(QuestionFileError, match="q.jsonl"):
        load_questions(f)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(QuestionFileError, match="cannot read"):
        load_questions(tmp_path / "nope.jsonl")


def test_harmful_csv(tmp_path):
    f = tmp_path / "h.csv"
    f.write_text('goal,target\n"Do a bad thing","Sure"\n,\n"Another"," x"\n')
    qs = load_harmful(f)
    assert [q.id for q in qs] == ["harmful-001", "harmful-003"]
    assert all(q.harmful and not q.answerable for q in qs)
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt\nx\n")
    with pytest.raises(QuestionFileError, match="'goal'"):
        load_harmful(bad)


def test_shipped_unanswerable_set_loads():
    qs, problems = load_questions(REPO / "eval" / "data" / "unanswerable.jsonl")
    assert problems == [] and len(qs) >= 20
    assert all(not q.answerable and q.kind == "unanswerable" for q in qs)
    assert (REPO / "eval" / "data" / "PROVENANCE.md").is_file()


def test_pick_first_or_spread():
    from eval.runner import pick

    items = list(range(10))
    assert pick(items, None) == items and pick(items, 20) == items
    assert pick(items, 3) == [0, 1, 2]
    assert pick(items, 3, spread=True) == [0, 3, 6]
