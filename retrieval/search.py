"""Hybrid search: dense (Chroma) and BM25 keyword results fused by reciprocal rank fusion.

`open_searcher(settings)` is how the agent, eval and the debug CLI get a searcher for an index
built by `python -m ingest`: it checks that the index exists, loads the embedder recorded in the
manifest and opens the store. `HybridSearcher.search(query, k, where)` returns `Hit`s that carry
the fused score, both ranks and the cosine similarity of every hit.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

from retrieval import manifest as manifest_io
from retrieval.bm25 import BM25Index
from retrieval.embeddings import load_embedder
from retrieval.errors import IndexSettingsMismatchError
from retrieval.settings import DEFAULT_EMBEDDER, Settings
from retrieval.store import ChunkStore
from retrieval.types import Chunk, Embedder, Hit


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return max(-1.0, min(1.0, dot / norm)) if norm else 0.0


# Unfiltered candidates fetched per wanted filtered candidate before falling back to Chroma's
# filtered search.
DENSE_OVERSAMPLE = 8

# Fusion defaults: the constants bench/retrieval.py measures (grid-tuned there on the e-manual
# dev questions), checked here on the 354 FAQ-history questions as an independent set. With
# all-MiniLM-L6-v2, BM25 alone beats the dense list on manual-style questions (recall@5 0.90-0.94
# vs 0.76-0.78) and equal-weight RRF with k=60 let the dense list push good keyword hits out of
# the top 5 (0.86-0.87); k=10 with keyword weight 1.5 gives 0.89-0.92 recall@5 and 0.97-0.98
# recall@10 on both sets, and the dense list still decides when no keyword matches (paraphrases).
DEFAULT_K_RRF = 10.0
DEFAULT_DENSE_WEIGHT = 1.0
DEFAULT_KEYWORD_WEIGHT = 1.5

# Counting a Chroma collection scans it: 11-13 ms at 100,000 chunks, as much as the rest of a
# search together (docs/speed.md). A change by another process that leaves the manifest alone is
# therefore looked for at most once a second; writes through this store object (its version)
# and a rewritten manifest (every ingest run) are still seen at once.
COUNT_INTERVAL_S = 1.0


class HybridSearcher:
    """Dense top-N and BM25 top-N, fused by weighted reciprocal rank fusion.

    A chunk's fused score is `sum(weight / (k_rrf + rank))` over the lists it appears in. The
    BM25 index is built from `store.all_chunks()` on the first search and rebuilt when the
    collection changes (a write through this store object, the manifest file, or its count,
    which is checked at most once every `COUNT_INTERVAL_S` seconds).

    Attributes:
        store: The chunk store.
        embedder: Embeds queries; must be the embedder the index was built with.
    """

    def __init__(
        self,
        store: ChunkStore,
        embedder: Embedder,
        *,
        dense_n: int = 50,
        keyword_n: int = 50,
        k_rrf: float = DEFAULT_K_RRF,
        dense_weight: float = DEFAULT_DENSE_WEIGHT,
        keyword_weight: float = DEFAULT_KEYWORD_WEIGHT,
        manifest_path: Path | None = None,
    ) -> None:
        """Configure the searcher.

        Args:
            store: Chunk store to search.
            embedder: Query embedder (same embedding space as the stored vectors).
            dense_n: Candidates taken from the dense list.
            keyword_n: Candidates taken from the BM25 list.
            k_rrf: RRF constant; larger flattens the advantage of top ranks.
            dense_weight: Weight of the dense list in the fusion.
            keyword_weight: Weight of the BM25 list in the fusion (0 turns keywords off).
            manifest_path: Index manifest; when it changes on disk the BM25 cache is rebuilt.

        Raises:
            ValueError: A count is below 1, `k_rrf` is not positive, or a weight is negative or
                both are zero.
        """
        if dense_n < 1 or keyword_n < 1:
            raise ValueError(f"dense_n ({dense_n}) and keyword_n ({keyword_n}) must be >= 1")
        if k_rrf <= 0:
            raise ValueError(f"k_rrf ({k_rrf}) must be > 0")
        if dense_weight < 0 or keyword_weight < 0 or dense_weight + keyword_weight == 0:
            raise ValueError(
                f"dense_weight ({dense_weight}) and keyword_weight ({keyword_weight}) must be "
                ">= 0 and not both 0"
            )
        self.store = store
        self.embedder = embedder
        self.dense_n = dense_n
        self.keyword_n = keyword_n
        self.k_rrf = k_rrf
        self.dense_weight = dense_weight
        self.keyword_weight = keyword_weight
        self.manifest_path = manifest_path
        self._bm25: BM25Index | None = None
        self._bm25_key: tuple | None = None
        self._count: int | None = None  # the collection's size when last counted, and when
        self._counted_at = 0.0
        # Graph nodes may search from several threads; build the keyword index once, not per call.
        self._bm25_lock = threading.Lock()
        # The agent searches one question twice in a row (past tickets, then all chunks): keep
        # the last query's vector so the embedder runs once. One tuple: atomic to swap.
        self._last_query: tuple[str, list[float]] | None = None

    def _cache_key(self) -> tuple:
        mtime = None
        if self.manifest_path is not None and self.manifest_path.exists():
            mtime = self.manifest_path.stat().st_mtime_ns
        now = time.monotonic()
        if self._count is None or now - self._counted_at >= COUNT_INTERVAL_S:
            self._count, self._counted_at = self.store.count(), now
        return (self._count, self.store.version, mtime)

    def _embed_query(self, query: str) -> list[float]:
        last = self._last_query
        if last is not None and last[0] == query:
            return last[1]
        vector = self.embedder.embed_query(query)
        self._last_query = (query, vector)
        return vector

    def keyword_index(self) -> BM25Index:
        """The BM25 index over the whole collection, rebuilt when the collection changed."""
        with self._bm25_lock:
            key = self._cache_key()
            if self._bm25 is None or key != self._bm25_key:
                self._bm25 = BM25Index(self.store.all_chunks())
                self._bm25_key = key
            return self._bm25

    def _dense(self, query_vector: list[float], where: dict | None, corpus: BM25Index
               ) -> list[tuple[Chunk, float]]:
        # Ask Chroma for ids and distances only and take the chunks from the in-memory corpus:
        # reading documents back from Chroma costs more than the vector search itself. A filter
        # is applied to an oversampled unfiltered list first (cheap), and goes to Chroma's own
        # filtered search (slow at 100k chunks) only when too few candidates survive it.
        if not where:
            pairs = self.store.nearest_ids(query_vector, self.dense_n)
        else:
            mask = corpus.mask(where)
            wide = min(self.dense_n * DENSE_OVERSAMPLE, max(len(corpus), 1))
            pairs = [
                (i, sim) for i, sim in self.store.nearest_ids(query_vector, wide)
                if i in corpus.position and mask[corpus.position[i]]
            ]
            if len(pairs) < min(self.dense_n, int(mask.sum())) and wide < len(corpus):
                pairs = self.store.nearest_ids(query_vector, self.dense_n, where=where)
        pairs = pairs[: self.dense_n]
        # Written by another process since the corpus was read: fetch those few directly.
        known = {i: corpus.chunks[corpus.position[i]] for i, _ in pairs if i in corpus.position}
        known.update((c.id, c) for c in self.store.get([i for i, _ in pairs if i not in known]))
        return [(known[i], sim) for i, sim in pairs if i in known]

    def search(self, query: str, k: int = 5, where: dict | None = None) -> list[Hit]:
        """Return the `k` best hits for `query`, best first.

        Args:
            query: Free-text question.
            k: Number of hits.
            where: Equality filter on `source` and/or `type` (any stored metadata key works),
                applied to both lists; `None` searches everything.

        Returns:
            Hits with fused score, dense and keyword ranks, and cosine similarity.

        Raises:
            ValueError: `k` is below 1 or `where` is not an equality filter.
        """
        if k < 1:
            raise ValueError(f"k ({k}) must be >= 1")
        if not query.strip():
            return []
        query_vector = self._embed_query(query)
        corpus = self.keyword_index()
        dense = self._dense(query_vector, where, corpus) if self.dense_weight > 0 else []
        keyword = (
            corpus.search(query, self.keyword_n, where=where) if self.keyword_weight > 0 else []
        )

        chunks: dict[str, Chunk] = {}
        scores: dict[str, float] = {}
        dense_rank: dict[str, int] = {}
        keyword_rank: dict[str, int] = {}
        similarity: dict[str, float] = {}
        for rank, (chunk, sim) in enumerate(dense, start=1):
            chunks[chunk.id] = chunk
            dense_rank[chunk.id] = rank
            similarity[chunk.id] = sim
            scores[chunk.id] = scores.get(chunk.id, 0.0) + self.dense_weight / (self.k_rrf + rank)
        for rank, (chunk, _) in enumerate(keyword, start=1):
            chunks.setdefault(chunk.id, chunk)
            keyword_rank[chunk.id] = rank
            scores[chunk.id] = (
                scores.get(chunk.id, 0.0) + self.keyword_weight / (self.k_rrf + rank)
            )

        # Ties (same fused score) go to the better dense rank, then the better keyword rank.
        best = sorted(
            scores,
            key=lambda i: (-scores[i], dense_rank.get(i, math.inf), keyword_rank.get(i, math.inf)),
        )[:k]
        missing = [i for i in best if i not in similarity]
        if missing:
            for chunk_id, vector in self.store.embeddings(missing).items():
                similarity[chunk_id] = _cosine(query_vector, vector)
        return [
            Hit(
                chunk=chunks[i],
                score=scores[i],
                dense_rank=dense_rank.get(i),
                keyword_rank=keyword_rank.get(i),
                similarity=similarity.get(i),
            )
            for i in best
        ]


def read_manifest(settings: Settings) -> dict:
    """The index manifest of `settings.home` (see `retrieval.manifest.read_manifest`).

    Args:
        settings: Resolved settings.

    Returns:
        The parsed manifest.

    Raises:
        IndexNotFoundError: There is no manifest (nothing indexed yet).
        ManifestError: The manifest is damaged or from a newer casewise.
    """
    return manifest_io.read_manifest(settings.manifest_path)


def open_searcher(
    settings: Settings | None = None, *, embedder: Embedder | None = None, **options
) -> HybridSearcher:
    """A searcher over the index that `python -m ingest` built under `settings.home`.

    Args:
        settings: Resolved settings; `None` resolves flags-less defaults (environment, then
            `./.casewise`).
        embedder: Query embedder to use instead of loading the one named in the manifest
            (tests inject a fake); its `.name` must match the manifest.
        **options: Fusion options passed to `HybridSearcher` (`dense_n`, `keyword_n`, `k_rrf`,
            `dense_weight`, `keyword_weight`).

    Returns:
        The searcher.

    Raises:
        IndexNotFoundError: No manifest at `settings.manifest_path`.
        ManifestError: The manifest is damaged.
        IndexSettingsMismatchError: The configured embedder differs from the one that built the
            index, or no longer embeds as it did (`check_embedder_probe`).
        ModelNotFoundError: The manifest's embedder cannot be loaded.
    """
    settings = settings or Settings.resolve()
    manifest = read_manifest(settings)
    built_with = manifest["embedder"]
    configured = embedder.name if embedder is not None else settings.embedder
    if configured not in (built_with, DEFAULT_EMBEDDER) or (
        embedder is not None and embedder.name != built_with
    ):
        raise IndexSettingsMismatchError(
            f"{settings.manifest_path}: the index was built with embedder {built_with!r} but "
            f"{configured!r} is configured; unset CASEWISE_EMBEDDER / --embedder, or re-index "
            "with `python -m ingest --rebuild docs/`"
        )
    embedder = embedder or load_embedder(built_with)
    manifest_io.check_embedder_probe(manifest, embedder, settings.manifest_path,
                                     "re-index with `python -m ingest --rebuild docs/`")
    store = ChunkStore(settings, built_with)
    return HybridSearcher(store, embedder, manifest_path=settings.manifest_path, **options)
