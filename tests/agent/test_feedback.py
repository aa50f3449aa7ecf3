"""The feedback store: durable rows, concurrent writers, and an export that the FAQ readers of
finetune and ingest and the question reader of eval all accept."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from agent.db import DamagedDatabaseError
from agent.feedback import FeedbackStore, UnknownAnswerError
from retrieval.errors import UsageError


def served(answer_id: str, question: str, answer: str, mode: str = "generated",
           page: int | None = 4) -> dict:
    citations = [{"source": "docs/router_manual.pdf", "page": page, "section": "Factory reset"}]
    return {"answer_id": answer_id, "question": question, "answer": answer, "mode": mode,
            "citations": citations if mode in ("generated", "quoted") else []}


@pytest.fixture
def store(tmp_path):
    s = FeedbackStore(tmp_path / "feedback.sqlite")
    yield s
    s.close()


def test_export_rules_and_every_reader_accepts_the_file(store, tmp_path):
    from eval.questions import load_questions
    from ingest.loaders import load_file, read_faq

    store.record_answer(served("a1", "How do I reset the router?", "Hold Reset for 10 s."),
                        session_id="t-1", client="helpdesk")
    store.record_answer(served("a2", "How do I change the Wi-Fi password?", "Ask IT."))
    store.record_answer(served("a3", "Can I turn the lights off?", "No."))
    store.record_answer(served("a4", "How do I hack my neighbour?", "I can't help.", "refused"))
    store.add_feedback("a1", "up", comment="right")
    store.add_feedback("a2", "up")
    store.add_feedback("a2", "down", corrected_answer="Open Wireless > Security.")  # latest wins
    store.add_feedback("a3", "down", comment="wrong")
    store.add_feedback("a4", "up")
    out = tmp_path / "out" / "feedback.jsonl"
    summary = store.export(out)
    assert (summary.corrected, summary.approved, summary.skipped_down,
            summary.skipped_not_answers) == (1, 1, 1, 1)
    assert str(summary).startswith(f"wrote 2 rows to {out} (1 corrected, 1 approved)")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["feedback-a1", "feedback-a2"]
    assert rows[0] | {"answered_at": None, "rated_at": None} == {
        "id": "feedback-a1", "question": "How do I reset the router?",
        "answer": "Hold Reset for 10 s.", "reference": "Hold Reset for 10 s.", "kind": "approved",
        "page": 4, "section": "Factory reset", "source": "docs/router_manual.pdf",
        "rating": "up", "comment": "right", "served_answer": "Hold Reset for 10 s.",
        "mode": "generated", "session_id": "t-1", "answered_at": None, "rated_at": None}
    assert rows[1]["answer"] == "Open Wireless > Security." and rows[1]["served_answer"] == "Ask IT."
    assert "page" not in rows[1]  # a correction need not stand on the served citation

    faq, problems = read_faq(out)
    assert problems == [] and [(r.question, r.answer, r.page) for r in faq] == [
        ("How do I reset the router?", "Hold Reset for 10 s.", 4),
        ("How do I change the Wi-Fi password?", "Open Wireless > Security.", None)]
    questions, problems = load_questions(out)
    assert problems == [] and [(q.id, q.reference, q.page) for q in questions] == [
        ("feedback-a1", "Hold Reset for 10 s.", 4), ("feedback-a2", "Open Wireless > Security.",
                                                     None)]
    loaded = load_file(out)
    assert loaded.type == "faq" and len(loaded.blocks) == 2
    assert loaded.blocks[1].metadata["answer"] == "Open Wireless > Security."


def test_bad_feedback_is_refused_and_stores_nothing(store):
    store.record_answer(served("a1", "q?", "a."))
    with pytest.raises(UnknownAnswerError, match="answer_id 'nope' is not an answer"):
        store.add_feedback("nope", "up")
    with pytest.raises(UsageError, match="rating \\('meh'\\) must be one of up, down"):
        store.add_feedback("a1", "meh")
    assert store.feedback_count() == 0


def test_rows_survive_a_new_store_and_concurrent_writers(tmp_path):
    path = tmp_path / "feedback.sqlite"
    stores = [FeedbackStore(path) for _ in range(3)]  # like three server workers
    for i in range(30):
        stores[0].record_answer(served(f"a{i}", f"question {i}?", f"answer {i}."))

    def rate(store: FeedbackStore, start: int) -> None:
        for i in range(start, 30, 3):
            store.add_feedback(f"a{i}", "up")

    threads = [threading.Thread(target=rate, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    fresh = FeedbackStore(path)
    assert fresh.feedback_count() == 30
    fresh.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_damaged_store_names_the_file(tmp_path):
    path = tmp_path / "feedback.sqlite"
    path.write_bytes(b"\x13" * 5000)
    with pytest.raises(DamagedDatabaseError) as error:
        FeedbackStore(path)
    assert str(error.value).startswith(f"feedback store {path} is damaged (file is not a database)")
    assert path.read_bytes() == b"\x13" * 5000  # left as it was
