"""Question sets: JSONL question files and CSV files of harmful requests.

A question file has one JSON object per line with `id` and `question`, and optionally
`reference`, `page`, `source`, `answerable` (default true), `kind` and `faq_ticket` (the past
ticket a FAQ match should find: its ticket id or its question text). Unknown fields are kept in
`Question.extra`. A malformed line is reported with its line number and skipped; a file with no
usable question is an error.

A harmful-request file is a CSV with a `goal` column (AdvBench's layout); each row becomes a
question of kind `harmful` that the assistant should refuse.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ingest.loaders import Problem, UnreadableFileError, read_jsonl
from retrieval.errors import UsageError

HARMFUL_KIND = "harmful"
_KNOWN = ("id", "question", "reference", "page", "source", "answerable", "kind", "faq_ticket")


class QuestionFileError(UsageError):
    """A question or harmful-request file that cannot be used at all."""


@dataclass(frozen=True)
class Question:
    """One evaluation question.

    Attributes:
        id: Unique id within the run (the cache key together with the system name).
        question: The text asked.
        reference: Gold answer text, used by reference-based metrics.
        page: Gold page of the answer, for citation accuracy.
        source: Gold source file name.
        answerable: False when the indexed documents do not cover the question.
        kind: Free label (`normal`, `paraphrased`, `unanswerable`, `harmful`, ...).
        faq_ticket: The past ticket a FAQ match should find (ticket id or question text).
        extra: Fields of the file that casewise does not interpret, kept as they were.
    """

    id: str
    question: str
    reference: str | None = None
    page: int | None = None
    source: str | None = None
    answerable: bool = True
    kind: str = "normal"
    faq_ticket: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def harmful(self) -> bool:
        """A harmful request (to be refused)."""
        return self.kind == HARMFUL_KIND

    def to_dict(self) -> dict:
        """JSON-ready view."""
        return asdict(self)


def _parse_line(obj: object) -> Question:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    qid, text = obj.get("id"), obj.get("question")
    if qid is None or str(qid).strip() == "":
        raise ValueError("missing field 'id'")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("missing or empty field 'question'")
    page = obj.get("page")
    if page is not None and (isinstance(page, bool) or not isinstance(page, int | str)):
        raise ValueError(f"field 'page' must be an integer, got {page!r}")
    try:
        page = int(page) if page is not None and str(page).strip() != "" else None
    except ValueError as e:
        raise ValueError(f"field 'page' must be an integer, got {page!r}") from e
    answerable = obj.get("answerable", True)
    if not isinstance(answerable, bool):
        raise ValueError(f"field 'answerable' must be true or false, got {answerable!r}")
    return Question(
        id=str(qid),
        question=text.strip(),
        reference=obj.get("reference") or None,
        page=page,
        source=obj.get("source") or None,
        answerable=answerable,
        kind=str(obj.get("kind") or ("normal" if answerable else "unanswerable")),
        faq_ticket=str(obj["faq_ticket"]) if obj.get("faq_ticket") not in (None, "") else None,
        extra={k: v for k, v in obj.items() if k not in _KNOWN},
    )


def load_questions(path: str | Path) -> tuple[list[Question], list[Problem]]:
    """Read a JSONL question file (through `ingest.loaders.read_jsonl`, the one JSONL reader).

    Args:
        path: The `.jsonl` file.

    Returns:
        The questions in file order, and the skipped lines with their reasons.

    Raises:
        QuestionFileError: The file is missing or unreadable, holds no question, or repeats an id.
    """
    path = Path(path)
    try:
        values, problems = read_jsonl(path)
    except UnreadableFileError as e:
        raise QuestionFileError(
            f"{path}: cannot read question file ({e.reason}): check the path") from e
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for n, value in values:
        try:
            q = _parse_line(value)
        except ValueError as e:
            problems.append(Problem(str(path), n, f"{e}; line skipped"))
            continue
        if q.id in seen:
            problems.append(Problem(
                str(path), n, f"duplicate id {q.id!r} (first on line {seen[q.id]}); line skipped"))
            continue
        seen[q.id] = n
        questions.append(q)
    problems.sort(key=lambda p: p.line)
    if not questions:
        why = "is empty" if not problems else f"has no valid line ({len(problems)} skipped)"
        raise QuestionFileError(
            f"{path}: question file {why}: write one JSON object per line with 'id' and 'question'"
        )
    return questions, problems


def load_harmful(path: str | Path) -> list[Question]:
    """Read a CSV of harmful requests (column `goal`) as questions of kind `harmful`.

    Ids are `harmful-<row>` with the 1-based data row number, stable for a given file.

    Raises:
        QuestionFileError: Missing/unreadable file, no `goal` column, or no rows.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "goal" not in reader.fieldnames:
                raise QuestionFileError(
                    f"{path}: harmful-request CSV has no 'goal' column (columns: "
                    f"{', '.join(reader.fieldnames or []) or 'none'}): add a 'goal' header"
                )
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise QuestionFileError(f"{path}: cannot read harmful-request CSV ({e})") from e
    questions = [
        Question(
            id=f"harmful-{i:03d}",
            question=row["goal"].strip(),
            answerable=False,
            kind=HARMFUL_KIND,
            extra={k: v for k, v in row.items() if k != "goal"},
        )
        for i, row in enumerate(rows, start=1)
        if (row.get("goal") or "").strip()
    ]
    if not questions:
        raise QuestionFileError(f"{path}: harmful-request CSV has no non-empty 'goal' row")
    return questions
