"""Fixtures for ingest tests: an index home, a fast ingest call and small generated documents."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ingest.pipeline import run
from retrieval.settings import Settings
from tests.conftest import REPO, HashEmbedder


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings.resolve(home=tmp_path / "index")


@pytest.fixture
def ingest(settings, hash_embedder):
    """`ingest(paths, **kw)`: run the pipeline quietly with the HashEmbedder."""
    def _run(paths, *, embedder: HashEmbedder | None = None, **kw):
        return run([str(p) for p in paths], kw.pop("settings", settings),
                   embedder=embedder or hash_embedder, progress=False, **kw)
    return _run


@pytest.fixture
def router_pdf(tmp_path) -> Path:
    """The repo's sample router manual, built into tmp (the committed script, not a copy)."""
    sys.path.insert(0, str(REPO / "samples"))
    try:
        import build_samples
    finally:
        sys.path.remove(str(REPO / "samples"))
    path = tmp_path / "docs" / "router_manual.pdf"
    build_samples.build_manual(path)
    return path


def write_markdown(path: Path, sections: int = 3, words: int = 60, tag: str = "") -> Path:
    """A Markdown file with `sections` headed sections of distinct words."""
    parts = ["# Guide"]
    for s in range(sections):
        body = " ".join(f"{tag}word{s}x{w}" for w in range(words))
        parts.append(f"## Part {s}\n\n{body}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(parts) + "\n")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path
