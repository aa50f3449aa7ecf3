"""The index-state record (`ingest.state`): an unchanged re-run decides without opening Chroma;
every change that could make that decision wrong sends the run through Chroma again."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import ingest.pipeline as pipeline
from ingest import state
from retrieval.settings import Settings
from retrieval.store import ChunkStore, StoreDamagedError
from tests.conftest import REPO
from tests.ingest.conftest import write_markdown
from tests.ingest.test_pipeline import _assert_consistent


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Records every Chroma store the pipeline opens (by collection name)."""
    calls: list[str] = []

    def counting(settings, embedder_name):
        calls.append(settings.collection)
        return ChunkStore(settings, embedder_name)

    monkeypatch.setattr(pipeline, "ChunkStore", counting)
    return calls


@pytest.fixture
def doc(tmp_path):
    return write_markdown(tmp_path / "docs" / "guide.md", sections=3)


def _forget_open_clients() -> None:
    # Chroma caches one client per path in a process; a new ingest process would not have it.
    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()


def test_an_unchanged_rerun_never_opens_the_store(ingest, settings, doc, opened):
    first = ingest([doc])
    assert opened == ["casewise"] and settings.state_path.is_file()
    again = ingest([doc])
    assert opened == ["casewise"], "the unchanged re-run opened Chroma"
    assert again.counts["unchanged"] == 1 and again.embedded == 0
    assert again.total_chunks == first.total_chunks
    assert "nothing to embed" in again.format_table()


def test_a_changed_file_is_indexed_through_the_store(ingest, settings, doc, opened):
    ingest([doc])
    write_markdown(doc, sections=4)
    summary = ingest([doc])
    assert summary.counts["indexed"] == 1 and summary.embedded > 0 and len(opened) == 2
    _assert_consistent(settings)
    assert ingest([doc]).counts["unchanged"] == 1 and len(opened) == 2


def test_a_deleted_store_is_filled_again(ingest, settings, doc):
    first = ingest([doc])
    shutil.rmtree(settings.chroma_dir)
    _forget_open_clients()
    summary = ingest([doc])
    assert summary.counts["indexed"] == 1 and summary.embedded == first.embedded
    assert any("missing chunks" in n for n in summary.notes)
    _assert_consistent(settings)


def test_a_write_by_anyone_else_sends_the_run_through_the_store(ingest, settings, doc, opened):
    ingest([doc])
    store = ChunkStore(settings, "hash-bow-256")
    chunk = store.all_chunks()[0]
    store.upsert([chunk], [[0.5] * 256])  # same id, same count: only the write log shows it
    ingest([doc])
    assert len(opened) == 2


def test_another_manifest_is_not_vouched_for(ingest, settings, doc, opened):
    first = ingest([doc])
    settings.manifest_path.unlink()
    summary = ingest([doc])
    assert len(opened) == 2 and summary.repaired == first.total_chunks
    assert summary.counts["indexed"] == 1
    _assert_consistent(settings)


def test_another_collection_is_indexed_again(ingest, settings, doc):
    ingest([doc])
    other = Settings.resolve(home=settings.home, collection="other")
    summary = ingest([doc], settings=other)
    assert summary.counts["indexed"] == 1 and summary.embedded > 0
    assert ChunkStore(other, "hash-bow-256").count() == summary.total_chunks


def test_another_option_and_a_rebuild_index_again(ingest, settings, doc):
    ingest([doc])
    assert ingest([doc], redact=True).counts["indexed"] == 1
    rebuilt = ingest([doc], redact=True, rebuild=True)
    assert rebuilt.counts["indexed"] == 1 and rebuilt.embedded > 0
    assert settings.state_path.is_file()
    _assert_consistent(settings)


def test_a_damaged_store_stops_with_one_line_and_a_rebuild_recovers(ingest, settings, doc):
    ingest([doc])
    _forget_open_clients()
    catalogue = settings.chroma_dir / "chroma.sqlite3"
    with catalogue.open("r+b") as f:
        f.write(b"not a database" * 8)  # same size: only reading it can tell
    with pytest.raises(StoreDamagedError) as err:
        ingest([doc])
    assert err.value.exit_code == 1 and "\n" not in str(err.value)
    assert str(err.value).startswith(f"the index store at {settings.chroma_dir} cannot be opened")
    assert "--rebuild" in str(err.value)
    assert not state.is_clean(settings)
    summary = ingest([doc], rebuild=True)
    assert summary.counts["indexed"] == 1
    _assert_consistent(settings)


@pytest.mark.integration
def test_an_unchanged_cli_rerun_imports_neither_chroma_nor_the_models(tmp_path, doc):
    """The user's path: `python -m ingest` twice; the second run stays light."""
    command = [sys.executable, "-X", "importtime", "-m", "ingest", str(doc), "--home",
               str(tmp_path / "index"), "--json"]
    runs = [subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]

    def imported(run) -> set[str]:
        return {line.split("|")[-1].strip() for line in run.stderr.splitlines()
                if line.startswith("import time:")}

    heavy = {"chromadb", "onnxruntime", "pytesseract", "pandas", "torch"}
    assert "chromadb" in imported(runs[0])  # the first run did write the store
    assert imported(runs[1]) & heavy == set()
    summary = json.loads(runs[1].stdout)
    assert summary["counts"]["unchanged"] == 1 and summary["embedded"] == 0
    assert summary["total_chunks"] == json.loads(runs[0].stdout)["total_chunks"] > 0
