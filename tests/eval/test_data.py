"""The shipped question sets: they load, they are what PROVENANCE.md says, and the in-domain
unanswerable questions really are not answered by the manual's text."""

import importlib.util
import json

import pytest

from eval.conversations import load_conversations
from eval.questions import load_questions, question_set
from tests.conftest import REPO, shared_data

DATA = REPO / "eval" / "data"


def _checker():
    spec = importlib.util.spec_from_file_location("check_unanswerable",
                                                  DATA / "check_unanswerable.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_in_domain_set_is_split_in_two_halves():
    qs, problems = load_questions(DATA / "unanswerable_in_domain.jsonl")
    assert problems == [] and len(qs) >= 40
    assert all(not q.answerable and q.kind == "in-domain-unanswerable" for q in qs)
    assert all(q.extra["checked_terms"] for q in qs)
    sets = [question_set(q) for q in qs]
    calib = sets.count("in-domain-unanswerable:calibration")
    report = sets.count("in-domain-unanswerable:report")
    assert calib + report == len(qs) and abs(calib - report) <= 1 and report >= 20


def test_check_record_covers_every_question_with_its_terms():
    qs = [json.loads(line) for line in (DATA / "unanswerable_in_domain.jsonl").open()]
    record = {r["id"]: r for r in map(json.loads, (DATA / "unanswerable_in_domain.check.jsonl")
                                      .open())}
    assert set(record) == {q["id"] for q in qs}
    for q in qs:
        r = record[q["id"]]
        assert r["passed"] and [t["term"] for t in r["terms"]] == q["checked_terms"]
        assert all(t["pages"] == [] for t in r["terms"]) and len(r["top_passages"]) == 3


def test_no_checked_term_occurs_in_the_manual():
    manual = shared_data("emanual", "smart_tv_manual.pdf")
    check = _checker()
    pages = check.manual_pages(manual)
    qs = [json.loads(line) for line in (DATA / "unanswerable_in_domain.jsonl").open()]
    failed = [r for r in (check.check_terms(q, pages) for q in qs) if not r["passed"]]
    assert failed == []
    # The search finds what the manual does contain: a term it uses fails the question.
    covered = check.check_terms({"id": "x", "question": "?",
                                 "checked_terms": ["Ambient Mode", "warranty"]}, pages)
    assert not covered["passed"] and covered["terms"][1]["pages"] == [92]
    assert check.term_pages("depth", pages) and not check.term_pages("dept", pages)


def test_checker_exits_1_when_a_term_occurs(tmp_path, capsys):
    manual = shared_data("emanual", "smart_tv_manual.pdf")
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"id": "bad", "question": "How do I enter Ambient Mode?",
                             "checked_terms": ["ambient mode"]}) + "\n")
    assert _checker().main([str(q), "--manual", str(manual), "--no-retrieval"]) == 1
    assert "FAIL bad: 'ambient mode' on p.[" in capsys.readouterr().err
    assert json.loads((tmp_path / "q.check.jsonl").read_text())["passed"] is False


def test_conversations_cover_the_behaviours():
    convs, problems = load_conversations(DATA / "conversations.jsonl")
    assert problems == [] and len(convs) >= 30
    behaviours = {b for c in convs for b in c.behaviours}
    assert {"follow-up", "typo", "vague", "compound", "angry", "correction",
            "uncovered"} <= behaviours
    turns = [t for c in convs for t in c.turns]
    assert sum(t.follow_up for t in turns) >= 15 and sum(t.correction for t in turns) >= 3
    assert sum(not t.answerable for t in turns) >= 4
    assert all(t.pages for t in turns if t.answerable)
    assert all(7 <= p <= 165 for t in turns for p in t.pages)  # the manual's content pages


def test_off_domain_set_keeps_its_kind():
    qs, _ = load_questions(DATA / "unanswerable.jsonl")
    assert {question_set(q) for q in qs} == {"off-domain-unanswerable"}


@pytest.mark.parametrize("name", ["unanswerable.jsonl", "unanswerable_in_domain.jsonl",
                                  "conversations.jsonl"])
def test_provenance_describes_every_file(name):
    assert f"`{name}`" in (DATA / "PROVENANCE.md").read_text()


def test_checker_help_and_bad_input(tmp_path, capsys):
    check = _checker()
    with pytest.raises(SystemExit) as e:
        check.main(["--help"])
    assert e.value.code == 0 and "examples:" in capsys.readouterr().out
    assert check.main([str(tmp_path / "missing.jsonl"), "--no-retrieval"]) == 2
    assert "missing.jsonl: cannot read the question file" in capsys.readouterr().err
