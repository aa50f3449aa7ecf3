"""LangChain adapter: any `Searcher` as a `BaseRetriever` returning `Document`s with citations.

Each `Document.metadata` holds the chunk's provenance (`id`, `source`, `page`, `section`,
`type`, `chunk_index`, `doc_hash`), its extra metadata, the citation label (`citation`, e.g.
`router_manual.pdf p.3`) and the search signals (`score`, `dense_rank`, `keyword_rank`,
`similarity`), so a chain can cite and threshold without going back to the index.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from retrieval.types import Hit, Searcher


def hit_to_document(hit: Hit) -> Document:
    """A LangChain `Document` for a search hit, with citation and score metadata.

    Args:
        hit: The hit.

    Returns:
        The document (`page_content` is the passage text).
    """
    chunk = hit.chunk
    metadata: dict[str, Any] = dict(chunk.metadata)
    metadata.update(
        id=chunk.id,
        source=chunk.source,
        page=chunk.page,
        section=chunk.section,
        type=chunk.type,
        chunk_index=chunk.chunk_index,
        doc_hash=chunk.doc_hash,
        citation=hit.citation.label(),
        score=hit.score,
        dense_rank=hit.dense_rank,
        keyword_rank=hit.keyword_rank,
        similarity=hit.similarity,
    )
    return Document(page_content=chunk.text, metadata=metadata, id=chunk.id)


class CasewiseRetriever(BaseRetriever):
    """Hybrid casewise search behind LangChain's retriever interface.

    Attributes:
        searcher: The searcher (usually `retrieval.search.open_searcher(settings)`).
        k: Number of documents returned.
        where: Metadata filter applied to every query (e.g. `{"type": "doc"}`), or `None`.
    """

    searcher: Any
    k: int = 5
    where: dict | None = None

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        searcher: Searcher = self.searcher
        return [hit_to_document(hit) for hit in searcher.search(query, k=self.k, where=self.where)]
