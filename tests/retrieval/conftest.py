"""Fixtures for retrieval tests: settings under tmp_path, a Chroma store, a small corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.settings import Settings
from retrieval.types import Chunk

REPO_ROOT = Path(__file__).resolve().parents[2]

# A small support corpus: each text has words that only it contains, so keyword tests are exact.
CORPUS = [
    ("manual.pdf", 3, "Factory reset", "doc",
     "To reset the router to factory settings, hold the reset button for ten seconds."),
    ("manual.pdf", 4, "Wireless", "doc",
     "The Wi-Fi password is printed on the label under the device."),
    ("manual.pdf", 5, "Firmware", "doc",
     "Firmware updates are installed from the admin page under System."),
    ("manual.pdf", 6, "Troubleshooting", "doc",
     "Error code XJ42 means the WAN cable is unplugged or damaged."),
    ("guide.pdf", None, None, "doc",
     "Parental controls limit internet access for selected devices at night."),
    ("faq.csv", 3, "Factory reset", "faq",
     "Q: How do I factory reset my router? A: Hold the reset button for ten seconds."),
    ("faq.csv", None, None, "faq",
     "Q: How do I change the Wi-Fi name? A: Open the admin page and edit the SSID."),
]


def make_chunks() -> list[Chunk]:
    return [
        Chunk(id=f"c{i}", text=text, source=source, page=page, section=section, chunk_index=i,
              doc_hash=f"hash-{source}", type=kind,
              metadata={"row": i} if kind == "faq" else {})
        for i, (source, page, section, kind, text) in enumerate(CORPUS)
    ]


def write_manifest(settings: Settings, embedder_name: str) -> None:
    """A minimal manifest as ingest writes it (only what search reads matters here)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.manifest_path.write_text(json.dumps({
        "version": 1, "embedder": embedder_name, "chunking": {}, "settings": settings.to_dict(),
        "files": {}, "updated_at": None,
    }))


@pytest.fixture(autouse=True)
def _fresh_chroma_clients():
    # Chroma caches one client system per path for the whole process; drop them between tests
    # so each test's tmp_path store is opened afresh.
    yield
    from chromadb.api.shared_system_client import SharedSystemClient

    SharedSystemClient.clear_system_cache()


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path / "index")


@pytest.fixture
def chunks() -> list[Chunk]:
    return make_chunks()


@pytest.fixture
def store(settings, hash_embedder, chunks):
    from retrieval.store import ChunkStore

    s = ChunkStore(settings, hash_embedder.name)
    s.upsert(chunks, hash_embedder.embed_documents([c.text for c in chunks]))
    return s
