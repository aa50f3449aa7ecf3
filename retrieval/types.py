"""Data shapes that cross package boundaries: chunks going into the index, hits coming out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import PurePath
from typing import Literal, Protocol

ChunkType = Literal["doc", "faq"]


@dataclass(frozen=True)
class Citation:
    """Where a passage came from, as shown to a support agent: file, page, section."""

    source: str
    page: int | None = None
    section: str | None = None

    def label(self) -> str:
        """Short label used in prompts and answers, e.g. `smart_tv_manual.pdf p.14`."""
        name = PurePath(self.source).name
        return f"{name} p.{self.page}" if self.page is not None else name

    def to_dict(self) -> dict:
        """JSON-ready view."""
        return asdict(self)


@dataclass(frozen=True)
class Chunk:
    """One indexed unit of text with its provenance.

    Attributes:
        id: Content-derived id (stable across runs for unchanged content).
        text: The text that is embedded and shown.
        source: Path of the file it came from, as given to ingest (relative where possible).
        page: 1-based PDF page, or the `page` column of an FAQ row; `None` when unknown.
        section: Section heading where one was found.
        chunk_index: Position of the chunk within its file.
        doc_hash: sha256 of the file's bytes.
        type: `"doc"` for documents, `"faq"` for a past ticket (question + answer).
        metadata: Extra fields (e.g. FAQ id, extra CSV columns); scalar values only.
    """

    id: str
    text: str
    source: str
    page: int | None
    section: str | None
    chunk_index: int
    doc_hash: str
    type: ChunkType = "doc"
    metadata: dict = field(default_factory=dict)

    @property
    def citation(self) -> Citation:
        """The chunk's citation."""
        return Citation(self.source, self.page, self.section)


@dataclass(frozen=True)
class Hit:
    """A search result: a chunk plus its fused score and the ranks that produced it.

    Attributes:
        chunk: The passage and its provenance.
        score: Fused (rank-based) score; comparable only within one result list.
        dense_rank: 1-based rank in the dense list, `None` when absent from it.
        keyword_rank: 1-based rank in the BM25 list, `None` when absent from it.
        similarity: Cosine similarity between query and chunk embeddings, in [-1, 1]; an absolute
            relevance signal usable for thresholds (grading, FAQ match). `None` when unknown.
    """

    chunk: Chunk
    score: float
    dense_rank: int | None = None
    keyword_rank: int | None = None
    similarity: float | None = None

    @property
    def text(self) -> str:
        """The passage text."""
        return self.chunk.text

    @property
    def citation(self) -> Citation:
        """Where the passage came from."""
        return self.chunk.citation


class PassageLike(Protocol):
    """Anything with passage text and a citation (`Hit` and `Chunk` both are): what prompts are
    built from and what answers are verified against."""

    @property
    def text(self) -> str: ...  # noqa: D102

    @property
    def citation(self) -> Citation: ...  # noqa: D102


class Searcher(Protocol):
    """What the agent, fine-tuning and eval need from retrieval."""

    def search(self, query: str, k: int = 5, where: dict | None = None) -> list[Hit]:
        """Return the `k` best hits for `query`, best first.

        Args:
            query: Free-text question.
            k: Number of hits.
            where: Metadata filter, equality on `source` and/or `type`
                (e.g. `{"type": "faq"}`); `None` searches everything.
        """
        ...


class Embedder(Protocol):
    """Turns text into vectors. `name` identifies the embedding space in the index manifest."""

    name: str

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed passages for storage."""
        ...

    def embed_query(self, text: str) -> list[float]:
        """Embed a search query."""
        ...
