"""Loaders: one file (PDF, ticket history, Markdown, text) in, page/section-tagged blocks out.

Also the readers every other package uses for these formats: `read_faq` (ticket histories: FAQ
CSV/JSONL and help-desk exports, for ingest and `python -m finetune data`), `read_jsonl` (every
JSON Lines file of the project, with line numbers), `csv_records` and `decode_text` (the one
encoding policy). Problems with single records are `Problem`s (`file:line: reason`).

A loader never raises for a single bad page or row: it records a warning and goes on. A file
that cannot be read at all raises `UnreadableFileError` (the run reports it as *failed*); a
readable file with nothing to index raises `NoTextError` (reported as *skipped*). Both carry a
`reason` for the summary table.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ingest import exports
from ingest.ocr import INSTALL_HINT, MIN_CONFIDENCE, ON_MIN_WORDS, PageOcr, PageText
from ingest.redact import redact
from ingest.tables import read_tables, tabular_pages
from retrieval.errors import UsageError
from retrieval.types import ChunkType

if TYPE_CHECKING:
    import pypdf

PDF_SUFFIXES = {".pdf"}
# Ticket histories: FAQ CSV/JSONL, conversation JSONL, Freshdesk CSV, Zendesk JSON.
FAQ_SUFFIXES = {".csv", ".jsonl", ".ndjson", ".json"}
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

    def __reduce__(self):
        # Raised in the process that reads a file (`ingest.pipeline`) and re-raised in the run's.
        return type(self), (self.path, self.reason)


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
        redactions: Identifiers replaced in a ticket history, by kind (`ingest.redact`).
        ocr_pages: 1-based pages whose text OCR read.
        ocr_cached: How many of those came from the OCR cache.
        ocr_candidates: Pages with (almost) no text layer, which an OCR setting would change.
        tables: Ruled tables found, whose rows are kept together (`ingest.tables`).
    """

    path: Path
    type: ChunkType
    blocks: list[Block]
    warnings: list[str] = field(default_factory=list)
    pages: int | None = None
    redactions: dict[str, int] = field(default_factory=dict)
    ocr_pages: list[int] = field(default_factory=list)
    ocr_cached: int = 0
    ocr_candidates: int = 0
    tables: int = 0


def redacts(path: Path, redact: bool | None) -> bool:
    """Whether `path` is redacted: `redact` when given, else only ticket histories and exports.

    Manuals are off by default: they hold no customer's data, and their support phone numbers
    or example addresses are content.
    """
    return redact if redact is not None else path.suffix.lower() in FAQ_SUFFIXES


def load_file(path: Path, data: bytes | None = None, *, redact: bool | None = None,
              ocr: PageOcr | None = None) -> LoadedFile:
    """Load one file by its suffix.

    Args:
        path: File to load; its suffix picks the loader.
        data: The file's bytes when already read (the pipeline hashes them first).
        redact: Redact customers' identifiers (`ingest.redact`); `None` redacts ticket
            histories and help-desk exports and leaves manuals as they are.
        ocr: Reads PDF pages without a text layer (`ingest.ocr.PageOcr`); `None` reads none.

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
    if suffix in FAQ_SUFFIXES:
        return load_faq(path, data, redact=redacts(path, redact))
    if suffix in PDF_SUFFIXES:
        loaded = load_pdf(path, data, ocr)
    else:
        text, note = decode_text(path, data)
        sections = (markdown_sections(text) if suffix in {".md", ".markdown"}
                    else heading_sections(text.splitlines()))
        loaded = _text_file(path, sections)
        if note:
            loaded.warnings.insert(0, note.brief)
    if redacts(path, redact):
        counts: Counter[str] = Counter()
        loaded.blocks = [replace(b, text=redact_text(b.text, counts)) for b in loaded.blocks]
        loaded.redactions = dict(counts)
    return loaded


def _text_file(path: Path, sections: list[tuple[str | None, str]]) -> LoadedFile:
    blocks = [Block(text, None, section) for section, text in sections if text.strip()]
    if not blocks:
        raise NoTextError(path, "no text")
    return LoadedFile(path, "doc", blocks)


# --- PDF ---------------------------------------------------------------------------------------

def load_pdf(path: Path, data: bytes, ocr: PageOcr | None = None) -> LoadedFile:
    """Read a PDF page by page with sections from its outline, else from heading-like lines.

    Args:
        path: The file, for messages.
        data: Its bytes.
        ocr: Reads pages without a text layer (`ingest.ocr`); `None` reads none.

    Raises:
        UnreadableFileError: Encrypted (and the empty password does not open it), damaged, or
            not a PDF at all.
        NoTextError: No page has a text layer (and OCR, if any, read none).
    """
    # Imported here: pypdf takes 0.1 s to import, and a re-run over unchanged files reads none.
    import pypdf
    from pypdf.errors import DependencyError, PyPdfError

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
        texts.append(text)
    tables = read_tables(data, tabular_pages(pages))
    for index, (text, _) in tables.items():
        texts[index] = text
    candidates = sum(len(t.split()) < ON_MIN_WORDS for t in texts)
    texts, ocr_pages, ocr_cached, no_text = _ocr_pages(data, texts, ocr, warnings)
    if not any(t.strip() for t in texts):
        raise NoTextError(path, no_text)
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
    def page_metadata(number: int) -> dict:
        metadata: dict = {"ocr": True} if number in ocr_pages else {}
        if number - 1 in tables:
            metadata["tables"] = tables[number - 1][1]
        return metadata

    blocks = [
        Block(text, number, section, page_metadata(number))
        for number, sections in enumerate(page_sections, start=1)
        for section, text in sections
        if text.strip()
    ]
    if not blocks:
        raise NoTextError(path, no_text)
    loaded = LoadedFile(path, "doc", blocks, warnings, pages=len(pages))
    loaded.ocr_pages, loaded.ocr_cached = ocr_pages, ocr_cached
    loaded.tables = sum(n for _, n in tables.values())
    loaded.ocr_candidates = candidates
    return loaded


def _ocr_pages(data: bytes, texts: list[str], ocr: PageOcr | None, warnings: list[str],
               ) -> tuple[list[str], list[int], int, str]:
    """Read the pages OCR wants; warn per page without text, or read with low confidence.

    Returns:
        The page texts, the 1-based pages read by OCR, how many of them came from the cache,
        and the reason a page without a text layer has no text (for a file with no text).
    """
    wanted = [i for i, text in enumerate(texts) if ocr is not None and ocr.wanted(text)]
    if ocr is None or ocr.mode == "off" or all(t.strip() for t in texts):
        no_text = NO_TEXT_LAYER
    elif ocr.problem:
        no_text = f"no text layer (scanned image? OCR is not available: {ocr.problem}; " \
                  f"{INSTALL_HINT})"
    else:
        no_text = "no text layer, and OCR found no text"
    read = ocr.read(data, wanted) if wanted else {}
    texts = list(texts)
    ocr_pages: list[int] = []
    cached = 0
    for index, text in enumerate(texts):
        number, result = index + 1, read.get(index)
        if isinstance(result, PageText) and len(result.text.split()) > len(text.split()):
            texts[index] = result.text
            ocr_pages.append(number)
            cached += result.cached
            if result.confidence is not None and result.confidence < MIN_CONFIDENCE:
                warnings.append(f"page {number}: read by OCR with confidence "
                                f"{result.confidence:.0f} (below {MIN_CONFIDENCE:.0f}): the "
                                "text may be misread; check the scan")
        elif not text.strip():
            why = f"no text layer, and OCR could not read it: {result}" \
                if isinstance(result, str) else no_text
            warnings.append(f"page {number}: {why}")
    return texts, ocr_pages, cached, no_text


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
    from pypdf.errors import PyPdfError

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


# --- text, JSON Lines and CSV records ------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """A record that was skipped or read with a caveat, reported as `file:line: reason`.

    Attributes:
        file: The file, as given.
        line: 1-based line where the record starts (CSV, JSONL), or the record's number in a
            JSON document when `unit` is `"record"`.
        reason: What was wrong and what happened to the record.
        unit: `"line"` or `"record"`.
    """

    file: str
    line: int
    reason: str
    unit: str = "line"

    @property
    def brief(self) -> str:
        """The report without the file name (`line 4: ...`), for per-file warning lists."""
        return f"{self.unit} {self.line}: {self.reason}"

    def __str__(self) -> str:
        if self.unit == "line":
            return f"{self.file}:{self.line}: {self.reason}"
        return f"{self.file}: {self.brief}"


_UTF8_MULTIBYTE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")


def decode_text(path: Path, data: bytes) -> tuple[str, Problem | None]:
    """Decode a text file by the one encoding policy of every casewise reader.

    UTF-8, with or without a byte-order mark, is read as it is (and UTF-16 with a byte-order
    mark, as spreadsheets save "Unicode text"). A file that is not UTF-8 is read as Windows-1252,
    the superset of Latin-1 that Excel and older Windows tools write: the text keeps its accents
    and a problem says so, naming the first line that is not UTF-8. A file mostly in UTF-8 with a
    few damaged bytes keeps UTF-8 (the damaged bytes become U+FFFD) rather than turning every
    accent into mojibake.

    Args:
        path: The file, for messages.
        data: Its bytes.

    Returns:
        The text and, when it was not clean UTF-8, the problem that says how it was read.

    Raises:
        UnreadableFileError: Binary data (NUL bytes), or bytes that no policy decodes.
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), None
        except UnicodeDecodeError as e:
            raise UnreadableFileError(path, f"damaged UTF-16 text ({e.reason})") from e
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        bad_at, line = e.start, data.count(b"\n", 0, e.start) + 1
    if b"\x00" in data:
        raise UnreadableFileError(path, "binary data (NUL bytes), not a text file")
    bad = f"not UTF-8 (byte 0x{data[bad_at]:02x})"
    if _UTF8_MULTIBYTE.search(data):
        return data.decode("utf-8-sig", errors="replace"), Problem(
            str(path), line, f"{bad}: read as UTF-8 with the damaged bytes replaced by \ufffd")
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError as e:
        raise UnreadableFileError(
            path, f"line {line} is {bad} nor Windows-1252/Latin-1 text: save the file as UTF-8 "
                  "and re-run",
        ) from e
    return text, Problem(
        str(path), line, f"{bad}: read as Windows-1252 (Latin-1); if accented letters look "
                         "wrong, save the file as UTF-8")


def read_text(path: Path, data: bytes | None = None, *,
              allow_empty: bool = False) -> tuple[str, Problem | None]:
    """Read and decode a text file (see `decode_text`).

    Args:
        path: The file.
        data: Its bytes, when already read.
        allow_empty: Return `""` for an empty (or whitespace-only) file instead of raising.

    Raises:
        UnreadableFileError: Missing, unreadable, empty (unless allowed), or not decodable.
    """
    path = Path(path)
    if data is None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UnreadableFileError(path, "does not exist") from None
        except OSError as e:
            raise UnreadableFileError(path, f"cannot read ({e.strerror or e})") from e
    if not data.strip():
        if allow_empty:
            return "", None
        raise UnreadableFileError(path, "empty file")
    return decode_text(path, data)


def read_jsonl(path: str | Path, data: bytes | None = None,
               ) -> tuple[list[tuple[int, object]], list[Problem]]:
    """The one JSON Lines reader: every parsed line with its number, every broken line reported.

    Blank lines are ignored. Lines are split at `\\n` only (a JSON string may hold U+2028, which
    `str.splitlines` would split at); a trailing `\\r` is dropped. Callers check the shape of
    each value and report their own problems with the same line numbers.

    Args:
        path: The file.
        data: Its bytes, when already read.

    Returns:
        `(line, value)` for every valid line (none for an empty file: the caller decides
        whether that is an error), and one problem per malformed line (plus the encoding note
        of `decode_text`, if any).

    Raises:
        UnreadableFileError: Missing, unreadable or undecodable file.
    """
    path = Path(path)
    text, note = read_text(path, data, allow_empty=True)
    values: list[tuple[int, object]] = []
    problems = [note] if note else []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            values.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            problems.append(Problem(str(path), number,
                                    f"malformed JSON ({e.msg} at column {e.colno}); line skipped"))
    return values, problems


def _physical_lines(text: str) -> list[str]:
    return re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", text)


def csv_records(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]], list[Problem]]:
    """Read CSV text into `(line, row)` records keyed by the lower-cased header.

    The line-number convention of every CSV reader: a record is numbered by the line it starts
    on (a quoted field may span lines). Ragged rows: a row with more fields than the header is
    skipped (an unquoted comma shifted its columns); a row with fewer fields reads the missing
    trailing fields as empty. A record the csv module cannot parse (a quote that is never
    closed, a NUL byte, a field over the size limit) is reported and reading resumes on the line
    after the one it started on, so a stray quote does not swallow the rest of the file.

    Args:
        path: The file, for messages.
        text: Its decoded text.

    Returns:
        The header (stripped, lower-cased), the records, and the problems.
    """
    lines = _physical_lines(text)
    header: list[str] | None = None
    records: list[tuple[int, dict]] = []
    problems: list[Problem] = []
    offset = 0  # index into `lines` where the current reader starts
    while offset < len(lines):
        reader = csv.reader(iter(lines[offset:]), strict=True)
        start = offset + 1  # 1-based line of the record about to be read
        try:
            for row in reader:
                line, start = start, offset + reader.line_num + 1
                if not any(cell.strip() for cell in row):
                    continue
                if header is None:
                    header = [cell.strip().lower() for cell in row]
                    continue
                if len(row) > len(header) and any(c.strip() for c in row[len(header):]):
                    problems.append(Problem(
                        str(path), line, f"more fields ({len(row)}) than the header "
                        f"({len(header)}): a comma in an unquoted field?; row skipped"))
                    continue
                row = row + [""] * (len(header) - len(row))
                records.append((line, {h: v for h, v in zip(header, row, strict=False) if h}))
            break
        except csv.Error as e:
            why = ("a quoted field opened here is never closed" if "unexpected end" in str(e)
                   else f"not valid CSV ({e})")
            problems.append(Problem(str(path), start, f"{why}; record skipped"))
            offset = start  # resume on the line after the one the bad record started on
    return header or [], records, problems


# --- FAQ / ticket history ------------------------------------------------------------------------

@dataclass(frozen=True)
class FaqRow:
    """One answered question of a ticket history, with where it came from.

    Attributes:
        question: The customer's question.
        answer: The answer that solved it.
        line: Line where the record starts (or its record number in a JSON document).
        id: Ticket or row id, when the file has one.
        section: Manual section the answer comes from, when known.
        page: 1-based manual page the answer comes from, when known.
        extra: Other scalar fields (extra CSV columns; an export's `subject`, `status`,
            `format`), kept as chunk metadata.
    """

    question: str
    answer: str
    line: int
    id: str | None = None
    section: str | None = None
    page: int | None = None
    extra: dict = field(default_factory=dict)


def read_faq(path: str | Path, data: bytes | None = None) -> tuple[list[FaqRow], list[Problem]]:
    """The one reader of ticket histories, behind `python -m ingest` and `python -m finetune data`.

    Formats, by suffix and content:

    - `.csv` with `question` and `answer` columns (optionally `id`, `section`, `page`; any other
      column is kept in `extra`), or a Freshdesk conversation export (`Ticket ID`, `Body`,
      `Incoming`; see `ingest.exports`);
    - `.jsonl` / `.ndjson`: one object a line with the same fields, or one conversation a line
      (`[{role, text}]`), or one Zendesk ticket a line (the kind is that of the first valid
      line);
    - `.json`: a Zendesk ticket export (`{"tickets": [...]}`, a list of tickets, or one ticket
      a line).

    Column and key names are case-insensitive. Pages are 1-based: a page that is not a whole
    number of at least 1 is reported and ignored (the row is kept). Text is decoded by
    `decode_text`; CSV records follow `csv_records`. Every skipped record is reported with its
    line (or record) number; the rest are returned.

    Args:
        path: The history file.
        data: Its bytes, when already read.

    Returns:
        The rows, and the problems in file order.

    Raises:
        UnreadableFileError: Missing, empty, undecodable or unsupported file; required columns
            missing (the message lists the columns found).
        NoTextError: A readable file without one usable question/answer pair.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FAQ_SUFFIXES:
        raise UnreadableFileError(
            path, f"unsupported ticket history type {suffix or '(none)'} (supported: "
                  f"{' '.join(sorted(FAQ_SUFFIXES))})")
    if suffix == ".csv":
        rows, problems = _read_csv(path, data)
    elif suffix == ".json":
        rows, problems = _read_json_document(path, data)
    else:
        rows, problems = _read_jsonl_history(path, data)
    if not rows:
        detail = f" ({len(problems)} problems; first: {problems[0].brief})" if problems else ""
        raise NoTextError(path, f"no record with both a question and an answer{detail}")
    return rows, sorted(problems, key=lambda p: p.line)


def _check_columns(path: Path, columns: list[str]) -> None:
    missing = [c for c in FAQ_REQUIRED if c not in columns]
    if missing:
        found = ", ".join(c for c in columns if c) or "none"
        raise UnreadableFileError(
            path,
            f"missing required column(s) {', '.join(missing)} (found: {found}); an FAQ file "
            f"needs 'question' and 'answer', optionally 'id', 'section', 'page' (or is a "
            f"help-desk export: see docs/ingest.md)",
        )


def _read_csv(path: Path, data: bytes | None) -> tuple[list[FaqRow], list[Problem]]:
    text, note = read_text(path, data)
    header, records, problems = csv_records(path, text)
    if note:
        problems.insert(0, note)
    if exports.is_freshdesk(header):
        return _tickets(path, exports.freshdesk_tickets(records), problems, "line")
    _check_columns(path, header)
    rows = [row for line, record in records
            if (row := _faq_row(path, line, record, problems, "line")) is not None]
    return rows, problems


def _read_jsonl_history(path: Path, data: bytes | None) -> tuple[list[FaqRow], list[Problem]]:
    values, problems = read_jsonl(path, data)
    if not values:
        raise UnreadableFileError(path, "no valid JSON line; " + "; ".join(
            p.brief for p in problems[:3]) if problems else "empty file")
    first = values[0][1]
    if exports.is_conversation(first) or exports.is_zendesk_ticket(first):
        parse = exports.conversation if exports.is_conversation(first) else exports.zendesk_ticket
        return _tickets(path, _each(values, parse), problems, "line")
    rows: list[FaqRow] = []
    seen: set[str] = set()
    for line, value in values:
        if not isinstance(value, dict):
            problems.append(Problem(str(path), line, f"expected a JSON object, got "
                                                     f"{type(value).__name__}; line skipped"))
            continue
        record = {str(k).strip().lower(): v for k, v in value.items()}
        seen.update(record)
        row = _faq_row(path, line, record, problems, "line")
        if row is not None:
            rows.append(row)
    if not rows:
        _check_columns(path, sorted(seen))  # no object had the keys: name the ones it has
    return rows, problems


def _read_json_document(path: Path, data: bytes | None) -> tuple[list[FaqRow], list[Problem]]:
    text, note = read_text(path, data)
    problems = [note] if note else []
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg != "Extra data":
            raise UnreadableFileError(
                path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
        # More than one value: newline-delimited tickets (Zendesk's full JSON export).
        values, line_problems = read_jsonl(path, text.encode("utf-8"))
        if not any(exports.is_zendesk_ticket(v) for _, v in values):
            raise NoTextError(path, "JSON lines that are not Zendesk tickets (objects with "
                                    "'comments')") from e
        return _tickets(path, _each(values, exports.zendesk_ticket), problems + line_problems,
                        "line")
    tickets = exports.zendesk_tickets(document)
    if tickets is None:
        if exports.is_zendesk_ticket(document):
            tickets = [document]
        else:
            raise NoTextError(path, "a JSON file that is not a Zendesk ticket export (expected "
                                    "{\"tickets\": [...]} with comments; see docs/ingest.md)")
    numbered = list(enumerate(tickets, start=1))
    return _tickets(path, _each(numbered, exports.zendesk_ticket), problems, "record")


def _each(values: list[tuple[int, object]], parse):
    out = []
    for number, value in values:
        try:
            out.append((number, parse(value)))
        except exports.SkipRecord as e:
            out.append((number, e))
    return out


def _tickets(path: Path, parsed: list, problems: list[Problem],
             unit: str) -> tuple[list[FaqRow], list[Problem]]:
    rows = []
    for number, ticket in parsed:
        if isinstance(ticket, exports.SkipRecord):
            problems.append(Problem(str(path), number, str(ticket), unit))
            continue
        rows.append(FaqRow(ticket.question, ticket.answer, number, ticket.id, None, None,
                           dict(ticket.extra)))
    return rows, problems


def _faq_row(path: Path, line: int, record: dict, problems: list[Problem],
             unit: str) -> FaqRow | None:
    """One FAQ record (lower-cased keys) as a row, or `None` with the problem recorded."""
    def report(reason: str) -> None:
        problems.append(Problem(str(path), line, reason, unit))

    texts = {}
    for key in FAQ_REQUIRED:
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            report(f"empty {key}; row skipped" if value is None or isinstance(value, str)
                   else f"{key} is not text ({type(value).__name__}); row skipped")
            return None
        texts[key] = value.strip()
    page, why = parse_page(record.get("page"))
    if why:
        report(f"{why}; page ignored, row kept")
    section = str(_scalar(record.get("section")) or "").strip() or None
    extra = {}
    for key, value in record.items():
        if key in FAQ_REQUIRED or key in FAQ_OPTIONAL or not key:
            continue
        value = _scalar(value)
        if value not in (None, ""):
            extra[key] = value
    return FaqRow(texts["question"], texts["answer"], line,
                  exports.record_id(record.get("id")),
                  section, page, extra)


def parse_page(value: object) -> tuple[int | None, str | None]:
    """A 1-based page number from a CSV cell or JSON value.

    Returns:
        `(page, None)`, `(None, None)` when there is no page, or `(None, reason)` when the value
        is not a whole number of at least 1 (`0` included: pages count from 1, as citations do).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not float(number).is_integer():
        return None, f"page {value!r} is not a whole number"
    if number < 1:
        return None, f"page {int(number)} is not a page number (pages count from 1)"
    return int(number), None


def load_faq(path: Path, data: bytes | None = None, *, redact: bool = False) -> LoadedFile:
    """A ticket history as one block per answered question (see `read_faq`).

    Args:
        path: The history file.
        data: Its bytes, when already read.
        redact: Replace customers' identifiers (`ingest.redact`) in the question, the answer
            and the extra fields before they reach the index.

    Raises:
        UnreadableFileError: See `read_faq`.
        NoTextError: No usable question/answer pair.
    """
    rows, problems = read_faq(path, data)
    counts: Counter[str] = Counter()
    blocks = []
    for row in rows:
        question, answer, extra = row.question, row.answer, dict(row.extra)
        if redact:
            question, answer = redact_text(question, counts), redact_text(answer, counts)
            extra = {k: redact_text(v, counts) if isinstance(v, str) else v
                     for k, v in extra.items()}
        metadata = {"question": question, "answer": answer}
        if row.id is not None:
            metadata["faq_id"] = row.id
        metadata.update(extra)
        blocks.append(Block(f"Question: {question}\nAnswer: {answer}", row.page, row.section,
                            metadata))
    loaded = LoadedFile(path, "faq", blocks, [p.brief for p in problems])
    loaded.redactions = dict(counts)
    return loaded


def redact_text(text: str, counts: Counter[str]) -> str:
    """`ingest.redact.redact` that adds its counts to `counts`."""
    redacted, found = redact(text)
    counts.update(found)
    return redacted


def _scalar(value: object) -> str | int | float | bool | None:
    """Chroma metadata holds scalars only: lists and objects are kept as JSON text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
