"""Feedback on served answers: a durable SQLite store and its export as new ticket history.

    store = FeedbackStore(settings.home / FEEDBACK_FILE)
    store.record_answer(answer.to_dict(), session_id="ticket-42", client="zendesk")
    store.add_feedback(answer.answer_id, "down", corrected_answer="Hold Reset for 30 s.")
    summary = store.export(Path("feedback.jsonl"))

`python -m agent serve` records every answer it serves (id, question, answer, mode, citations,
session, time) so that feedback, which names only the `answer_id`, can be exported with its
question. Each write is committed before the HTTP reply, in WAL mode (`agent.db.connect`), so a
killed server loses no acknowledged feedback and several workers can write at once.

`export` writes FAQ-history JSONL, one line per answer that has feedback (its latest rating):

- a corrected answer (any rating) becomes `question` + the correction (`kind: corrected`);
- an answer rated up without a correction becomes `question` + the served answer, with the page
  and section of its first citation (`kind: approved`);
- an answer rated down without a correction has no good answer to learn from, and an approved
  abstention or refusal is not an answered ticket: both are counted and left out.

Each line has `id`, `question`, `answer` (what `python -m finetune data --faq` and ingest's FAQ
reader need), `reference` (the same text: what `python -m eval run --questions` scores against),
`page`, `section` and `source` where known, and provenance (`rating`, `comment`, `served_answer`,
`session_id`, `answered_at`, `rated_at`) as flat fields that those readers keep or ignore.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent.db import connect
from retrieval.errors import UsageError

FEEDBACK_FILE = "feedback.sqlite"
RATINGS = ("up", "down")
# Modes whose answer text answers the question (see agent.state.Mode).
_ANSWERING_MODES = ("generated", "quoted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    answer_id TEXT PRIMARY KEY,
    answered_at TEXT NOT NULL,
    session_id TEXT,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    mode TEXT NOT NULL,
    citations TEXT NOT NULL,
    client TEXT
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    answer_id TEXT NOT NULL REFERENCES answers (answer_id),
    rated_at TEXT NOT NULL,
    rating TEXT NOT NULL CHECK (rating IN ('up', 'down')),
    comment TEXT,
    corrected_answer TEXT,
    client TEXT
);
CREATE INDEX IF NOT EXISTS feedback_answer ON feedback (answer_id);
"""


class UnknownAnswerError(UsageError):
    """Feedback names an `answer_id` this server never served (or whose store was replaced)."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class ExportSummary:
    """What `FeedbackStore.export` wrote and left out.

    Attributes:
        path: The JSONL file written.
        corrected: Lines from corrected answers.
        approved: Lines from answers rated up as served.
        skipped_down: Answers rated down without a correction (nothing to learn from).
        skipped_not_answers: Approved abstentions and refusals (not answered tickets).
    """

    path: Path
    corrected: int = 0
    approved: int = 0
    skipped_down: int = 0
    skipped_not_answers: int = 0

    @property
    def written(self) -> int:
        """Lines written."""
        return self.corrected + self.approved

    def __str__(self) -> str:
        return (
            f"wrote {self.written} rows to {self.path} ({self.corrected} corrected, "
            f"{self.approved} approved); left out {self.skipped_down} rated down without a "
            f"correction and {self.skipped_not_answers} approved abstentions/refusals"
        )


class FeedbackStore:
    """Served answers and the feedback on them, in one SQLite file.

    Args:
        path: The database (`$CASEWISE_HOME/feedback.sqlite` for the server); created when
            missing.

    Raises:
        DamagedDatabaseError: The file is not a healthy database.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn = connect(self.path, what="feedback store", fix=(
            "move it away and restart (a new store starts empty; the damaged file may still be "
            "recoverable with `sqlite3 FILE .recover`)"))
        # One connection for all threads of this process; sqlite3 objects are not safe to use
        # from two threads at once.
        self._lock = threading.Lock()
        with self._lock, self._conn:
            self._conn.executescript(_SCHEMA)

    def record_answer(self, answer: dict, *, session_id: str | None = None,
                      client: str | None = None) -> None:
        """Keep a served answer so that feedback on its `answer_id` can be exported.

        Args:
            answer: `AgentAnswer.to_dict()` (uses `answer_id`, `question`, `answer`, `mode`,
                `citations`).
            session_id: The conversation it belongs to, if any.
            client: Name of the API key that asked.
        """
        row = (answer["answer_id"], _now(), session_id, answer["question"], answer["answer"],
               answer["mode"], json.dumps(answer["citations"], ensure_ascii=False), client)
        with self._lock, self._conn:
            self._conn.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               row)

    def add_feedback(self, answer_id: str, rating: str, *, comment: str | None = None,
                     corrected_answer: str | None = None, client: str | None = None) -> int:
        """Store one rating (committed before returning).

        Args:
            answer_id: The `answer_id` of a served answer.
            rating: `"up"` or `"down"`.
            comment: Free text from the support agent.
            corrected_answer: The answer the support agent would have given.
            client: Name of the API key that rated.

        Returns:
            The feedback row's id.

        Raises:
            UsageError: `rating` is not up/down.
            UnknownAnswerError: No served answer has this id.
        """
        if rating not in RATINGS:
            raise UsageError(f"rating ({rating!r}) must be one of {', '.join(RATINGS)}")
        corrected_answer = (corrected_answer or "").strip() or None
        with self._lock, self._conn:
            known = self._conn.execute("SELECT 1 FROM answers WHERE answer_id = ?",
                                       (answer_id,)).fetchone()
            if known is None:
                raise UnknownAnswerError(
                    f"answer_id {answer_id!r} is not an answer this server gave: use the "
                    f"answer_id field of a /v1/ask reply")
            cursor = self._conn.execute(
                "INSERT INTO feedback (answer_id, rated_at, rating, comment, corrected_answer, "
                "client) VALUES (?, ?, ?, ?, ?, ?)",
                (answer_id, _now(), rating, comment, corrected_answer, client))
            return int(cursor.lastrowid)

    def feedback_count(self) -> int:
        """Feedback rows stored."""
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM feedback").fetchone()[0]

    def export(self, out: Path) -> ExportSummary:
        """Write the feedback as FAQ-history JSONL (see the module docstring for the rules).

        Args:
            out: The `.jsonl` file to write (replaced when it exists).

        Returns:
            What was written and left out.
        """
        with self._lock:
            rows = self._conn.execute(
                # The latest feedback per answer: a later rating replaces an earlier one.
                "SELECT a.answer_id, a.answered_at, a.session_id, a.question, a.answer, a.mode, "
                "a.citations, f.rated_at, f.rating, f.comment, f.corrected_answer "
                "FROM feedback f JOIN answers a USING (answer_id) "
                "WHERE f.id = (SELECT max(id) FROM feedback g WHERE g.answer_id = f.answer_id) "
                "ORDER BY f.id"
            ).fetchall()
        summary = ExportSummary(Path(out))
        lines = []
        for (answer_id, answered_at, session_id, question, served, mode, citations, rated_at,
             rating, comment, corrected) in rows:
            line = {"id": f"feedback-{answer_id}", "question": question}
            if corrected:
                line.update(answer=corrected, reference=corrected, kind="corrected")
                summary.corrected += 1
            elif rating == "down":
                summary.skipped_down += 1
                continue
            elif mode not in _ANSWERING_MODES:
                summary.skipped_not_answers += 1
                continue
            else:
                line.update(answer=served, reference=served, kind="approved")
                # The served answer stands on its citation; a correction may not.
                first = (json.loads(citations) or [None])[0]
                if first:
                    line.update(page=first.get("page"), section=first.get("section"),
                                source=first.get("source"))
                summary.approved += 1
            line.update(rating=rating, comment=comment, served_answer=served, mode=mode,
                        session_id=session_id, answered_at=answered_at, rated_at=rated_at)
            lines.append(json.dumps({k: v for k, v in line.items() if v is not None},
                                    ensure_ascii=False))
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        tmp.replace(out)
        return summary

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()
