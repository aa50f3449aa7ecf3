from pathlib import Path

import pytest

from ingest.chunking import Chunker, ChunkingConfig, chunk_id
from ingest.loaders import Block, LoadedFile, load_file


def _doc(*blocks: Block) -> LoadedFile:
    return LoadedFile(Path("doc.pdf"), "doc", list(blocks))


def test_config_validation_names_field_value_and_fix():
    with pytest.raises(ValueError, match=r"chunk_overlap \(600\) must be smaller than "
                                         r"chunk_size \(512\)"):
        ChunkingConfig(chunk_size=512, chunk_overlap=600)
    with pytest.raises(ValueError, match=r"chunk_size \(0\)"):
        ChunkingConfig(chunk_size=0, chunk_overlap=0)
    with pytest.raises(ValueError, match=r"min_chunk_words \(300\)"):
        ChunkingConfig(chunk_size=200, chunk_overlap=10, min_chunk_words=300)


def test_long_blocks_split_with_overlap_and_never_cross_pages():
    words = [f"w{i}" for i in range(250)]
    config = ChunkingConfig(chunk_size=100, chunk_overlap=20, min_chunk_words=0,
                            heading_prefix=False)
    loaded = _doc(Block(" ".join(words), 1, None), Block("tail of page two", 2, None))
    chunks = Chunker(config).chunk(loaded, "doc.pdf", "h")
    page1 = [c.text.split() for c in chunks if c.page == 1]
    assert [len(c) for c in page1] == [100, 100, 100]
    assert page1[0][-20:] == page1[1][:20]
    assert page1[-1][-1] == "w249"  # the last window ends on the last word: no tiny tail
    assert {w for c in page1 for w in c} == set(words)
    assert [c.text for c in chunks if c.page == 2] == ["tail of page two"]
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))


def test_short_sections_join_the_next_on_the_same_page_only():
    config = ChunkingConfig(chunk_size=50, chunk_overlap=5, min_chunk_words=5,
                            heading_prefix=False)
    loaded = _doc(Block("tiny lead", 1, "A"), Block("body of section b " * 3, 1, "B"),
                  Block("tiny end", 1, "C"), Block("next page text here", 2, "D"))
    chunks = Chunker(config).chunk(loaded, "doc.pdf", "h")
    assert [(c.page, c.section) for c in chunks] == [(1, "A"), (1, "C"), (2, "D")]
    assert chunks[0].text.startswith("tiny lead body")


def test_heading_prefix_names_the_section_once():
    config = ChunkingConfig()
    loaded = _doc(Block("Factory reset\nHold the button.", 6, "Reset > Factory reset"),
                  Block("Plain words about LEDs.", 5, "LED Indicators"))
    texts = [c.text for c in Chunker(config).chunk(loaded, "doc.pdf", "h")]
    assert texts[0] == "Reset > Factory reset Hold the button."
    assert texts[1] == "LED Indicators\nPlain words about LEDs."


def test_faq_rows_are_one_chunk_each_with_metadata(tmp_path):
    path = tmp_path / "faq.csv"
    long_answer = " ".join(["word"] * 500)
    path.write_text(f"id,question,answer,page\nT1,How?,{long_answer},3\nT2,Why?,Because.,\n")
    chunks = Chunker(ChunkingConfig(chunk_size=50, chunk_overlap=5)).chunk(
        load_file(path), "faq.csv", "h")
    assert len(chunks) == 2 and {c.type for c in chunks} == {"faq"}
    assert chunks[0].page == 3 and chunks[1].page is None
    assert chunks[0].metadata["faq_id"] == "T1" and chunks[0].text.startswith("Question: How?")


def test_ids_are_stable_content_hashes_that_depend_on_config_and_stay_unique():
    loaded = _doc(Block("same text", 1, None), Block("same text", 1, None),
                  Block("same text", 2, None))
    config = ChunkingConfig(min_chunk_words=0)
    first = Chunker(config).chunk(loaded, "doc.pdf", "h1")
    again = Chunker(config).chunk(loaded, "doc.pdf", "h2")
    assert [c.id for c in first] == [c.id for c in again]
    assert len({c.id for c in first}) == 3
    other = Chunker(ChunkingConfig(chunk_size=199, min_chunk_words=0)).chunk(loaded, "doc.pdf", "h")
    assert not {c.id for c in other} & {c.id for c in first}
    assert chunk_id("a.pdf", "t", 1, config) != chunk_id("b.pdf", "t", 1, config)
    assert chunk_id("a.pdf", "t", 1, config) != chunk_id("a.pdf", "t", 2, config)
