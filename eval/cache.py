"""Append-only JSONL caches in the run directory, so nothing is generated or judged twice.

`answers.jsonl` holds one record per (system, question id): the answer, its contexts and
citations. `scores.jsonl` holds RAGAS results per (system, question id, metric, judge). Every
record is written as one line, flushed and fsync'ed before the next question starts: a run killed
at any point loses at most the record being written, and a torn last line is ignored on reload.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ingest.loaders import read_jsonl


class JsonlCache:
    """A dict of records keyed by a tuple of fields, persisted as an append-only JSONL file.

    Args:
        path: The JSONL file (created on first write).
        key_fields: Record fields that together identify a record; a later record with the same
            key replaces an earlier one on reload.
    """

    def __init__(self, path: str | Path, key_fields: tuple[str, ...]) -> None:
        self.path = Path(path)
        self.key_fields = key_fields
        self.records: dict[tuple, dict] = {}
        self.torn_lines = 0
        if self.path.exists():
            values, problems = read_jsonl(self.path)
            # Only a write interrupted by a kill produces a broken line; the record is redone.
            self.torn_lines = len(problems)
            for _, record in values:
                self.records[self.key(record)] = record

    def key(self, record: dict) -> tuple:
        """The cache key of `record`."""
        return tuple(record[f] for f in self.key_fields)

    def get(self, *key) -> dict | None:
        """The record for `key`, or `None`."""
        return self.records.get(tuple(key))

    def __contains__(self, key: tuple) -> bool:
        return tuple(key) in self.records

    def __len__(self) -> int:
        return len(self.records)

    def put(self, record: dict) -> None:
        """Append `record` durably (one `write` of the whole line, then fsync) and remember it.

        The line goes out in a single `os.write` on an `O_APPEND` descriptor, so processes that
        answer different systems into the same run directory never interleave their lines.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # A torn last line from a killed run must not swallow this record's first bytes.
            if os.fstat(fd).st_size > 0 and not self._ends_with_newline():
                line = "\n" + line
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records[self.key(record)] = record

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


def answer_cache(run_dir: str | Path) -> JsonlCache:
    """Answers and contexts per (system, question id)."""
    return JsonlCache(Path(run_dir) / "answers.jsonl", ("system", "id"))


def score_cache(run_dir: str | Path) -> JsonlCache:
    """RAGAS scores per (system, question id, metric, judge)."""
    return JsonlCache(Path(run_dir) / "scores.jsonl", ("system", "id", "metric", "judge"))
