"""The Chroma collection that holds the chunks: embedded `PersistentClient` or a Chroma server.

`ChunkStore(settings, embedder_name)` opens (or creates) the collection `settings.collection` in
cosine space, either on disk under `settings.chroma_dir` or on the server at
`settings.chroma_url`. Vectors always come from the caller (no Chroma embedding function, so
Chroma never downloads a model). Chunk <-> Chroma metadata conversion lives here: Chroma stores no
`None`, so a missing page is -1 and a missing section is "".

`embedded_fingerprint(settings)` identifies what the embedded store holds without importing
chromadb (about 0.8 s), for ingest's "nothing changed" check (`ingest.state`).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from retrieval.errors import CasewiseError, IndexSettingsMismatchError, UsageError
from retrieval.settings import Settings
from retrieval.types import Chunk

# Chunk fields stored as Chroma metadata keys; every other key is `Chunk.metadata`.
RESERVED_KEYS = ("source", "page", "section", "chunk_index", "doc_hash", "type")
# Collection-level metadata key recording the embedding space the vectors belong to.
EMBEDDER_KEY = "casewise_embedder"
NO_PAGE = -1


class StoreUnavailableError(CasewiseError):
    """The Chroma server cannot be reached or the store cannot be opened."""


class StoreDamagedError(StoreUnavailableError):
    """The embedded store's files cannot be read as a Chroma store (`--rebuild` re-creates it)."""


def chunk_to_metadata(chunk: Chunk) -> dict:
    """Chroma metadata for a chunk (no `None` values: page -1 and section "" stand for none).

    Args:
        chunk: The chunk.

    Returns:
        A flat dict of str/int/float/bool values.

    Raises:
        ValueError: An extra metadata key collides with a chunk field or has a non-scalar value.
    """
    meta: dict = {
        "source": chunk.source,
        "page": NO_PAGE if chunk.page is None else int(chunk.page),
        "section": chunk.section or "",
        "chunk_index": int(chunk.chunk_index),
        "doc_hash": chunk.doc_hash,
        "type": chunk.type,
    }
    for key, value in chunk.metadata.items():
        if key in RESERVED_KEYS:
            raise ValueError(
                f"chunk {chunk.id} ({chunk.source}): metadata key {key!r} collides with a chunk "
                f"field; rename it (reserved: {', '.join(RESERVED_KEYS)})"
            )
        if value is None:
            continue  # Chroma cannot store None; an absent key reads back as absent.
        if not isinstance(value, str | int | float | bool):
            raise ValueError(
                f"chunk {chunk.id} ({chunk.source}): metadata {key!r} is a "
                f"{type(value).__name__}; only str, int, float and bool can be stored"
            )
        meta[key] = value
    return meta


def chunk_from_record(chunk_id: str, text: str, meta: dict) -> Chunk:
    """Rebuild a chunk from a Chroma id, document and metadata (inverse of `chunk_to_metadata`).

    Args:
        chunk_id: The record id.
        text: The stored document.
        meta: The stored metadata.

    Returns:
        The chunk.
    """
    page = meta.get("page", NO_PAGE)
    return Chunk(
        id=chunk_id,
        text=text or "",
        source=meta.get("source", ""),
        page=None if page is None or int(page) == NO_PAGE else int(page),
        section=meta.get("section") or None,
        chunk_index=int(meta.get("chunk_index", 0)),
        doc_hash=meta.get("doc_hash", ""),
        type=meta.get("type", "doc"),
        metadata={k: v for k, v in meta.items() if k not in RESERVED_KEYS},
    )


def chroma_where(where: dict | None) -> dict | None:
    """Turn `{"source": ..., "type": ...}` equality filters into Chroma's `where` syntax.

    Several keys become an `$and` of equalities (Chroma accepts one key per clause). A dict that
    already uses Chroma operators (`$and`, `$or`, `{"type": {"$in": [...]}}`) passes unchanged.

    Args:
        where: Equality filter on metadata keys, or `None`.

    Returns:
        A Chroma `where` dict, or `None` for no filter.
    """
    if not where:
        return None
    if len(where) == 1:
        return dict(where)
    return {"$and": [{key: value} for key, value in where.items()]}


def _client_args(url: str) -> dict:
    parsed = urlparse(url)
    if not parsed.hostname:
        raise UsageError(f"chroma_url ({url!r}) has no host; use e.g. http://localhost:8000")
    ssl = parsed.scheme == "https"
    return {"host": parsed.hostname, "port": parsed.port or (443 if ssl else 8000), "ssl": ssl}


def _chroma_settings():
    from chromadb.config import Settings as ChromaSettings

    # Same settings object for every client of a path: Chroma refuses a second client of one
    # path with different settings in the same process.
    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


def _brief(err: Exception) -> str:
    """`Type: first line of the message` (Chroma's messages can run over many lines)."""
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


def _connect(settings: Settings):
    """A Chroma client for the server at `settings.chroma_url`, else the embedded store."""
    import chromadb

    if not settings.chroma_url:
        settings.chroma_dir.mkdir(parents=True, exist_ok=True)
        try:
            return chromadb.PersistentClient(path=str(settings.chroma_dir),
                                             settings=_chroma_settings())
        except Exception as err:  # noqa: BLE001 - Chroma's Rust core raises several types
            raise StoreDamagedError(
                f"the index store at {settings.chroma_dir} cannot be opened ({_brief(err)}): "
                "it is damaged or not a Chroma store; "
                "re-create it with `python -m ingest --rebuild PATH...`"
            ) from err
    try:
        client = chromadb.HttpClient(**_client_args(settings.chroma_url),
                                     settings=_chroma_settings())
        client.heartbeat()
    except Exception as err:  # noqa: BLE001 - connection errors differ by transport and version
        raise StoreUnavailableError(
            f"Chroma server at {settings.chroma_url} did not answer "
            f"({_brief(err)}); start it with `chroma run --path DIR --port PORT` "
            "or unset CASEWISE_CHROMA_URL / --chroma-url to use the embedded store"
        ) from err
    return client


# Read from Chroma's SQLite catalogue (chromadb 1.x schema): the collection, its segments, how many
# records its metadata segment holds and the log's last sequence numbers, which every write
# advances.
_FINGERPRINT_SQL = {
    "collection": "SELECT id, dimension FROM collections WHERE name = ?",
    "segments": "SELECT id, type FROM segments WHERE collection = ? ORDER BY id",
    "records": "SELECT count(*) FROM embeddings e JOIN segments s ON e.segment_id = s.id "
               "WHERE s.collection = ? AND s.scope = 'METADATA'",
    "applied": "SELECT m.segment_id, m.seq_id FROM max_seq_id m JOIN segments s "
               "ON m.segment_id = s.id WHERE s.collection = ? ORDER BY m.segment_id",
    "log": "SELECT count(*), max(seq_id) FROM embeddings_queue",
}


def embedded_fingerprint(settings: Settings) -> dict | None:
    """What identifies the embedded store's content, read without opening Chroma.

    Its files (relative path, inode, size) and, from Chroma's SQLite catalogue (opened read-only),
    the collection's id, its segments, its record count and the write log's sequence numbers.
    Two fingerprints are equal only if no write, deletion or replacement of the store happened in
    between. Modification times are left out on purpose: Chroma rewrites its files each time a
    client opens the store, even to read.

    Args:
        settings: Where the store lives (`chroma_dir`, `collection`).

    Returns:
        A JSON-ready dict, or `None` for a Chroma server, a missing store or collection, or a
        catalogue that cannot be read as expected (another chromadb schema, a damaged file):
        then only opening the store can tell.
    """
    if settings.chroma_url:
        return None
    root = settings.chroma_dir
    catalogue = root / "chroma.sqlite3"
    if not catalogue.is_file():
        return None
    try:
        files = []
        for folder, _, names in os.walk(root):
            for name in names:
                path = Path(folder, name)
                stat = path.stat()
                files.append([path.relative_to(root).as_posix(), stat.st_ino, stat.st_size])
    except OSError:
        return None  # a file vanished while we looked: something is writing
    try:
        db = sqlite3.connect(f"{catalogue.resolve().as_uri()}?mode=ro", uri=True)
        try:
            def rows(query: str, *args) -> list[list]:
                # JSON-shaped (lists, not tuples), so a fingerprint read back from a file compares.
                return [list(r) for r in db.execute(_FINGERPRINT_SQL[query], args).fetchall()]

            collection = rows("collection", settings.collection)
            if not collection:
                return None
            key = collection[0][0]
            return {"collection": [settings.collection, *collection[0]],
                    "files": sorted(files),
                    "segments": rows("segments", key), "records": rows("records", key),
                    "applied": rows("applied", key), "log": rows("log")}
        finally:
            db.close()
    except sqlite3.Error:
        return None


def _catalogue_readable(settings: Settings) -> bool:
    try:
        db = sqlite3.connect(f"{(settings.chroma_dir / 'chroma.sqlite3').resolve().as_uri()}"
                             "?mode=ro", uri=True)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return False
    return True


def drop_collection(settings: Settings) -> bool:
    """Delete the collection `settings.collection` whatever embedder built it (for a rebuild).

    Args:
        settings: Where the collection lives.

    An embedded store whose SQLite catalogue SQLite itself cannot read (a damaged file) is
    removed as a whole: a rebuild empties the index anyway, and nothing can be read from it.

    Returns:
        Whether a collection (or a damaged store) was there to delete.
    """
    if not settings.chroma_url and not settings.chroma_dir.exists():
        return False
    from chromadb.errors import NotFoundError

    try:
        client = _connect(settings)
    except StoreDamagedError:
        if _catalogue_readable(settings):
            raise  # Chroma fails on a readable file: not ours to delete
        shutil.rmtree(settings.chroma_dir)
        from chromadb.api.client import SharedSystemClient

        # This process may hold Chroma's cached client of the old files: forget it.
        SharedSystemClient.clear_system_cache()
        return True
    try:
        client.delete_collection(settings.collection)
    except NotFoundError:
        return False
    return True


class ChunkStore:
    """Chunks and their vectors in one Chroma collection (cosine space).

    Attributes:
        settings: Where the collection lives.
        embedder_name: Embedding space of the vectors; recorded on the collection when it is
            created and checked when it is opened.
    """

    def __init__(self, settings: Settings, embedder_name: str) -> None:
        """Open or create the collection.

        Args:
            settings: Resolved settings (`chroma_url` set: a Chroma server; else `chroma_dir`).
            embedder_name: Name of the embedder that produced (or will produce) the vectors.

        Raises:
            StoreUnavailableError: The Chroma server does not answer.
            IndexSettingsMismatchError: The collection holds vectors of another embedder.
        """
        self.settings = settings
        self.embedder_name = embedder_name
        self._client = _connect(settings)
        self._collection = self._open_collection()
        self._max_batch = int(self._client.get_max_batch_size())
        # Bumped on every write through this object, so caches in this process notice changes
        # that leave the count unchanged (a changed file replacing its chunks one for one).
        self.version = 0

    def _open_collection(self):
        from chromadb.errors import ChromaError

        try:
            collection = self._client.get_or_create_collection(
                self.settings.collection,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={EMBEDDER_KEY: self.embedder_name},
                embedding_function=None,
            )
        except ChromaError as err:
            raise CasewiseError(
                f"cannot open collection {self.settings.collection!r} at {self.location} "
                f"({err}); check CASEWISE_COLLECTION (3-512 letters, digits, '.', '_', '-') and "
                "that the location is a Chroma store"
            ) from err
        stored = (collection.metadata or {}).get(EMBEDDER_KEY)
        if stored is not None and stored != self.embedder_name:
            raise IndexSettingsMismatchError(
                f"collection {self.settings.collection!r} at {self.location} holds vectors of "
                f"embedder {stored!r}, not {self.embedder_name!r}; use embedder {stored!r} or "
                "re-index with `python -m ingest --rebuild ...`"
            )
        return collection

    @property
    def location(self) -> str:
        """Human-readable place of the collection (server URL or directory)."""
        return self.settings.chroma_url or str(self.settings.chroma_dir)

    @property
    def max_batch_size(self) -> int:
        """Most records Chroma accepts in one write; larger writes are split."""
        return self._max_batch

    def reset(self) -> None:
        """Delete the collection with everything in it and create it empty (for a rebuild)."""
        self._client.delete_collection(self.settings.collection)
        self._collection = self._open_collection()
        self.version += 1

    def upsert(self, chunks: list[Chunk], embeddings: list[list[float]]) -> None:
        """Insert or replace chunks with their vectors, in batches Chroma accepts.

        Args:
            chunks: Chunks to write; an existing id is overwritten.
            embeddings: One vector per chunk (a list of lists or a 2-D numpy array).

        Raises:
            ValueError: Lengths differ, ids repeat, or a metadata value cannot be stored.
        """
        if len(chunks) != len(embeddings):
            raise ValueError(
                f"upsert got {len(chunks)} chunks but {len(embeddings)} embeddings; "
                "pass one vector per chunk"
            )
        ids = [c.id for c in chunks]
        if len(set(ids)) != len(ids):
            raise ValueError("upsert got repeated chunk ids; ids must be unique within one call")
        for start in range(0, len(chunks), self._max_batch):
            batch = chunks[start:start + self._max_batch]
            self._collection.upsert(
                ids=[c.id for c in batch],
                embeddings=embeddings[start:start + self._max_batch],
                documents=[c.text for c in batch],
                metadatas=[chunk_to_metadata(c) for c in batch],
            )
        self.version += 1

    def delete(self, ids: list[str]) -> None:
        """Delete chunks by id; unknown ids are ignored.

        Args:
            ids: Chunk ids.
        """
        ids = list(ids)
        for start in range(0, len(ids), self._max_batch):
            self._collection.delete(ids=ids[start:start + self._max_batch])
        if ids:
            self.version += 1

    def count(self) -> int:
        """Number of chunks in the collection."""
        return int(self._collection.count())

    def _pages(self, where: dict | None, include: list[str]) -> Iterator[dict]:
        offset = 0
        while True:
            page = self._collection.get(
                where=chroma_where(where), include=include, limit=self._max_batch, offset=offset
            )
            if not page["ids"]:
                return
            yield page
            if len(page["ids"]) < self._max_batch:
                return
            offset += len(page["ids"])

    def ids(self, where: dict | None = None) -> set[str]:
        """Ids of the chunks matching `where` (all chunks when `None`).

        Args:
            where: Equality filter on metadata (e.g. `{"source": "docs/a.pdf"}`).

        Returns:
            The set of ids.
        """
        return {i for page in self._pages(where, include=[]) for i in page["ids"]}

    def get(self, ids: list[str]) -> list[Chunk]:
        """Chunks by id, in the order given; unknown ids are left out.

        Args:
            ids: Chunk ids.

        Returns:
            The chunks found.
        """
        ids = list(ids)
        found: dict[str, Chunk] = {}
        for start in range(0, len(ids), self._max_batch):
            page = self._collection.get(
                ids=ids[start:start + self._max_batch], include=["documents", "metadatas"]
            )
            for i, text, meta in zip(page["ids"], page["documents"], page["metadatas"],
                                     strict=True):
                found[i] = chunk_from_record(i, text, meta)
        return [found[i] for i in ids if i in found]

    def embeddings(self, ids: list[str]) -> dict[str, list[float]]:
        """Stored vectors by id (unknown ids are left out).

        Args:
            ids: Chunk ids.

        Returns:
            `{id: vector}`.
        """
        ids = list(ids)
        out: dict[str, list[float]] = {}
        for start in range(0, len(ids), self._max_batch):
            page = self._collection.get(ids=ids[start:start + self._max_batch],
                                        include=["embeddings"])
            for i, vector in zip(page["ids"], page["embeddings"], strict=True):
                out[i] = [float(x) for x in vector]
        return out

    def all_chunks(self, where: dict | None = None) -> list[Chunk]:
        """Every chunk matching `where`, read page by page.

        Args:
            where: Equality filter on metadata, or `None` for all.

        Returns:
            The chunks.
        """
        return [
            chunk_from_record(i, text, meta)
            for page in self._pages(where, include=["documents", "metadatas"])
            for i, text, meta in zip(page["ids"], page["documents"], page["metadatas"],
                                     strict=True)
        ]

    def _nearest(self, embedding: list[float], k: int, where: dict | None, include: list[str]
                 ) -> tuple[dict, list[float]]:
        result = self._collection.query(
            query_embeddings=[list(embedding)], n_results=k, where=chroma_where(where),
            include=["distances", *include],
        )
        # float32 HNSW distances can step just outside [0, 2]; keep similarity in [-1, 1].
        similarities = [max(-1.0, min(1.0, 1.0 - float(d))) for d in result["distances"][0]]
        return result, similarities

    def nearest_ids(self, embedding: list[float], k: int, where: dict | None = None
                    ) -> list[tuple[str, float]]:
        """Ids of the nearest chunks, without reading their text (much cheaper than `query`).

        Args:
            embedding: Normalised query vector.
            k: Number of results (fewer when the collection or filter holds fewer).
            where: Equality filter on metadata, or `None`.

        Returns:
            `(id, cosine similarity)` pairs, most similar first.
        """
        if k < 1:
            return []
        result, similarities = self._nearest(embedding, k, where, include=[])
        return list(zip(result["ids"][0], similarities, strict=True))

    def query(self, embedding: list[float], k: int, where: dict | None = None
              ) -> list[tuple[Chunk, float]]:
        """Nearest chunks to a query vector.

        Args:
            embedding: Normalised query vector.
            k: Number of results (fewer when the collection or filter holds fewer).
            where: Equality filter on metadata, or `None`.

        Returns:
            `(chunk, cosine similarity)` pairs, most similar first; similarity in [-1, 1].
        """
        if k < 1:
            return []
        result, similarities = self._nearest(embedding, k, where,
                                             include=["documents", "metadatas"])
        return [
            (chunk_from_record(i, text, meta), similarity)
            for i, text, meta, similarity in zip(
                result["ids"][0], result["documents"][0], result["metadatas"][0],
                similarities, strict=True,
            )
        ]
