"""Fixtures for agent tests: a fake searcher over a few chunks (scored with `HashEmbedder`), a
real index writer, and a real `python -m agent serve` in a subprocess (`ServeProcess`)."""

from __future__ import annotations

import hashlib
import sys

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


# --- a real server in a subprocess (tests/agent/test_serve*.py, bench/serve.py) ----------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`python -m agent serve` in a subprocess on a free localhost port.

    Args:
        home: Index directory (`--home`).
        flags: Further `serve` flags.
        fake_model: Answer with `tests.conftest.PassageQuotingModel` (fast) instead of the
            embedded model.
        env: Extra environment variables.
        log: File for the server's stdout and stderr (default: beside `home`).
    """

    def __init__(self, home, *flags: str, fake_model: bool = True, env: dict | None = None,
                 log=None) -> None:
        import os
        from pathlib import Path

        from tests.conftest import REPO

        self.home = Path(home)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [sys.executable, "-m", "agent", "serve", "--home", str(home),
                     "--port", str(self.port), *flags]
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "ANONYMIZED_TELEMETRY": "False", **(env or {})}
        if fake_model:
            self.env["CASEWISE_SERVE_TEST_LLM"] = "tests.conftest:PassageQuotingModel"
        self.log_path = Path(log or self.home.parent / f"serve-{self.port}.log")
        self.cwd = REPO
        self.proc = None

    def start(self, timeout: float = 240) -> ServeProcess:
        """Start the server and wait until /healthz answers 200."""
        import subprocess
        import time

        import httpx

        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not healthy after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (the crash test)."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM and wait (uvicorn shuts down gracefully); returns the exit code."""
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=30)


def parse_sse(lines) -> list[tuple[str | None, str]]:
    """`(event, data)` pairs of a server-sent event stream given as text lines."""
    events, event, data = [], None, []
    for line in lines:
        if line == "":
            if data:
                events.append((event, "\n".join(data)))
            event, data = None, []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        events.append((event, "\n".join(data)))
    return events
