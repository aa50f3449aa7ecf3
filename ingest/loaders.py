"""Loaders: turn one file (PDF, FAQ CSV/JSONL, Markdown, text) into page- and section-tagged blocks.

A loader never raises for a single bad page or row: it records a warning and goes on. A file
that cannot be read at all raises `UnreadableFileError` (the run reports it as *failed*); a
readable file with nothing to index raises `NoTextError` (reported as *skipped*). Both carry a
`reason` for the summary table.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pypdf
from pypdf.errors import DependencyError, PyPdfError

from retrieval.errors import UsageError
from retrieval.types import ChunkType

PDF_SUFFIXES = {".pdf"}
FAQ_SUFFIXES = {".csv", ".jsonl"}
TEXT_SUFFIXES = {".md", ".markdown", ".txt"}
SUPPORTED_SUFFIXES = PDF_SUFFIXES | FAQ_SUFFIXES | TEXT_SUFFIXES

NO_TEXT_LAYER = "no text layer (scanned image? OCR is not enabled)"
FAQ_REQUIRED = ("question", "answer")
FAQ_OPTIONAL = ("id", "section", "page")

# pypdf logs recoverable damage ("rebuild xref", ...) as warnings on stderr; the run reports
# what matters per file instead, so keep the console readable.
logging.getLogger("pypdf").setLevel(logging.ERROR)


class UnreadableFileError(UsageError):
    """A file that cannot be read at all (encrypted, damaged, empty, wrong format, bad columns)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class NoTextError(UnreadableFileError):
    """A readable file with nothing to index (e.g. a PDF whose pages are all images)."""


@dataclass(frozen=True)
class Block:
    """A run of text from one page and one section: the unit chunking works on.

    Attributes:
        text: Cleaned text.
        page: 1-based page (PDF) or the FAQ row's `page`; `None` when unknown.
        section: Section heading (outline path joined with " > ", or a heading line).
        metadata: Scalar extras (FAQ id, question, answer, extra columns).
    """

    text: str
    page: int | None = None
    section: str | None = None
    metadata: dict = field(default_factory=dict)


@dataclass
class LoadedFile:
    """What a loader read from one file.

    Attributes:
        path: The file.
        type: `"doc"` or `"faq"`; FAQ blocks become one chunk each.
        blocks: Text blocks in reading order.
        warnings: Problems that did not stop the file (pages without text, bad rows).
        pages: Number of PDF pages, else `None`.
    """

    path: Path
    type: ChunkType
    blocks: list[Block]
    warnings: list[str] = field(default_factory=list)
    pages: int | None = None


def load_file(path: Path, data: bytes | None = None) -> LoadedFile:
    """Load one file by its suffix.

    Args:
        path: File to load; its suffix picks the loader.
        data: The file's bytes when already read (the pipeline hashes them first).

    Returns:
        The blocks and warnings of the file.

    Raises:
        UnreadableFileError: The file cannot be read; `reason` says why.
        NoTextError: The file is readable but has no text to index.
    """
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise NoTextError(
            path, f"unsupported file type {suffix or '(none)'} "
                  f"(supported: {' '.join(sorted(SUPPORTED_SUFFIXES))})",
        )
    if data is None:
        data = path.read_bytes()
    if not data.strip():
        raise UnreadableFileError(path, "empty file")
    if suffix in PDF_SUFFIXES:
        return load_pdf(path, data)
    text = _decode(path, data)
    if suffix == ".csv":
        return load_faq_csv(path, text)
    if suffix == ".jsonl":
        return load_faq_jsonl(path, text)
    if suffix in {".md", ".markdown"}:
        return _text_file(path, markdown_sections(text))
    return _text_file(path, heading_sections(text.splitlines()))


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UnreadableFileError(
            path, f"not UTF-8 text (byte {e.start}): save the file as UTF-8 and re-run",
        ) from e


def _text_file(path: Path, sections: list[tuple[str | None, str]]) -> LoadedFile:
    blocks = [Block(text, None, section) for section, text in sections if text.strip()]
    if not blocks:
        raise NoTextError(path, "no text")
    return LoadedFile(path, "doc", blocks)


# --- PDF ---------------------------------------------------------------------------------------

def load_pdf(path: Path, data: bytes) -> LoadedFile:
    """Read a PDF page by page with sections from its outline, else from heading-like lines.

    Raises:
        UnreadableFileError: Encrypted (and the empty password does not open it), damaged, or
            not a PDF at all.
        NoTextError: No page has a text layer.
    """
    head = data[:1024]
    if b"%PDF-" not in head:
        raise UnreadableFileError(
            path, f"not a PDF (no %PDF header; the file starts with {data[:16]!r})",
        )
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")
            except DependencyError as e:
                raise UnreadableFileError(path, f"encrypted ({e})") from e
            if not opened:
                raise UnreadableFileError(path, "encrypted (password required)")
        pages = list(reader.pages)
    except PyPdfError as e:
        raise UnreadableFileError(path, f"unreadable: {e}") from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        # pypdf surfaces some structural damage as plain Python errors.
        raise UnreadableFileError(path, f"unreadable: {type(e).__name__}: {e}") from e

    warnings: list[str] = []
    texts: list[str] = []
    for number, page in enumerate(pages, start=1):
        try:
            text = page.extract_text() or ""
        except (PyPdfError, ValueError, KeyError, TypeError, AttributeError) as e:
            warnings.append(f"page {number}: text extraction failed ({e})")
            text = ""
        if not text.strip():
            warnings.append(f"page {number}: {NO_TEXT_LAYER}")
        texts.append(text)
    if not any(t.strip() for t in texts):
        raise NoTextError(path, NO_TEXT_LAYER)
    texts = clean_pages(texts)

    entries, outline_warnings = _outline_entries(reader)
    warnings.extend(outline_warnings)
    page_sections = outline_sections(texts, entries) if entries else None
    if page_sections is None and entries:
        warnings.append("outline titles do not match the page text (mistitled outline?); "
                        "sections taken from heading lines instead")
    if page_sections is None:
        page_sections = []
        carry: str | None = None
        for text in texts:
            sections = heading_sections(text.splitlines(), carry)
            page_sections.append(sections)
            if sections:
                carry = sections[-1][0]
    blocks = [
        Block(text, number, section)
        for number, sections in enumerate(page_sections, start=1)
        for section, text in sections
        if text.strip()
    ]
    if not blocks:
        raise NoTextError(path, NO_TEXT_LAYER)
    return LoadedFile(path, "doc", blocks, warnings, pages=len(pages))


_PAGE_NUMBER = re.compile(
    r"^\s*(?:page\s*)?[-–—]?\s*\d+\s*(?:of\s*\d+)?\s*[-–—]?\s*$", re.I)


def clean_pages(texts: list[str]) -> list[str]:
    """Drop page-number lines and running headers/footers; rejoin hyphenated line breaks.

    A first or last line of a page that (digits masked) is also the first or last line of more
    than half of the pages of a document of three or more pages is a running header or footer,
    not content: it would otherwise repeat in every chunk and pull unrelated pages together in
    keyword search. Only page edges are considered, so repeated body text is never dropped.
    """
    def mask(line: str) -> str:
        return re.sub(r"\d+", "#", line.strip().lower())

    pages = [[line.rstrip() for line in t.replace("\x00", "").splitlines() if line.strip()]
             for t in texts]
    recurring: set[str] = set()
    if len(pages) >= 3:
        counts: Counter[str] = Counter()
        for lines in pages:
            counts.update({mask(line) for line in lines[:1] + lines[-1:]})
        recurring = {m for m, c in counts.items() if c > len(pages) / 2}
    cleaned = []
    for lines in pages:
        edge = {0, len(lines) - 1}
        kept = [
            line for i, line in enumerate(lines)
            if not _PAGE_NUMBER.match(line) and not (i in edge and mask(line) in recurring)
        ]
        # Never let header/footer removal empty a page that has text of its own.
        text = "\n".join(kept if any(c.isalpha() for c in "".join(kept)) else lines)
        cleaned.append(re.sub(r"(\w)-\n([a-z])", r"\1\2", text))
    return cleaned


def _outline_entries(reader: pypdf.PdfReader) -> tuple[list[tuple[str, int]], list[str]]:
    """Flatten the outline into `(title path, 0-based page)` in document order.

    Entries whose destination cannot be resolved (broken or external links, odd outlines) are
    dropped with one warning; titles are whitespace-normalised.
    """
    try:
        outline = reader.outline
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError) as e:
        return [], [f"outline unreadable ({e}); using heading lines instead"]
    entries: list[tuple[str, int]] = []
    broken = 0

    def walk(items: list, parents: list[str]) -> None:
        nonlocal broken
        last_title: str | None = None
        for item in items:
            if isinstance(item, list):
                walk(item, [*parents, last_title] if last_title else parents)
                continue
            title = " ".join(str(getattr(item, "title", "") or "").split())
            try:
                page = reader.get_destination_page_number(item)
            except (PyPdfError, ValueError, KeyError, TypeError, AttributeError):
                page = None
            if not title or page is None or not 0 <= page < len(reader.pages):
                broken += 1
                continue
            last_title = title
            entries.append((" > ".join([*parents, title]), page))

    walk(outline, [])
    warnings = [f"{broken} outline entries without a valid page were ignored"] if broken else []
    return entries, warnings


def outline_sections(
    texts: list[str], entries: list[tuple[str, int]],
) -> list[list[tuple[str | None, str]]] | None:
    """Split each page's text at the outline entries that point to it.

    An entry's title is looked for in its page's text after the previous entry's position; when
    it is not there (titles that differ from the printed heading) the entry starts where the
    previous one did, so the outline's order is kept and no text moves to another page. When
    fewer than half of the titles are found, the outline does not describe the text (mistitled)
    and `None` is returned so the caller can fall back to heading lines. Text before the first
    entry of a page belongs to the section carried over from the previous page.

    Returns:
        Per page, `(section, text)` segments in reading order; `None` for a mistitled outline.
    """
    by_page: dict[int, list[str]] = {}
    # Outlines are not always in page order; a stable sort keeps their order within a page.
    for title, page in sorted(entries, key=lambda e: e[1]):
        by_page.setdefault(page, []).append(title)
    result: list[list[tuple[str | None, str]]] = []
    carry: str | None = None
    found = 0
    for index, text in enumerate(texts):
        starts: list[tuple[int, str | None]] = [(0, carry)]
        for title in by_page.get(index, []):
            leaf = title.rsplit(" > ", 1)[-1]
            pattern = r"\s+".join(re.escape(w) for w in leaf.split())
            # Prefer the title as a line of its own: "Guest network" must not match inside
            # the chapter heading "Guest Network and Parental Controls" above it.
            cursor = starts[-1][0]
            match = (re.compile(rf"^[ \t]*{pattern}[ \t]*$", re.I | re.M).search(text, cursor)
                     or re.compile(pattern, re.I).search(text, cursor))
            found += bool(match)
            starts.append((match.start() if match else starts[-1][0], title))
        pieces = [
            (title, text[start:starts[i + 1][0] if i + 1 < len(starts) else len(text)])
            for i, (start, title) in enumerate(starts)
        ]
        result.append(_merge_segments(pieces))
        carry = starts[-1][1]
    if found * 2 < len(entries):
        return None
    return result


def _merge_segments(pieces: list[tuple[str | None, str]]) -> list[tuple[str | None, str]]:
    """Drop segments holding only their own heading; glue letterless scraps to the next one.

    A heading-only segment is a chapter title directly followed by its first subsection (whose
    section path names the chapter anyway); a scrap without letters is a section number or a
    stray figure that belongs with what follows.
    """
    out: list[tuple[str | None, str]] = []
    pending = ""
    for title, raw in pieces:
        segment = (pending + "\n" + raw.strip()).strip() if pending else raw.strip()
        pending = ""
        if not segment:
            continue
        if not any(c.isalpha() for c in segment):
            pending = segment
            continue
        leaf = (title or "").rsplit(" > ", 1)[-1]
        if title and _only_heading(segment, leaf):
            continue
        out.append((title, segment))
    if pending:
        if out:
            out[-1] = (out[-1][0], out[-1][1] + "\n" + pending)
        else:
            out.append((pieces[-1][0], pending))
    return out


def _only_heading(segment: str, title: str) -> bool:
    words = re.findall(r"\w+", segment.lower())
    return words == re.findall(r"\w+", title.lower()) or not words


_TERMINAL = (".", ",", ";", ":", "!", "?", ")", "]", "\"", "'")


def is_heading_line(line: str, previous: str | None, width: int) -> bool:
    """Guess whether `line` is a heading in extracted text without an outline.

    A heading is short (at most 10 words, 80 characters, clearly shorter than the page's longest
    line, so lines of narrow columns do not qualify), starts with a capital or a digit, does
    not end like a sentence or contain a sentence break, and does not continue a wrapped
    paragraph (the previous line ended a sentence, was short, or there is none).
    """
    stripped = line.strip()
    words = stripped.split()
    if not words or len(words) > 10 or len(stripped) > 80 or len(stripped) > 0.7 * width:
        return False
    if not (stripped[0].isupper() or stripped[0].isdigit()) or stripped.endswith(_TERMINAL):
        return False
    if not any(c.isalpha() for c in stripped) or re.search(r"[.!?]\s+[A-Z]", stripped):
        return False
    if previous is None:
        return True
    prev = previous.strip()
    return prev.endswith((".", "!", "?", ":")) or len(prev) < 0.6 * width


def heading_sections(lines: list[str], carry: str | None = None) -> list[tuple[str | None, str]]:
    """Split lines into `(section, text)` at heading-like lines (see `is_heading_line`).

    Args:
        lines: The lines of one page (or one text file).
        carry: The section in effect before the first line (from the previous page).
    """
    width = max((len(line.strip()) for line in lines), default=0)
    sections: list[tuple[str | None, list[str]]] = [(carry, [])]
    previous: str | None = None
    for line in lines:
        if not line.strip():
            continue
        if is_heading_line(line, previous, width):
            title = " ".join(line.split())
            sections.append((title, [title]))
        else:
            sections[-1][1].append(line.strip())
        previous = line
    return _merge_segments([(section, "\n".join(body)) for section, body in sections])


def markdown_sections(text: str) -> list[tuple[str | None, str]]:
    """Split Markdown at `#` headings; nested headings give a path ("Setup > Wi-Fi")."""
    path: list[tuple[int, str]] = []
    sections: list[tuple[str | None, list[str]]] = [(None, [])]
    in_code = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"^(#{1,6})\s+(.+?)\s*#*\s*$", line)
        if match:
            level, title = len(match.group(1)), match.group(2).strip()
            path = [(lv, t) for lv, t in path if lv < level] + [(level, title)]
            sections.append((" > ".join(t for _, t in path), [title]))
        else:
            sections[-1][1].append(line)
    return _merge_segments([(section, "\n".join(body)) for section, body in sections])


# --- FAQ / ticket history ------------------------------------------------------------------------

def load_faq_csv(path: Path, text: str) -> LoadedFile:
    """Read a CSV of answered tickets: one block per row.

    Raises:
        UnreadableFileError: `question` or `answer` column missing (the message lists the
            columns found), or not parseable as CSV.
    """
    try:
        reader = csv.DictReader(io.StringIO(text))
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        _check_columns(path, columns)
        reader.fieldnames = columns
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as e:
        raise UnreadableFileError(path, f"not valid CSV ({e})") from e
    return _faq_file(path, rows, "line")


def load_faq_jsonl(path: Path, text: str) -> LoadedFile:
    """Read JSON Lines of answered tickets; a malformed line is reported by number and skipped.

    Raises:
        UnreadableFileError: No line is valid, or no object has `question` and `answer`.
    """
    rows: list[tuple[int, dict]] = []
    warnings: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            warnings.append(f"line {number}: malformed JSON ({e.msg}); line skipped")
            continue
        if not isinstance(obj, dict):
            warnings.append(f"line {number}: expected a JSON object, got "
                            f"{type(obj).__name__}; line skipped")
            continue
        obj = {str(k).strip().lower(): v for k, v in obj.items()}
        seen.update(obj)
        rows.append((number, obj))
    if not rows:
        raise UnreadableFileError(path, "no valid JSON line; " + "; ".join(warnings[:3]))
    if not any(all(c in obj for c in FAQ_REQUIRED) for _, obj in rows):
        _check_columns(path, sorted(seen))
    loaded = _faq_file(path, rows, "line")
    loaded.warnings[:0] = warnings
    return loaded


def _check_columns(path: Path, columns: list[str]) -> None:
    missing = [c for c in FAQ_REQUIRED if c not in columns]
    if missing:
        found = ", ".join(columns) if columns else "none"
        raise UnreadableFileError(
            path,
            f"missing required column(s) {', '.join(missing)} (found: {found}); an FAQ file "
            f"needs 'question' and 'answer', optionally 'id', 'section', 'page'",
        )


def _faq_file(path: Path, rows: list[tuple[int, dict]], unit: str) -> LoadedFile:
    blocks: list[Block] = []
    warnings: list[str] = []
    for number, row in rows:
        question = _scalar(row.get("question"))
        answer = _scalar(row.get("answer"))
        if not isinstance(question, str) or not question.strip() or \
                not isinstance(answer, str) or not answer.strip():
            warnings.append(f"{unit} {number}: empty or missing question/answer; row skipped")
            continue
        page = _page(row.get("page"))
        if row.get("page") not in (None, "") and page is None:
            warnings.append(f"{unit} {number}: page {row.get('page')!r} is not a number; ignored")
        section = str(_scalar(row.get("section")) or "").strip() or None
        metadata = {"question": question.strip(), "answer": answer.strip()}
        if row.get("id") not in (None, ""):
            metadata["faq_id"] = str(row["id"])
        for key, value in row.items():
            if key in FAQ_REQUIRED or key in FAQ_OPTIONAL or not key:
                continue
            value = _scalar(value)
            if value not in (None, ""):
                metadata[key] = value
        blocks.append(Block(
            f"Question: {question.strip()}\nAnswer: {answer.strip()}",
            page, section, metadata,
        ))
    if not blocks:
        raise NoTextError(path, "no row with both a question and an answer")
    return LoadedFile(path, "faq", blocks, warnings)


def _scalar(value: object) -> str | int | float | bool | None:
    """Chroma metadata holds scalars only: lists and objects are kept as JSON text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _page(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None
