"""python eval/data/check_unanswerable.py [--home DIR]: check that the manual does not answer the in-domain unanswerable questions.

Every question of `eval/data/unanswerable_in_domain.jsonl` lists `checked_terms`: the words
and phrases an answer in the manual would have to use (a TV's weight: "weigh", "weight", "kg",
"lbs", ...). This script reads the manual's text with the project's PDF reader, searches every
page for every term (whole words; case, punctuation and line breaks aside), and retrieves the
question's top passages from an index of the manual. It writes, per question, which terms
occur on which pages (none, for a question that passes) and the top passages' pages, sections
and similarities to `eval/data/unanswerable_in_domain.check.jsonl` (the record of why each
question is unanswerable; no manual text is copied into it), and prints the top passage of
each question for a human to read.

A question whose term occurs in the manual fails: the manual may answer it after all (or the
term is too common, e.g. "depth" as in colour depth); read the page, then reword the question
or pick sharper terms. Exit 0 when every question passes, 1 when any fails.

    python eval/data/check_unanswerable.py --home runs/tv-home      # an index of the manual
    python eval/data/check_unanswerable.py --no-retrieval           # terms only (no index)

Without `--home` and without `--no-retrieval`, the manual is indexed into a temporary home.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from retrieval.errors import CasewiseError, UsageError, run_cli  # noqa: E402
from retrieval.text import normalise  # noqa: E402

DATA = Path(__file__).resolve().parent
DEFAULT_QUESTIONS = DATA / "unanswerable_in_domain.jsonl"
DEFAULT_MANUAL = REPO.parent / "shared" / "data" / "emanual" / "smart_tv_manual.pdf"
TOP_K = 3


class AnsweredByManualError(CasewiseError):
    """Some question's checked term occurs in the manual (exit 1)."""


def manual_pages(pdf: Path) -> dict[int, str]:
    """Page number -> the page's words (`retrieval.text.normalise`), read by ingest's loader.

    Raises:
        UsageError: The manual cannot be read.
    """
    from ingest.loaders import UnreadableFileError, load_file

    try:
        loaded = load_file(pdf)
    except (OSError, UnreadableFileError) as e:
        raise UsageError(f"{pdf}: cannot read the manual ({e})") from e
    pages: dict[int, list[str]] = {}
    for block in loaded.blocks:
        pages.setdefault(block.page or 0, []).append(block.text)
    return {p: f" {normalise(' '.join(texts))} " for p, texts in pages.items()}


def term_pages(term: str, pages: dict[int, str]) -> list[int]:
    """Pages on which `term` occurs as whole words (case and punctuation aside)."""
    phrase = f" {normalise(term)} "
    return sorted(p for p, text in pages.items() if phrase in text)


def check_terms(question: dict, pages: dict[int, str]) -> dict:
    """Where each of the question's `checked_terms` occurs; `passed` when none does.

    Raises:
        UsageError: The question lists no terms.
    """
    terms = question.get("checked_terms") or []
    if not terms:
        raise UsageError(f"{question.get('id')}: no 'checked_terms': list the words an answer "
                         "in the manual would have to use")
    found = [{"term": t, "pages": term_pages(t, pages)} for t in terms]
    return {"id": question["id"], "question": question["question"], "terms": found,
            "passed": not any(f["pages"] for f in found)}


def _searcher(home: str | None, manual: Path, tmp: str):
    from retrieval.search import open_searcher
    from retrieval.settings import Settings

    if home:
        return open_searcher(Settings.resolve(home=home))
    from ingest.pipeline import run as ingest

    settings = Settings.resolve(home=Path(tmp) / "home")
    ingest([manual], settings, progress=False)
    return open_searcher(settings)


def passage_ref(hit) -> dict:
    """Page, section and similarity of a retrieved passage (no manual text)."""
    return {"page": hit.chunk.page, "section": hit.chunk.section,
            "similarity": round(hit.similarity, 3) if hit.similarity is not None else None}


def _load(path: Path) -> list[dict]:
    from ingest.loaders import UnreadableFileError, read_jsonl

    try:
        values, problems = read_jsonl(path)
    except UnreadableFileError as e:
        raise UsageError(f"{path}: cannot read the question file ({e.reason})") from e
    if problems:
        raise UsageError(f"{problems[0]}: fix the question file")
    return [value for _, value in values]


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit codes follow `retrieval.errors` (0 pass, 1 a question failed)."""
    parser = argparse.ArgumentParser(
        prog="python eval/data/check_unanswerable.py",
        description="Check the in-domain unanswerable questions against the manual's text.",
        epilog="examples:\n  python eval/data/check_unanswerable.py --home runs/tv-home\n"
               "  python eval/data/check_unanswerable.py --no-retrieval",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("questions", nargs="?", type=Path, default=DEFAULT_QUESTIONS)
    parser.add_argument("--manual", type=Path, default=DEFAULT_MANUAL, help="the manual's PDF")
    parser.add_argument("--home", help="an index of the manual (default: index it into a "
                                       "temporary home)")
    parser.add_argument("--no-retrieval", action="store_true",
                        help="check the terms only; no index, no top passages")
    parser.add_argument("--out", type=Path, help="the check record (default: QUESTIONS with "
                                                 "the suffix .check.jsonl)")
    args = parser.parse_args(argv)
    return run_cli(lambda: _check(args))


def _check(args) -> int:
    questions = _load(args.questions)
    pages = manual_pages(args.manual)
    digest = hashlib.sha256(args.manual.read_bytes()).hexdigest()
    records = [check_terms(q, pages) for q in questions]
    if not args.no_retrieval:
        with tempfile.TemporaryDirectory() as tmp:
            searcher = _searcher(args.home, args.manual, tmp)
            for q, r in zip(questions, records, strict=True):
                hits = searcher.search(q["question"], k=TOP_K)
                r["top_passages"] = [passage_ref(h) for h in hits]
                if hits:
                    text = " ".join(hits[0].text.split())[:220]
                    print(f"{q['id']} top passage p.{hits[0].chunk.page}: {text}")
    out = args.out or args.questions.with_name(args.questions.stem + ".check.jsonl")
    stamp = {"manual": args.manual.name, "manual_sha256": digest,
             "checked_on": date.today().isoformat()}
    out.write_text("".join(json.dumps({**r, **stamp}, ensure_ascii=False) + "\n"
                           for r in records), encoding="utf-8")
    failed = [r for r in records if not r["passed"]]
    for r in failed:
        where = "; ".join(f"{t['term']!r} on p.{t['pages']}" for t in r["terms"] if t["pages"])
        print(f"FAIL {r['id']}: {where}", file=sys.stderr)
    print(f"{len(records) - len(failed)} of {len(records)} questions: no checked term occurs "
          f"in {args.manual.name}; record: {out}")
    if failed:
        raise AnsweredByManualError(
            f"{len(failed)} question(s) use terms the manual contains: "
            f"{', '.join(r['id'] for r in failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
