"""Cold start: when a run loads its own embedder, the first file it reads is read in a second
process meanwhile (`ingest.pipeline._Run._load`). What that process reads, and every error it
meets, must be exactly what reading in the run's own process gives."""

from __future__ import annotations

import pytest

import ingest.pipeline as pipeline
import retrieval.embeddings as embeddings
from ingest.loaders import load_file
from retrieval.settings import Settings
from retrieval.store import ChunkStore
from tests.conftest import HashEmbedder
from tests.ingest.conftest import write_markdown


@pytest.fixture
def own_embedder(monkeypatch) -> list[int]:
    """The run loads "its own" embedder (a HashEmbedder); returns how many were loaded."""
    loads: list[int] = []

    def load(name, **kwargs):
        loads.append(1)
        return HashEmbedder()

    monkeypatch.setattr(embeddings, "load_embedder", load)
    return loads


@pytest.fixture
def readers(monkeypatch) -> list[list[str]]:
    """Records the reader processes started."""
    started: list[list[str]] = []
    popen = pipeline.subprocess.Popen

    def recording(command, **kwargs):
        started.append(command)
        return popen(command, **kwargs)

    monkeypatch.setattr(pipeline.subprocess, "Popen", recording)
    return started


def test_the_first_file_is_read_in_a_second_process_with_the_same_chunks(
        tmp_path, router_pdf, own_embedder, readers, ingest):
    summary = pipeline.run([router_pdf], Settings.resolve(home=tmp_path / "own"), progress=False)
    assert len(readers) == 1 and own_embedder == [1]
    assert summary.files[0].status == "indexed"
    reference = Settings.resolve(home=tmp_path / "reference")
    ingest([router_pdf], settings=reference)  # an injected embedder: read in this process
    assert len(readers) == 1
    own_settings = Settings.resolve(home=tmp_path / "own")
    own = ChunkStore(own_settings, own_settings.embedder).all_chunks()
    assert sorted(own, key=lambda c: c.id) == sorted(
        ChunkStore(reference, "hash-bow-256").all_chunks(), key=lambda c: c.id)


def test_an_unreadable_first_file_fails_with_the_reason_of_an_in_process_read(
        tmp_path, own_embedder, readers):
    bad = tmp_path / "docs" / "a_damaged.pdf"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage")
    doc = write_markdown(tmp_path / "docs" / "b_guide.md")
    summary = pipeline.run([bad.parent], Settings.resolve(home=tmp_path / "index"),
                           progress=False)
    assert len(readers) == 1  # the damaged PDF was the one read by the second process
    failed, indexed = summary.files
    with pytest.raises(pipeline.UnreadableFileError) as here:
        load_file(bad)
    assert failed.status == "failed" and failed.reason == here.value.reason
    assert indexed.path.endswith(doc.name) and indexed.status == "indexed"


def test_when_the_reader_process_fails_the_file_is_read_here(
        tmp_path, router_pdf, own_embedder, readers, monkeypatch):
    monkeypatch.setattr(pipeline, "_READER", "import sys; sys.exit(3)")
    summary = pipeline.run([router_pdf], Settings.resolve(home=tmp_path / "index"),
                           progress=False)
    assert len(readers) == 1
    assert summary.files[0].status == "indexed" and summary.embedded > 0


def test_other_formats_and_empty_files_are_read_here(tmp_path, own_embedder, readers):
    write_markdown(tmp_path / "docs" / "guide.md")
    (tmp_path / "docs" / "empty.pdf").write_bytes(b"")
    summary = pipeline.run([tmp_path / "docs"], Settings.resolve(home=tmp_path / "index"),
                           progress=False)
    assert readers == []
    assert sorted((f.path.rsplit("/", 1)[-1], f.status) for f in summary.files) == [
        ("empty.pdf", "failed"), ("guide.md", "indexed")]
