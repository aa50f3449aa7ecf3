"""Fixtures for agent tests: a fake searcher over a few chunks, scored with `HashEmbedder`."""

from __future__ import annotations

import hashlib

import pytest

from retrieval.types import Chunk, Hit
from tests.conftest import HashEmbedder


def make_chunk(text: str, source: str = "router_manual.pdf", page: int | None = 4,
               section: str | None = None, type: str = "doc", **metadata) -> Chunk:
    # A content hash, not hash(): str hashes change between processes.
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return Chunk(id=f"{source}-{page}-{digest}", text=text, source=source, page=page,
                 section=section, chunk_index=0, doc_hash="h", type=type, metadata=metadata)


class FakeSearcher:
    """Ranks chunks by HashEmbedder cosine similarity; honours `where` equality filters."""

    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = list(chunks)
        self.embedder = HashEmbedder()
        self.queries: list[tuple[str, int, dict | None]] = []

    def search(self, query: str, k: int = 5, where: dict | None = None) -> list[Hit]:
        self.queries.append((query, k, where))
        q = self.embedder.embed_query(query)
        scored = []
        for c in self.chunks:
            if where and any(getattr(c, key) != value for key, value in where.items()):
                continue
            v = self.embedder.embed_query(c.text)
            scored.append((sum(a * b for a, b in zip(q, v)), c))
        scored.sort(key=lambda t: -t[0])
        return [Hit(chunk=c, score=1 / (60 + i), dense_rank=i, similarity=s)
                for i, (s, c) in enumerate(scored[:k], start=1)]


RESET = make_chunk(
    "To reset the router to factory settings, press and hold the Reset button on the back for "
    "10 seconds until the power light blinks orange. All settings are erased.",
    page=4, section="Factory reset",
)
LIGHTS = make_chunk(
    "The status lights can be turned off in the web interface under System > LED control. "
    "Turning the lights off does not affect the wireless signal.",
    page=5, section="Status lights",
)
WIFI = make_chunk(
    "To change the Wi-Fi password, open the web interface, go to Wireless > Security and enter "
    "a new passphrase of at least 8 characters.",
    page=3, section="Wireless security",
)
FAQ = make_chunk(
    "Question: How can I restore my router to factory defaults?\nAnswer: Hold the Reset button "
    "for 10 seconds.", source="faq.csv", page=None, type="faq",
)


@pytest.fixture
def chunks() -> list[Chunk]:
    return [RESET, LIGHTS, WIFI, FAQ]


@pytest.fixture
def searcher(chunks) -> FakeSearcher:
    return FakeSearcher(chunks)


def build_index(settings, chunks: list[Chunk], embedder) -> None:
    """Write a real index (Chroma store + manifest) holding `chunks`, without ingest."""
    from retrieval.manifest import new_manifest, write_manifest
    from retrieval.store import ChunkStore

    store = ChunkStore(settings, embedder.name)
    store.upsert(chunks, embedder.embed_documents([c.text for c in chunks]))
    manifest = new_manifest(embedder.name, {}, settings.to_dict())
    for c in chunks:
        entry = manifest["files"].setdefault(
            c.source, {"hash": c.doc_hash, "chunk_ids": [], "type": c.type, "status": "ok"})
        entry["chunk_ids"].append(c.id)
    write_manifest(settings.manifest_path, manifest)
