"""Okapi BM25 keyword index over chunk texts, scored with numpy.

The index is built once from a list of chunks and kept in memory as term-major postings
(term -> chunk positions and precomputed BM25 weights), so a query costs one vectorised
accumulation per query term: tens of milliseconds at 100,000 chunks. Tokens are the project's
content words (`retrieval.text`: lower-cased words without stop words, lightly stemmed, so that
"resetting", "resets" and "reset" match), applied identically to chunks and queries.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from retrieval.text import content_words
from retrieval.types import Chunk


class BM25Index:
    """Okapi BM25 over a fixed list of chunks.

    Attributes:
        chunks: The indexed chunks; positions in this list are the index's document ids.
        position: Chunk id -> position in `chunks`.
    """

    def __init__(self, chunks: list[Chunk], *, k1: float = 1.2, b: float = 0.75) -> None:
        """Build the index.

        Args:
            chunks: Chunks to index (their `text`).
            k1: Term-frequency saturation.
            b: Length normalisation, in [0, 1].

        Raises:
            ValueError: `k1` is negative or `b` is outside [0, 1].
        """
        if k1 < 0:
            raise ValueError(f"k1 ({k1}) must be >= 0")
        if not 0.0 <= b <= 1.0:
            raise ValueError(f"b ({b}) must be between 0 and 1")
        self.chunks = list(chunks)
        self.position = {chunk.id: i for i, chunk in enumerate(self.chunks)}
        self._columns: dict[str, np.ndarray] = {}
        vocab: dict[str, int] = {}
        term_ids: list[int] = []
        doc_ids: list[int] = []
        tfs: list[int] = []
        lengths = np.zeros(len(self.chunks), dtype=np.float32)
        for doc, chunk in enumerate(self.chunks):
            counts = Counter(content_words(chunk.text))
            lengths[doc] = sum(counts.values())
            for term, tf in counts.items():
                term_ids.append(vocab.setdefault(term, len(vocab)))
                doc_ids.append(doc)
                tfs.append(tf)
        self._vocab = vocab
        terms = np.asarray(term_ids, dtype=np.int64)
        order = np.argsort(terms, kind="stable")
        self._docs = np.asarray(doc_ids, dtype=np.int32)[order]
        tf = np.asarray(tfs, dtype=np.float32)[order]
        df = np.bincount(terms, minlength=len(vocab)).astype(np.float32)
        self._indptr = np.concatenate(([0], np.cumsum(df))).astype(np.int64)
        n = max(len(self.chunks), 1)
        avgdl = float(lengths.mean()) if len(self.chunks) and lengths.mean() > 0 else 1.0
        idf = np.log1p((n - df + 0.5) / (df + 0.5))  # Lucene's non-negative idf
        self._idf = idf
        self._idf_unseen = float(np.log1p((n + 0.5) / 0.5))
        norm = k1 * (1.0 - b + b * lengths[self._docs] / avgdl)
        term_of_posting = terms[order]
        self._weights = (idf[term_of_posting] * tf * (k1 + 1.0) / (tf + norm)).astype(np.float32)

    def idf(self, term: str) -> float:
        """Inverse document frequency of a content word (`retrieval.text.content_words`) in the
        indexed chunks; a word no chunk holds gets the highest value."""
        t = self._vocab.get(term)
        return self._idf_unseen if t is None else float(self._idf[t])

    def __contains__(self, term: str) -> bool:
        """Whether some indexed chunk holds the content word `term`."""
        return term in self._vocab

    def terms(self) -> list[str]:
        """Every content word some indexed chunk holds."""
        return list(self._vocab)

    def __len__(self) -> int:
        return len(self.chunks)

    def _column(self, key: str) -> np.ndarray:
        # One array per filtered key, built on first use: `where` then costs one vectorised
        # comparison instead of a Python loop over every chunk.
        if key not in self._columns:
            if key in ("source", "type", "section", "page", "doc_hash", "chunk_index"):
                values = [getattr(c, key) for c in self.chunks]
            else:
                values = [c.metadata.get(key) for c in self.chunks]
            self._columns[key] = np.asarray(values, dtype=object)
        return self._columns[key]

    def mask(self, where: dict) -> np.ndarray:
        """Boolean array over `chunks`: which ones match an equality filter.

        Args:
            where: `{key: value}` on chunk fields (`source`, `type`, ...) or metadata keys.

        Returns:
            The mask.

        Raises:
            ValueError: The filter uses operators instead of plain equality.
        """
        mask = np.ones(len(self.chunks), dtype=bool)
        for key, value in where.items():
            if key.startswith("$") or isinstance(value, dict | list):
                raise ValueError(
                    f"where filter {where!r}: only equality on metadata keys is supported, "
                    "e.g. {'type': 'faq', 'source': 'docs/manual.pdf'}"
                )
            mask &= self._column(key) == value
        return mask

    def search(self, query: str, n: int, where: dict | None = None) -> list[tuple[Chunk, float]]:
        """The `n` best chunks for `query` by BM25 score (only chunks sharing a term).

        Args:
            query: Free text.
            n: Most results to return.
            where: Equality filter on chunk fields or metadata keys, or `None`.

        Returns:
            `(chunk, score)` pairs, best first; scores are positive.
        """
        if n < 1 or not self.chunks:
            return []
        scores = np.zeros(len(self.chunks), dtype=np.float32)
        for term in set(content_words(query)):
            t = self._vocab.get(term)
            if t is None:
                continue
            lo, hi = self._indptr[t], self._indptr[t + 1]
            scores[self._docs[lo:hi]] += self._weights[lo:hi]
        if where:
            scores[~self.mask(where)] = 0.0
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) > n:
            candidates = candidates[np.argpartition(-scores[candidates], n - 1)[:n]]
        # Ties broken by position, so results are deterministic.
        best = candidates[np.lexsort((candidates, -scores[candidates]))]
        return [(self.chunks[i], float(scores[i])) for i in best]
