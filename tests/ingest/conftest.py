"""Fixtures for ingest tests: an index home, a fast ingest call and small generated documents."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ingest.pipeline import run
from retrieval.settings import Settings
from tests.conftest import REPO, HashEmbedder


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings.resolve(home=tmp_path / "index")


@pytest.fixture
def ingest(settings, hash_embedder):
    """`ingest(paths, **kw)`: run the pipeline quietly with the HashEmbedder."""
    def _run(paths, *, embedder: HashEmbedder | None = None, **kw):
        return run([str(p) for p in paths], kw.pop("settings", settings),
                   embedder=embedder or hash_embedder, progress=False, **kw)
    return _run


@pytest.fixture
def router_pdf(tmp_path) -> Path:
    """The repo's sample router manual, built into tmp (the committed script, not a copy)."""
    sys.path.insert(0, str(REPO / "samples"))
    try:
        import build_samples
    finally:
        sys.path.remove(str(REPO / "samples"))
    path = tmp_path / "docs" / "router_manual.pdf"
    build_samples.build_manual(path)
    return path


def write_markdown(path: Path, sections: int = 3, words: int = 60, tag: str = "") -> Path:
    """A Markdown file with `sections` headed sections of distinct words."""
    parts = ["# Guide"]
    for s in range(sections):
        body = " ".join(f"{tag}word{s}x{w}" for w in range(words))
        parts.append(f"## Part {s}\n\n{body}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(parts) + "\n")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


SCANNED_LINES = [
    "Service bulletin 7: descaling",
    "The descaling valve of the espresso unit",
    "must be replaced every eighteen months.",
    "Order the replacement valve from your dealer.",
]


def scan_image(lines: list[str], size: int = 44, blur: float = 0.0):
    """A page-sized greyscale image of printed lines: what a scanner hands over."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    image = Image.new("L", (1275, 1650), 255)  # US Letter at 150 dpi
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=size)
    for i, line in enumerate(lines):
        draw.text((120, 160 + i * int(size * 1.8)), line, fill=0, font=font)
    return image.filter(ImageFilter.GaussianBlur(blur)) if blur else image


def scanned_pdf(path: Path, lines: list[str] | None = None, *, text_pages: int = 1,
                size: int = 44, blur: float = 0.0) -> Path:
    """A PDF whose first `text_pages` pages have a text layer and whose last page is a scan.

    The scan is text rendered to an image and placed on a page with no text layer, the way a
    scanner or a "print to image" PDF stores it.
    """
    from fpdf import FPDF

    pdf = FPDF(format="letter")
    pdf.set_font("helvetica", size=12)
    for n in range(text_pages):
        pdf.add_page()
        pdf.multi_cell(0, 8, f"Espresso unit manual, page {n + 1}. Fill the water tank to the "
                             "MAX mark and press the cup button to brew a coffee.")
    pdf.add_page()
    pdf.image(scan_image(lines or SCANNED_LINES, size, blur), x=0, y=0, w=pdf.w, h=pdf.h)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))
    return path



def table_pdf(path: Path) -> Path:
    """A one-page specification sheet with a ruled table drawn column by column."""
    return _samples().build_spec_sheet(path)


def _samples():
    sys.path.insert(0, str(REPO / "samples"))
    try:
        import build_samples
    finally:
        sys.path.remove(str(REPO / "samples"))
    return build_samples
