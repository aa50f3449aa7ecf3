"""Ruled tables: rows kept together with their headers, only pages that look tabular examined."""

import pypdf

from ingest.loaders import load_file
from ingest.tables import MIN_RULES, format_rows, rule_count, tabular_pages
from retrieval.search import open_searcher
from retrieval.store import ChunkStore
from tests.conftest import shared_data
from tests.ingest.conftest import table_pdf

ROW = "Model: QN65Q80 | Screen size: 65 in | Power consumption: 138 W | Weight: 25.1 kg"


def test_pypdf_alone_reads_the_table_as_a_soup(tmp_path):
    # The premise: without table detection no line pairs a model with its weight.
    text = pypdf.PdfReader(table_pdf(tmp_path / "spec.pdf")).pages[0].extract_text()
    assert not any("QN65Q80" in line and "25.1 kg" in line for line in text.splitlines())


def test_rows_stay_together_in_the_chunks_and_are_found(tmp_path, ingest, settings,
                                                        hash_embedder):
    spec = table_pdf(tmp_path / "docs" / "spec.pdf")
    (result,) = ingest([spec]).files
    assert result.status == "indexed" and result.tables == 1
    (chunk,) = ChunkStore(settings, hash_embedder.name).all_chunks()
    assert ROW in chunk.text and chunk.metadata["tables"] == 1
    # Prose around the table keeps its place: before it, and after it.
    assert chunk.text.index("Specifications.") < chunk.text.index(ROW) < \
        chunk.text.index("Weights are without the stand")
    hit = open_searcher(settings, embedder=hash_embedder).search("weight of the QN65Q80", k=1)
    assert hit[0].chunk.citation.page == 1
    assert "tables" in ingest([spec]).format_table().splitlines()[0]


def test_only_pages_that_draw_rules_are_examined(tmp_path, router_pdf):
    spec = table_pdf(tmp_path / "spec.pdf")
    assert rule_count(pypdf.PdfReader(spec).pages[0]) >= MIN_RULES
    assert tabular_pages(pypdf.PdfReader(router_pdf).pages) == []
    manual = pypdf.PdfReader(shared_data("emanual", "smart_tv_manual.pdf"))
    # The shared manual's specification "tables" are flattened text with no rules: nothing to
    # examine, so table detection costs it nothing (and cannot change it).
    assert tabular_pages(manual.pages) == []
    assert load_file(router_pdf).tables == 0


def test_row_formatting_with_and_without_a_header():
    header, *rows = ["Model", "Weight"], ["QN65Q80", "25.1 kg"], ["QN75Q80", None]
    assert format_rows([header, *rows]) == "Model: QN65Q80 | Weight: 25.1 kg\nModel: QN75Q80"
    numbers = [["640 x 480", "60 Hz", None], ["800 x 600", "", "40.000"]]
    assert format_rows(numbers) == "640 x 480 | 60 Hz\n800 x 600 | 40.000"
    assert format_rows([["Port", "Use"], ["HDMI 1", None], [None, None]]) == "Port: HDMI 1"


def test_a_real_google_docs_table_keeps_rows_and_footnote_marks_apart():
    path = shared_data("pdf-samples", "google-doc-document.pdf")
    soup = pypdf.PdfReader(path).pages[0].extract_text()
    assert "Capital\nJakarta\nBerlin" in soup  # pypdf: one cell a line, column after column
    loaded = load_file(path)
    assert loaded.tables == 1
    text = "\n".join(b.text for b in loaded.blocks)
    assert "Capital | Jakarta | Berlin | Vienna | Paris | Vatican City" in text
    # Footnote marks stay marks: 273.879.750 with mark 1 is not the number 273.879.7501.
    assert "Population | 273.879.750¹ | 83,190,556² | 8,935,112³ | 67,413,000 | 453" in text
