"""Chunks longer than the embedder's input window are counted at ingest and reported."""

import pytest

from ingest.pipeline import WindowedEmbedder
from tests.conftest import HashEmbedder
from tests.ingest.conftest import write_markdown


class SmallWindowEmbedder(HashEmbedder):
    """The hash embedder with a 40-piece window; one piece per word plus two special tokens."""

    max_seq_length = 40

    def token_counts(self, texts):
        return [len(t.split()) + 2 for t in texts]


def test_chunks_over_the_window_are_counted_and_noted(tmp_path, ingest):
    long_doc = write_markdown(tmp_path / "docs" / "long.md", sections=2, words=60)
    short_doc = write_markdown(tmp_path / "docs" / "short.md", sections=1, words=10, tag="s")
    summary = ingest([long_doc, short_doc], embedder=SmallWindowEmbedder())
    by_name = {f.path.rsplit("/", 1)[-1]: f for f in summary.files}
    assert by_name["long.md"].over_window == by_name["long.md"].chunks > 0
    assert by_name["short.md"].over_window == 0
    (note,) = [n for n in summary.notes if "window" in n]
    assert note.startswith(f"{by_name['long.md'].over_window} of {summary.embedded} chunks "
                           "embedded are longer than the embedder's 40-word-piece window")
    assert summary.to_dict()["window"] == 40


def test_embedders_without_a_window_are_not_checked(tmp_path, ingest):
    assert not isinstance(HashEmbedder(), WindowedEmbedder)
    summary = ingest([write_markdown(tmp_path / "docs" / "long.md", words=400)])
    assert summary.window is None and not any("window" in n for n in summary.notes)


@pytest.mark.integration
def test_the_bundled_embedder_counts_word_pieces_past_its_window():
    from retrieval.embeddings import load_embedder

    embedder = load_embedder("default")
    assert isinstance(embedder, WindowedEmbedder) and embedder.max_seq_length == 256
    short, long = embedder.token_counts(["Reset the router.", "word " * 400])
    assert short < 10 and long == 402  # 400 pieces and [CLS]/[SEP], not truncated to 256
