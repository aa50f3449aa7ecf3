from pathlib import Path

import pytest

from ingest.chunking import Chunker, ChunkingConfig, chunk_id
from ingest.loaders import Block, LoadedFile, load_file
from retrieval.errors import UsageError


def _doc(*blocks: Block) -> LoadedFile:
    return LoadedFile(Path("doc.pdf"), "doc", list(blocks))


def test_config_validation_names_field_value_and_fix():
    with pytest.raises(UsageError, match=r"chunk_overlap \(600\) must be smaller than "
                                         r"chunk_size \(512\)"):
        ChunkingConfig(chunk_size=512, chunk_overlap=600)
    with pytest.raises(UsageError, match=r"chunk_size \(0\)"):
        ChunkingConfig(chunk_size=0, chunk_overlap=0)
    with pytest.raises(UsageError, match=r"min_chunk_words \(-1\) must not be negative"):
        ChunkingConfig(min_chunk_words=-1)


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
    config = ChunkingConfig(min_chunk_words=0, heading_prefix=True)
    loaded = _doc(Block("Factory reset\nHold the button.", 6, "Reset > Factory reset"),
                  Block("Plain words about LEDs.", 5, "LED Indicators"))
    texts = [c.text for c in Chunker(config).chunk(loaded, "doc.pdf", "h")]
    assert texts[0] == "Reset > Factory reset Hold the button."
    assert texts[1] == "LED Indicators\nPlain words about LEDs."
    plain = Chunker(ChunkingConfig(min_chunk_words=0)).chunk(loaded, "doc.pdf", "h")
    assert plain[1].text == "Plain words about LEDs." and plain[1].section == "LED Indicators"


def test_joined_sections_are_labelled_with_their_common_outline_ancestor():
    loaded = _doc(Block("Restart it.", 6, "Troubleshooting > Restarting"),
                  Block("Hold Reset 10 s.", 6, "Troubleshooting > Factory reset"),
                  Block("Blinking amber.", 6, "LEDs"))
    chunks = Chunker(ChunkingConfig()).chunk(loaded, "doc.pdf", "h")
    # Sections sharing an outline parent are labelled with it; an unrelated one keeps the label
    # of where the chunk starts.
    assert [(c.page, c.section, c.text) for c in chunks] == [
        (6, "Troubleshooting", "Restart it. Hold Reset 10 s. Blinking amber.")]
    two = Chunker(ChunkingConfig()).chunk(_doc(*loaded.blocks[:2]), "doc.pdf", "h")
    assert [c.section for c in two] == ["Troubleshooting"]
