"""Store and search through a real `chroma run` server on localhost (no network beyond it)."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from retrieval.search import HybridSearcher
from retrieval.settings import Settings
from retrieval.store import ChunkStore

from .conftest import make_chunks

CHROMA = Path(sys.executable).with_name("chroma")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def chroma_server(tmp_path):
    if not CHROMA.exists():
        pytest.skip(f"chroma CLI not installed next to {sys.executable}")
    port = _free_port()
    log = (tmp_path / "chroma.log").open("w")
    proc = subprocess.Popen(
        [str(CHROMA), "run", "--path", str(tmp_path / "server-data"), "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"chroma server did not start: {(tmp_path / 'chroma.log').read_text()[-2000:]}"
                )
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.integration
def test_store_and_search_through_a_chroma_server(chroma_server, tmp_path, hash_embedder):
    settings = Settings(home=tmp_path / "client-home", chroma_url=chroma_server)
    store = ChunkStore(settings, hash_embedder.name)
    chunks = make_chunks()
    store.upsert(chunks, hash_embedder.embed_documents([c.text for c in chunks]))
    assert store.count() == len(chunks)
    assert not settings.chroma_dir.exists()  # nothing embedded on the client side

    # A second client (as a later process would) sees the same data, metadata intact.
    reopened = ChunkStore(settings, hash_embedder.name)
    assert reopened.get(["c5"]) == [chunks[5]]
    hits = HybridSearcher(reopened, hash_embedder).search("factory reset router", k=3,
                                                          where={"type": "faq"})
    assert hits[0].chunk.id == "c5"
    assert all(h.similarity is not None for h in hits)
    reopened.delete(["c5"])
    assert store.ids({"type": "faq"}) == {"c6"}
