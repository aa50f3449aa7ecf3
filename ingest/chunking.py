"""Section-aware chunking with exact page metadata and content-derived ids.

A chunk never crosses a page: loaders hand over blocks of one page and one section; long blocks
are cut into word windows with overlap, and a short section is joined with the next section of
the same page (so a chunk can span sections, never pages). Optionally (`heading_prefix`) the
section heading is prefixed to the chunk text when the text does not already start with it. An
FAQ row is always exactly one chunk.

Ids are content hashes: sha256 of (source, text, page, chunking settings). Unchanged content
gives the same ids run after run, which is what makes re-indexing idempotent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from ingest.loaders import Block, LoadedFile
from retrieval.types import Chunk
from retrieval.errors import UsageError, at_least


@dataclass(frozen=True)
class ChunkingConfig:
    """How documents are cut into chunks (recorded in the index manifest).

    Attributes:
        chunk_size: Most words of document text per chunk (the heading prefix not counted).
        chunk_overlap: Words shared by consecutive chunks of one long block.
        min_chunk_words: A block shorter than this is joined to the next block of the same page
            (a short section alone makes a chunk with too little context to be found); joined
            blocks never grow past `chunk_size`, so a value above it means "fill up to it".
        heading_prefix: Prefix the section heading to the chunk text.
    """

    # Tuned on the shared Smart TV manual's dev questions (bench/retrieval.py, docs/ingest.md):
    # page-sized chunks (short sections joined within their page) beat 100-200-word chunks for
    # both BM25 and fused search; the heading prefix did not help there, so it is opt-in.
    chunk_size: int = 350
    chunk_overlap: int = 50
    min_chunk_words: int = 200
    heading_prefix: bool = False

    def __post_init__(self) -> None:
        at_least("chunk_size", self.chunk_size, 1, unit="word")
        if self.chunk_overlap < 0:
            raise UsageError(f"chunk_overlap ({self.chunk_overlap}) must not be negative")
        if self.chunk_overlap >= self.chunk_size:
            raise UsageError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size "
                f"({self.chunk_size})"
            )
        if self.min_chunk_words < 0:
            raise UsageError(
                f"min_chunk_words ({self.min_chunk_words}) must not be negative (0 turns "
                "joining of short sections off)"
            )

    def to_dict(self) -> dict:
        """JSON-ready view, stored in the manifest and hashed into chunk ids."""
        return asdict(self)

    @property
    def fingerprint(self) -> str:
        """Stable text form of the settings for hashing."""
        return json.dumps(self.to_dict(), sort_keys=True)


def file_hash(data: bytes) -> str:
    """sha256 of a file's bytes (the document hash)."""
    return hashlib.sha256(data).hexdigest()


def chunk_id(source: str, text: str, page: int | None, config: ChunkingConfig,
             occurrence: int = 0) -> str:
    """Content id of a chunk.

    Args:
        source: The file's source key.
        text: The chunk text.
        page: The chunk's page (or `None`).
        config: The chunking settings.
        occurrence: How many identical (source, text, page) chunks came before it in the file;
            keeps ids unique when a page repeats a passage.

    Returns:
        A hex sha256.
    """
    payload = json.dumps([source, text, page, config.fingerprint, occurrence])
    return hashlib.sha256(payload.encode()).hexdigest()


class Chunker:
    """Cuts loaded files into chunks.

    Args:
        config: Chunking settings (validated by `ChunkingConfig`).
    """

    def __init__(self, config: ChunkingConfig) -> None:
        self.config = config

    def chunk(self, loaded: LoadedFile, source: str, doc_hash: str) -> list[Chunk]:
        """Chunk one loaded file.

        Args:
            loaded: The file's blocks.
            source: Source key stored with every chunk (path as given, relative where possible).
            doc_hash: sha256 of the file's bytes.

        Returns:
            Chunks in file order with ids unique within the file.
        """
        pieces: list[tuple[str, Block]] = []
        if loaded.type == "faq":
            pieces = [(block.text, block) for block in loaded.blocks]
        else:
            for block in self._join_short(loaded.blocks):
                pieces.extend((text, block) for text in self._split(block))
        chunks: list[Chunk] = []
        seen: dict[tuple, int] = {}
        for index, (text, block) in enumerate(pieces):
            key = (text, block.page)
            occurrence = seen.get(key, 0)
            seen[key] = occurrence + 1
            chunks.append(Chunk(
                id=chunk_id(source, text, block.page, self.config, occurrence),
                text=text,
                source=source,
                page=block.page,
                section=block.section,
                chunk_index=index,
                doc_hash=doc_hash,
                type=loaded.type,
                metadata=dict(block.metadata),
            ))
        return chunks

    def _join_short(self, blocks: list[Block]) -> list[Block]:
        """Join a short block to the following block of the same page.

        The joined block is labelled with the sections' common outline ancestor when they
        share one ("Reset > A" + "Reset > B" -> "Reset"), else with the section it starts in;
        text never moves to another page and a joined block never grows past `chunk_size`.
        """
        out: list[Block] = []
        pending: Block | None = None
        for block in blocks:
            if pending is not None and pending.page == block.page:
                words = len(pending.text.split()) + len(block.text.split())
                if words <= self.config.chunk_size:
                    block = Block(pending.text + "\n" + block.text, block.page,
                                  _joined_section(pending.section, block.section),
                                  block.metadata)
                else:
                    out.append(pending)
            elif pending is not None:
                out.append(pending)
            pending = block if len(block.text.split()) < self.config.min_chunk_words else None
            if pending is None:
                out.append(block)
        if pending is not None:
            out.append(pending)
        return out

    def _split(self, block: Block) -> list[str]:
        words = block.text.split()
        size, step = self.config.chunk_size, self.config.chunk_size - self.config.chunk_overlap
        if len(words) <= size:
            windows = [words]
        else:
            starts = list(range(0, len(words) - size, step))
            # The last window ends at the last word, so no tiny tail chunk is left over.
            starts.append(len(words) - size)
            windows = [words[s:s + size] for s in starts]
        return [self._with_heading(" ".join(w), block.section) for w in windows]

    def _with_heading(self, body: str, section: str | None) -> str:
        if not self.config.heading_prefix or not section:
            return body
        leaf = section.rsplit(" > ", 1)[-1]
        if body.lower().startswith(section.lower()):
            return body
        if leaf != section and body.lower().startswith(leaf.lower()):
            # The page prints the leaf heading; name the chapter path in front of it.
            return f"{section.rsplit(' > ', 1)[0]} > {body}"
        return f"{section}\n{body}"


def _joined_section(first: str | None, second: str | None) -> str | None:
    if not first or not second or first == second:
        return first or second
    common = []
    for a, b in zip(first.split(" > "), second.split(" > "), strict=False):
        if a != b:
            break
        common.append(a)
    return " > ".join(common) if common else first
