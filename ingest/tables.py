"""Tables in PDFs: each row kept together, its cells labelled with their column headers.

pypdf returns a page's text in content-stream order, and many producers draw a table column
by column: "Model QN55 QN65 Screen size 55 in 65 in Weight 17.2 kg 25.1 kg", a soup in which
no reader (nor a model) can tell which weight belongs to which model. pdfplumber detects
ruled tables well (its `lines` strategy: cells bounded by drawn rules); on a page where it finds
one, the page text is rebuilt in reading order from pdfplumber, with each table row on a line
of its own as `Model: QN65 | Screen size: 65 in | Weight: 25.1 kg` (header cells as labels
when the first row is a header), so a row survives chunking as one run of words.

Detection costs a pdfminer layout of the page, so it runs only on pages that look tabular:
pages whose content stream draws at least `MIN_RULES` rectangles or line segments (a ruled
table draws one per cell border or row rule). Tables without rules (columns aligned by spaces)
are left to pypdf: pdfplumber's text strategy splits ordinary paragraphs into columns as often
as it finds real tables.
"""

from __future__ import annotations

import io
import logging
import re

MIN_RULES = 8
_RULE_OPS = re.compile(rb"(?<![A-Za-z])(?:re|l)(?![A-Za-z])")

# pdfminer logs recoverable font and structure oddities as warnings; the run reports per file.
logging.getLogger("pdfminer").setLevel(logging.ERROR)


def rule_count(page) -> int:
    """Rectangles and line segments drawn by a pypdf page's content stream (0 if unreadable)."""
    from pypdf.errors import PyPdfError

    try:
        contents = page.get_contents()
        data = contents.get_data() if contents is not None else b""
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError):
        return 0  # a page pypdf cannot decode is not examined: its own text stands
    return len(_RULE_OPS.findall(data))


def tabular_pages(pages: list) -> list[int]:
    """0-based indexes of the pages worth examining for ruled tables."""
    return [i for i, page in enumerate(pages) if rule_count(page) >= MIN_RULES]


def read_tables(data: bytes, indexes: list[int]) -> dict[int, tuple[str, int]]:
    """Rebuild the text of pages that hold ruled tables.

    Args:
        data: The PDF's bytes.
        indexes: 0-based pages to examine (see `tabular_pages`).

    Returns:
        Per page with at least one table of two rows and two columns: its text in reading
        order with table rows as lines, and the number of tables.
    """
    if not indexes:
        return {}
    import pdfplumber
    from pdfminer.pdfparser import PDFSyntaxError
    from pdfminer.psparser import PSException

    out: dict[int, tuple[str, int]] = {}
    try:
        pdf = pdfplumber.open(io.BytesIO(data))
    except (PDFSyntaxError, PSException, ValueError):
        return {}
    with pdf:
        for index in indexes:
            try:
                page = pdf.pages[index]
                _mark_superscripts(page.chars)
                tables = [t for t in page.find_tables()
                          if len(rows := t.extract()) >= 2 and max(len(r) for r in rows) >= 2]
                if tables:
                    out[index] = (_page_text(page, tables), len(tables))
            except (PSException, ValueError, KeyError, TypeError, IndexError):
                continue  # pypdf's text of the page stands
    return out


_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def _mark_superscripts(chars: list[dict]) -> None:
    """Turn raised, smaller digits (footnote marks) into superscript digits, in place.

    A table cell reads its characters as one word, so a footnote mark glues onto its number:
    `273.879.750` with mark 1 becomes `273.879.7501`, a different number (and a phone number
    to the redactor). As `273.879.750¹` both survive.
    """
    previous = None
    for char in chars:
        if previous is not None and char["text"].isdigit() and previous["text"].strip() \
                and char["size"] < 0.8 * previous["size"] \
                and char["bottom"] < previous["bottom"] - 0.15 * previous["size"] \
                and abs(char["top"] - previous["top"]) < previous["size"]:
            char["text"] = char["text"].translate(_SUPERSCRIPT)
        else:
            previous = char


def _page_text(page, tables: list) -> str:
    """The page's text from top to bottom: prose between tables, each table as row lines."""
    boxes = [t.bbox for t in tables]

    def outside(obj: dict) -> bool:
        cx, cy = (obj["x0"] + obj["x1"]) / 2, (obj["top"] + obj["bottom"]) / 2
        return not any(x0 <= cx <= x1 and top <= cy <= bottom for x0, top, x1, bottom in boxes)

    prose = page.filter(outside)
    x0, top, x1, bottom = page.bbox
    pieces: list[str] = []
    cursor = top
    for table in sorted(tables, key=lambda t: t.bbox[1]):
        t_top, t_bottom = max(table.bbox[1], cursor), min(table.bbox[3], bottom)
        if t_top > cursor:
            pieces.append(prose.crop((x0, cursor, x1, t_top)).extract_text() or "")
        pieces.append(format_rows(table.extract()))
        cursor = max(cursor, t_bottom)
    if cursor < bottom:
        pieces.append(prose.crop((x0, cursor, x1, bottom)).extract_text() or "")
    return "\n".join(p for p in pieces if p.strip())


def format_rows(rows: list[list[str | None]]) -> str:
    """A table as lines, one per row; with a header row, cells read `Header: value`.

    The first row is a header when every cell of it holds text and none is mostly digits
    (a row of numbers is data, not a header).
    """
    cleaned = [[" ".join((cell or "").split()) for cell in row] for row in rows]
    cleaned = [row for row in cleaned if any(row)]
    if not cleaned:
        return ""
    first = cleaned[0]
    header = first if len(cleaned) > 1 and all(first) and not any(_numeric(c) for c in first) \
        else None
    lines = []
    for row in cleaned[1:] if header else cleaned:
        if header:
            cells = [f"{name}: {value}" if value else "" for name, value in
                     zip(header, row, strict=False)]
        else:
            cells = row
        lines.append(" | ".join(c for c in cells if c))
    return "\n".join(line for line in lines if line)


def _numeric(cell: str) -> bool:
    digits = sum(c.isdigit() for c in cell)
    return digits * 2 > len(cell.replace(" ", ""))
