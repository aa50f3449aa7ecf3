"""OCR of scanned pages: a PDF whose last page is a scan made in the test (text rendered to an
image, placed on a page without a text layer). OCR on finds its words and cites the page; off
or without an engine it is reported as before; results are cached by page image."""

import subprocess
import sys

import pytesseract
import pytest

import ingest.ocr as ocr_module
from ingest.cli import main
from ingest.loaders import NO_TEXT_LAYER, NoTextError, load_file
from ingest.ocr import MIN_CONFIDENCE, PageOcr, engine_problem
from retrieval.search import open_searcher
from retrieval.store import ChunkStore
from tests.conftest import REPO, shared_data
from tests.ingest.conftest import scanned_pdf

needs_tesseract = pytest.mark.skipif(engine_problem() is not None,
                                     reason=f"OCR engine unavailable: {engine_problem()}")


@pytest.fixture
def no_engine(monkeypatch):
    """A machine without the tesseract program (the binding is a dependency, the binary not)."""
    monkeypatch.setattr(ocr_module, "TESSERACT_CMD", "/nonexistent/tesseract")


@pytest.fixture
def scan(tmp_path):
    return scanned_pdf(tmp_path / "docs" / "espresso.pdf")


@needs_tesseract
@pytest.mark.parametrize("mode", ["on", "auto"])
def test_ocr_finds_the_words_of_a_scanned_page_and_cites_it(scan, ingest, settings,
                                                           hash_embedder, mode):
    summary = ingest([scan], ocr=mode)
    (result,) = summary.files
    assert result.status == "indexed" and result.ocr_pages == 1 and result.warnings == []
    chunks = ChunkStore(settings, hash_embedder.name).all_chunks()
    scanned = [c for c in chunks if c.page == 2]
    assert scanned and all(c.metadata.get("ocr") is True for c in scanned)
    assert not any(c.metadata.get("ocr") for c in chunks if c.page == 1)
    assert "descaling valve of the espresso unit" in " ".join(c.text for c in scanned)
    hit = open_searcher(settings, embedder=hash_embedder).search(
        "how often must the descaling valve be replaced", k=1)[0]
    assert hit.chunk.citation.page == 2 and hit.chunk.metadata["ocr"] is True
    head, _, row = summary.format_table().splitlines()[:3]
    assert head.split()[:5] == ["status", "chunks", "ocr", "tables", "file"]
    assert row.split()[2] == "1"


def test_ocr_off_reports_the_page_as_before(scan, ingest):
    (result,) = ingest([scan], ocr="off").files
    assert result.status == "indexed" and result.ocr_pages == 0
    assert result.warnings == [f"page 2: {NO_TEXT_LAYER}"]


def test_without_an_engine_auto_says_how_to_install_and_on_is_an_error(
        no_engine, scan, ingest, tmp_path, capsys):
    (result,) = ingest([scan]).files  # auto
    assert result.status == "indexed" and result.ocr_pages == 0
    (warning,) = result.warnings
    assert warning.startswith("page 2: no text layer (scanned image? OCR is not available: "
                              "Tesseract is not installed")
    assert "apt-get install tesseract-ocr tesseract-ocr-eng" in warning
    code = main([str(scan), "--home", str(tmp_path / "other"), "--ocr", "on", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: --ocr on: Tesseract is not installed") and \
        len(err.splitlines()) == 1
    assert not (tmp_path / "other").exists()  # it failed before doing any work


@needs_tesseract
def test_a_rerun_does_no_ocr_for_pages_it_has_read(scan, ingest, monkeypatch):
    ingest([scan])
    # From now on any OCR call fails the test: the page must come from the cache.
    def no_ocr(*args, **kwargs):
        raise AssertionError("OCR ran on a page it had read before")

    monkeypatch.setattr(pytesseract, "image_to_data", no_ocr)
    (result,) = ingest([scan], rebuild=True).files
    assert (result.status, result.ocr_pages, result.ocr_cached) == ("indexed", 1, 1)
    # A changed file (a page added in front) re-reads its unchanged scan from the cache too.
    scanned_pdf(scan, text_pages=2)
    (result,) = ingest([scan]).files
    assert (result.status, result.ocr_pages, result.ocr_cached) == ("indexed", 1, 1)
    assert "1 (1 cached)" in ingest([scan], rebuild=True).format_table()


@needs_tesseract
def test_turning_ocr_on_indexes_a_file_read_without_it_again(scan, ingest, no_engine,
                                                             monkeypatch):
    (before,) = ingest([scan]).files  # auto, but no engine: read without OCR
    assert before.ocr_pages == 0 and "OCR is not available" in before.warnings[0]
    assert ingest([scan]).files[0].status == "unchanged"
    monkeypatch.undo()  # Tesseract gets installed
    (after,) = ingest([scan]).files
    assert after.status == "indexed" and after.ocr_pages == 1


@needs_tesseract
def test_a_poor_scan_is_indexed_and_reported_with_its_confidence(tmp_path):
    poor = scanned_pdf(tmp_path / "poor.pdf", blur=2.5, size=20, lines=[
        "Service bulletin 7: descaling", "The descaling valve of the espresso unit"])
    # Printed small and blurred by 2.5 pixels: Tesseract misreads most words.
    loaded = load_file(poor, ocr=PageOcr("on"))
    assert loaded.ocr_pages == [2]
    (warning,) = loaded.warnings
    assert warning.startswith("page 2: read by OCR with confidence ")
    confidence = int(warning.split("confidence ")[1].split()[0])
    assert confidence < MIN_CONFIDENCE
    assert f"(below {MIN_CONFIDENCE:.0f})" in warning


def test_an_image_only_pdf_without_ocr_is_skipped_with_the_reason(tmp_path, no_engine):
    only_scan = scanned_pdf(tmp_path / "only.pdf", text_pages=0)
    with pytest.raises(NoTextError, match=r"OCR is not available.*apt-get install"):
        load_file(only_scan, ocr=PageOcr("auto"))
    with pytest.raises(NoTextError, match=r"^.*no text layer \(scanned image\? OCR is not "
                                          r"enabled\)$"):
        load_file(only_scan)


@needs_tesseract
def test_the_real_imagemagick_scan_has_nothing_to_read():
    # Six 3.84-point pages, each one 16x16-pixel icon: pages 4 and 5 have no text layer, and
    # there is nothing for OCR to read on them (reported as such, not as "OCR is not enabled").
    loaded = load_file(shared_data("pdf-samples", "imagemagick-images.pdf"), ocr=PageOcr("on"))
    assert loaded.ocr_pages == []
    assert loaded.warnings == [
        f"page {n}: no text layer, and OCR could not read it: the page is 16x16 pixels at "
        "300 dpi, too small to hold text" for n in (4, 5)]


def test_pdfs_with_a_text_layer_never_start_the_engine(router_pdf, ingest, monkeypatch):
    def no_check(*args):
        raise AssertionError("the OCR engine was checked for a PDF that needs no OCR")

    monkeypatch.setattr(ocr_module, "engine_problem", no_check)
    assert ingest([router_pdf]).files[0].status == "indexed"
    assert ingest([router_pdf]).files[0].status == "unchanged"


def test_checking_for_the_engine_does_not_import_the_binding():
    """pytesseract imports pandas (0.35 s): only a page that is really read may pay for it."""
    code = ("import sys; from ingest.ocr import engine_problem; problem = engine_problem(); "
            "print([m for m in ('pytesseract', 'pandas') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_missing_program_is_named(no_engine):
    assert engine_problem() == "Tesseract is not installed ('/nonexistent/tesseract' not found)"
