"""The ingest run: walk paths, load, chunk, embed what is new, write Chroma and the manifest.

Sources are recorded relative to the directory that holds the index home (absolute when
outside it), so runs from different working directories agree on a file's key.

Incremental and idempotent: a file whose bytes hash like the manifest says is neither parsed
nor embedded (and the embedding model is not loaded when nothing changed); a changed file
embeds only chunks the index does not hold yet and then drops its stale ones;
`prune=True` removes the chunks of indexed files that no longer exist.

Crash safety (SIGKILL anywhere leaves a state the next run repairs). Per file the writes go:
1. upsert the file's new chunks into Chroma;
2. delete the file's stale chunks;
3. atomically replace the manifest (temp file + `os.replace`).
The manifest is the truth. At start, a run reconciles: chunks in Chroma that no manifest entry
owns (written by a killed run before its step 3) are deleted, and a manifest entry whose chunks
are not all in Chroma (killed between steps 2 and 3) is marked incomplete so it is indexed
again. A rebuild drops the collection before writing an empty manifest, so a rebuild killed
midway is finished by running it again. One ingest at a time per index: a lock file under the
index home serialises writers.

Chroma is opened only when needed (`ingest.state`): a run that finished records that the
embedded store holds exactly the manifest's chunks, so the next run skips the reconciliation
(and with unchanged files never imports chromadb); the record is removed before the first
write.

Cold start on two cores: the first file a run reads is read in a second process while this one
loads the embedder and opens Chroma (about 1.5 s of imports and set-up), when the run loads
its own embedder. pypdf is pure Python, so a thread would only take turns with the imports.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from filelock import FileLock, Timeout
from tqdm import tqdm

from ingest import state
from ingest.chunking import Chunker, ChunkingConfig, file_hash
from ingest.loaders import (
    PDF_SUFFIXES,
    LoadedFile,
    NoTextError,
    UnreadableFileError,
    load_file,
    redacts,
)
from ingest.ocr import PageOcr
from retrieval.errors import (
    EXIT_FAILED,
    EXIT_OK,
    CasewiseError,
    IndexNotFoundError,
    IndexSettingsMismatchError,
)
from retrieval.manifest import (
    check_embedder_probe,
    embedder_probe,
    new_manifest,
    read_manifest,
    write_manifest,
)
from retrieval.settings import Settings
from retrieval.store import ChunkStore, drop_collection
from retrieval.types import Chunk, Embedder

LOCK_TIMEOUT_S = 10.0
OCR_CACHE_DIR = "ocr-cache"
EMBED_BATCH = 64
# Tests only: seconds to sleep after each embedded batch, so a test can SIGKILL a run midway.
TEST_BATCH_SLEEP_ENV = "CASEWISE_TEST_BATCH_SLEEP"

# Some files failed, the others were indexed (the policy's "part of the run failed").
EXIT_FILES_FAILED = EXIT_FAILED


# The reader process of `_Run._load`: `load_file` on the bytes sent through stdin; the result,
# or the exception it raised, pickled back through stdout. A fresh interpreter (not a fork of
# this process, which may hold threads) that never runs the caller's `__main__`.
_READER = """
import pickle, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the ingest run's to handle
request = pickle.load(sys.stdin.buffer)
sys.path[:] = request["sys_path"]
from ingest.loaders import load_file
try:
    result = (True, load_file(*request["args"], **request["kwargs"]))
except Exception as err:
    result = (False, err)
pickle.dump(result, sys.stdout.buffer)
"""


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except OSError:
        pass  # the reader died; `_load` reads the file itself


class IngestLockedError(CasewiseError):
    """Another ingest holds the index lock."""


@runtime_checkable
class WindowedEmbedder(Protocol):
    """An embedder with a fixed input window (sentence-transformers models truncate past it)."""

    max_seq_length: int

    def token_counts(self, texts: list[str]) -> list[int]:
        """Word pieces of each text, counted without truncation."""
        ...


@dataclass
class FileResult:
    """What happened to one file.

    Attributes:
        path: Source key (path relative to the working directory where possible).
        status: `indexed`, `unchanged`, `skipped`, `failed` or `pruned`.
        chunks: Chunks the file has in the index after the run.
        embedded: Chunks embedded for it in this run.
        reason: Why it was skipped or failed.
        warnings: Problems that did not stop it (pages without text, bad rows).
        redactions: Customers' identifiers replaced before indexing, by kind.
        ocr_pages: Pages whose text OCR read (PDFs).
        ocr_cached: Of those, pages whose OCR result came from the cache.
        tables: Ruled tables found (PDFs), whose rows are kept together in the chunk text.
        over_window: Chunks embedded in this run that are longer than the embedder's window
            (their vector sees only the beginning; see `IngestSummary.notes`).
    """

    path: str
    status: str
    chunks: int = 0
    embedded: int = 0
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    redactions: dict[str, int] = field(default_factory=dict)
    ocr_pages: int = 0
    ocr_cached: int = 0
    tables: int = 0
    over_window: int = 0


@dataclass
class IngestSummary:
    """The outcome of a run, printed as a table or JSON by the CLI.

    Attributes:
        home: Index directory.
        embedder: Embedder name recorded in the manifest.
        files: One result per file seen (and per missing path given).
        embedded: Chunks embedded in this run (0 when nothing changed).
        deleted: Stale or pruned chunks deleted.
        repaired: Orphaned chunks of an interrupted run that were removed.
        total_chunks: Chunks in the index after the run.
        notes: Run-level remarks (files gone from disk, repairs, rebuild, chunks longer than
            the embedder's window).
        seconds: Wall time.
        window: The embedder's input window in word pieces, when it has one and embedded.
    """

    home: str
    embedder: str
    files: list[FileResult] = field(default_factory=list)
    embedded: int = 0
    deleted: int = 0
    repaired: int = 0
    total_chunks: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    window: int | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Number of files per status."""
        counts = Counter(f.status for f in self.files)
        return {s: counts.get(s, 0) for s in ("indexed", "unchanged", "skipped", "failed",
                                              "pruned")}

    @property
    def exit_code(self) -> int:
        """0 when no file failed, 1 otherwise (fatal errors never produce a summary)."""
        return EXIT_FILES_FAILED if self.counts["failed"] else EXIT_OK

    def to_dict(self) -> dict:
        """JSON-ready view (the CLI's `--json`)."""
        data = asdict(self)
        data["counts"] = self.counts
        data["exit_code"] = self.exit_code
        return data

    def format_table(self) -> str:
        """A plain-text table: one row per file, then warnings, notes and totals.

        The `ocr` column counts the pages OCR read (with how many came from its cache), the
        `tables` column the ruled tables whose rows were kept together.
        """
        rows = [(f.status, str(f.chunks), _ocr_cell(f), str(f.tables or "-"), f.path,
                 f.reason or "") for f in self.files]
        head = ("status", "chunks", "ocr", "tables", "file", "reason")
        n = len(head) - 1
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(n)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(head[:n], widths, strict=True))
                 + "  " + head[n]]
        lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
        for row in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row[:n], widths, strict=True))
                         + ("  " + row[n] if row[n] else ""))
        redacted = [f for f in self.files if f.redactions]
        if redacted:
            lines.append("")
            lines.append("redacted (customers' identifiers replaced before indexing):")
            for f in redacted:
                lines.append(f"  {f.path}: " + ", ".join(
                    f"{n} {kind}" for kind, n in sorted(f.redactions.items())))
        warned = [f for f in self.files if f.warnings]
        if warned:
            lines.append("")
            lines.append("warnings:")
            for f in warned:
                for w in f.warnings:
                    lines.append(f"  {f.path}: {w}")
        for note in self.notes:
            lines.append(f"note: {note}")
        c = self.counts
        lines.append("")
        lines.append(
            f"{c['indexed']} indexed, {c['unchanged']} unchanged, {c['skipped']} skipped, "
            f"{c['failed']} failed" + (f", {c['pruned']} pruned" if c["pruned"] else "")
            + f"; {self.embedded} chunks embedded, {self.deleted} deleted; "
            f"{self.total_chunks} chunks in the index at {self.home} ({self.seconds:.1f} s)"
        )
        if not self.embedded and not c["failed"]:
            lines.append("nothing to embed: the index is up to date with these files")
        return "\n".join(lines)


def run(
    paths: Iterable[str | Path],
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    prune: bool = False,
    rebuild: bool = False,
    progress: bool = True,
    chunking: ChunkingConfig | None = None,
    lock_timeout: float = LOCK_TIMEOUT_S,
    batch_size: int = EMBED_BATCH,
    redact: bool | None = None,
    ocr: str = "auto",
) -> IngestSummary:
    """Index files and directories into the index at `settings.home`.

    Args:
        paths: Files and directories (walked recursively; hidden entries are ignored).
        settings: Resolved settings (index home, embedder name, Chroma location).
        embedder: Embedder to use; `None` loads `settings.embedder` when something needs
            embedding (an unchanged index never loads the model).
        prune: Remove the chunks of indexed files that no longer exist on disk.
        rebuild: Empty the index and re-embed everything (needed to change embedder or
            chunking settings on an existing index).
        progress: Show progress bars (files, embedding) on stderr.
        chunking: Chunking settings; `None` keeps the index's own (or the defaults for a new
            index).
        lock_timeout: Seconds to wait for another ingest on the same index before giving up.
        batch_size: Chunks per embedding batch (and per Chroma write).
        redact: Redact customers' identifiers (`ingest.redact`) before indexing; `None` (the
            default) redacts ticket histories and help-desk exports, not manuals. A file
            indexed under another setting is indexed again.
        ocr: `auto`, `on` or `off`: whether PDF pages without a text layer are read by OCR
            (`ingest.ocr`; results cached under the index home). A PDF with such pages that
            was indexed under another effective mode is indexed again.

    Returns:
        The run summary (`summary.exit_code` is 1 when any file failed).

    Raises:
        IngestLockedError: Another ingest kept the index locked for `lock_timeout` seconds.
        OcrUnavailableError: `ocr="on"` and Tesseract is not installed.
        IndexSettingsMismatchError: The index was built with another embedder or chunking and
            `rebuild` is false.
        CasewiseError: Other fatal problems (damaged manifest, unreachable Chroma server,
            embedder that cannot be loaded).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size ({batch_size}) must be at least 1")
    page_ocr = PageOcr(ocr, cache_dir=settings.home / OCR_CACHE_DIR)  # fails before any work
    settings.home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(settings.lock_path), timeout=lock_timeout)
    try:
        lock.acquire()
    except Timeout:
        raise IngestLockedError(
            f"another ingest is running on {settings.home} (lock {settings.lock_path}); "
            "wait for it to finish and run again"
        ) from None
    try:
        return _Run(settings, embedder, chunking, progress, batch_size, redact,
                    page_ocr).execute(
            [Path(p) for p in paths], prune=prune, rebuild=rebuild,
        )
    finally:
        lock.release()


def _ocr_cell(result: FileResult) -> str:
    if not result.ocr_pages:
        return "-"
    return f"{result.ocr_pages}" + (f" ({result.ocr_cached} cached)" if result.ocr_cached else "")


def _same_options(entry: dict, redact: bool, ocr: PageOcr | None) -> bool:
    """Whether a file's manifest entry was indexed with the options this run would use.

    Entries from before an option was recorded count as unredacted and without OCR: a ticket
    history is then redacted, and a PDF whose pages lacked a text layer is read by OCR. The OCR
    mode is compared only for PDFs with pages (almost) without text, where it changes anything.
    """
    if entry.get("redact", False) != redact:
        return False
    candidates = entry.get("ocr_candidates")
    if candidates is None:
        candidates = sum("no text layer" in w for w in entry.get("warnings", []))
    return ocr is None or not candidates or (entry.get("ocr") or "off") == ocr.effective_mode


def source_key(path: Path, base: Path) -> str:
    """The source recorded for a file: relative to `base` when inside it, else absolute.

    `base` is the directory holding the index home, so a file gets the same key whatever the
    working directory of the run (a cwd-relative key would index one file twice).
    """
    resolved = path.resolve()
    try:
        return resolved.relative_to(base.resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def collect_files(paths: list[Path], exclude: Path | None = None,
                  ) -> tuple[list[Path], list[FileResult]]:
    """Expand directories (recursively, sorted, hidden entries ignored) and drop duplicates.

    Args:
        paths: Files and directories.
        exclude: A directory whose files are never collected (the index home itself).

    Returns:
        The files, and a failed result for every path that does not exist.
    """
    files: list[Path] = []
    missing: list[FileResult] = []
    seen: set[Path] = set()
    home = exclude.resolve() if exclude else None
    for path in paths:
        if not path.exists():
            missing.append(FileResult(str(path), "failed", reason="does not exist"))
            continue
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".")
                                           for part in p.relative_to(path).parts)
            )
        else:
            found = [path]
        for file in found:
            if home and file.resolve().is_relative_to(home):
                continue
            if file.resolve() not in seen:
                seen.add(file.resolve())
                files.append(file)
    return files, missing


class _Run:
    """One locked ingest run (state shared by its steps)."""

    def __init__(self, settings: Settings, embedder: Embedder | None,
                 chunking: ChunkingConfig | None, progress: bool, batch_size: int,
                 redact: bool | None, ocr: PageOcr) -> None:
        self.settings = settings
        self.redact = redact
        self.ocr = ocr
        self._embedder = embedder
        self.embedder_name = embedder.name if embedder is not None else settings.embedder.strip()
        self.requested_chunking = chunking
        self.progress = progress
        self.batch_size = batch_size
        self.sleep = float(os.environ.get(TEST_BATCH_SLEEP_ENV, "0") or 0)
        self.summary = IngestSummary(str(settings.home), self.embedder_name)
        self._store: ChunkStore | None = None
        self._cleared = False  # the index-state record is gone: this run writes
        self._saved = False  # this run rewrote the manifest
        self._probed = False  # the embedder was checked against the manifest's probe

    @property
    def embedder(self) -> Embedder:
        """The embedder, loaded on first use and then checked against the index's probe.

        Raises:
            IndexSettingsMismatchError: It no longer embeds as the one that built the index.
        """
        if self._embedder is None:
            from retrieval.embeddings import load_embedder

            # The same runtime as search (onnxruntime for the bundled model where installed,
            # CASEWISE_EMBEDDER_RUNTIME to choose): no torch import on a cold ingest.
            self._embedder = load_embedder(self.settings.embedder)
        if not self._probed:
            check_embedder_probe(self.manifest, self._embedder, self.settings.manifest_path,
                                 "adding to the index would mix two embedding spaces: re-embed "
                                 "everything with --rebuild")
            if "embedder_probe" not in self.manifest:
                # Recorded with the manifest's next save: an index from before the probe gets it.
                self.manifest["embedder_probe"] = embedder_probe(self._embedder)
            self._probed = True
        return self._embedder

    def execute(self, paths: list[Path], *, prune: bool, rebuild: bool) -> IngestSummary:
        start = time.perf_counter()
        manifest = self._open_manifest(rebuild)
        self.chunker = Chunker(ChunkingConfig(**manifest["chunking"]))
        clean = not rebuild and state.is_clean(self.settings)
        if rebuild:
            self._clear_state()
            # Whatever embedder filled it (its vectors may not even have our dimension).
            drop_collection(self.settings)
            manifest = self._new_manifest(self.chunker.config)
            self._save_manifest(manifest)
            self.summary.notes.append("rebuild: the index was emptied and re-embedded")
            self.store_ids: set[str] = set()
        else:
            self.store_ids = self._reconcile(manifest, clean)
        manifest["settings"] = self.settings.to_dict()  # the settings of the latest run
        self.manifest = manifest

        files, missing = collect_files(paths, exclude=self.settings.home)
        self.summary.files.extend(missing)
        seen: set[str] = set()
        for path in tqdm(files, desc="files", unit="file", disable=not self.progress):
            key = source_key(path, self.settings.home.resolve().parent)
            seen.add(key)
            self.summary.files.append(self._ingest_file(path, key))
        self._handle_gone(seen, prune)
        over = sum(f.over_window for f in self.summary.files)
        if over:
            self.summary.notes.append(
                f"{over} of {self.summary.embedded} chunks embedded are longer than the "
                f"embedder's {self.summary.window}-word-piece window: their vectors see only the "
                "beginning (keyword search and the answer see all of it). Kept whole: on the "
                "shared manual, splitting them or averaging windows lowered recall "
                "(docs/ingest.md); --chunk-size makes smaller chunks")
        if self._store is not None:
            self.summary.total_chunks = self.store.count()
        else:  # not opened: the index-state record vouches for the store, or there is none
            self.summary.total_chunks = len(self.store_ids)
        if not clean or self._cleared or self._saved or self._store is not None:
            owned = {i for entry in self.manifest["files"].values() for i in entry["chunk_ids"]}
            # Only when every chunk the manifest owns is there, and nothing else.
            if self.summary.total_chunks == len(owned) and owned == self.store_ids:
                state.mark_clean(self.settings, len(owned))
            else:
                self._clear_state()
        self.summary.seconds = round(time.perf_counter() - start, 3)
        return self.summary

    # --- set-up ---------------------------------------------------------------------------------

    def _new_manifest(self, config: ChunkingConfig) -> dict:
        return new_manifest(self.embedder_name, config.to_dict(), self.settings.to_dict())

    def _open_manifest(self, rebuild: bool) -> dict:
        try:
            manifest = read_manifest(self.settings.manifest_path)
        except IndexNotFoundError:
            return self._new_manifest(self.requested_chunking or ChunkingConfig())
        if rebuild:
            return self._new_manifest(
                self.requested_chunking or ChunkingConfig(**manifest["chunking"]))
        home = self.settings.home
        if manifest["embedder"] != self.embedder_name:
            raise IndexSettingsMismatchError(
                f"index at {home} was built with embedder {manifest['embedder']!r}, this run uses "
                f"{self.embedder_name!r}: mixing embedding spaces silently corrupts search; use "
                f"--embedder {manifest['embedder']} or re-embed everything with --rebuild"
            )
        wanted = self.requested_chunking
        if wanted is not None and wanted.to_dict() != manifest["chunking"]:
            raise IndexSettingsMismatchError(
                f"index at {home} was chunked with {manifest['chunking']}, this run asks for "
                f"{wanted.to_dict()}; re-chunk everything with --rebuild, or leave out "
                "--chunk-size/--chunk-overlap to keep the index's settings"
            )
        return manifest

    @property
    def store(self) -> ChunkStore:
        """The Chroma collection, opened on first use."""
        if self._store is None:
            self._store = ChunkStore(self.settings, self.embedder_name)
        return self._store

    def _writable_store(self) -> ChunkStore:
        """The store, once the index-state record is gone (every write goes through here)."""
        self._clear_state()
        return self.store

    def _save_manifest(self, manifest: dict) -> None:
        write_manifest(self.settings.manifest_path, manifest)
        self._saved = True

    def _clear_state(self) -> None:
        if not self._cleared:
            state.clear(self.settings)
            self._cleared = True

    def _reconcile(self, manifest: dict, clean: bool) -> set[str]:
        """Repair what an interrupted run left behind; returns the ids now in the store.

        `clean`: the index-state record vouches that the store holds exactly the manifest's
        chunks, so Chroma is not even opened. Without a store on disk there is nothing to
        repair either (every file of a manifest is then incomplete).
        """
        owned = {i for entry in manifest["files"].values() for i in entry["chunk_ids"]}
        if clean:
            return owned
        exists = self.settings.chroma_url or self.settings.chroma_dir.exists()
        store_ids = self.store.ids() if exists else set()
        orphans = store_ids - owned
        if orphans:
            self._writable_store().delete(sorted(orphans))
            store_ids -= orphans
            self.summary.repaired = len(orphans)
            self.summary.notes.append(
                f"removed {len(orphans)} orphaned chunks left by an interrupted run")
        incomplete = [key for key, entry in manifest["files"].items()
                      if not set(entry["chunk_ids"]) <= store_ids]
        for key in incomplete:
            manifest["files"][key]["status"] = "incomplete"
        if incomplete:
            self.summary.notes.append(
                f"{len(incomplete)} file(s) had missing chunks (interrupted run?) and are "
                f"re-indexed when given: {', '.join(incomplete[:5])}")
        return store_ids

    # --- per file -------------------------------------------------------------------------------

    def _ingest_file(self, path: Path, key: str) -> FileResult:
        try:
            data = path.read_bytes()
        except OSError as e:
            return FileResult(key, "failed", reason=f"cannot read ({e.strerror or e})")
        digest = file_hash(data)
        entry = self.manifest["files"].get(key)
        redact = redacts(path, self.redact)
        pdf_ocr = self.ocr if path.suffix.lower() in PDF_SUFFIXES else None
        if entry and entry["hash"] == digest and entry["status"] == "indexed" \
                and _same_options(entry, redact, pdf_ocr):
            return FileResult(key, "unchanged", chunks=len(entry["chunk_ids"]),
                              warnings=list(entry.get("warnings", [])),
                              redactions=dict(entry.get("redactions", {})),
                              ocr_pages=len(entry.get("ocr_pages", [])),
                              tables=entry.get("tables", 0))
        try:
            loaded = self._load(path, data, redact)
        except NoTextError as e:
            self._replace(key, path, digest, [], "skipped", e.reason, [])
            return FileResult(key, "skipped", reason=e.reason)
        except UnreadableFileError as e:
            kept = len(entry["chunk_ids"]) if entry else 0
            reason = e.reason + (f" (its previous {kept} chunks are kept)" if kept else "")
            return FileResult(key, "failed", chunks=kept, reason=reason)
        # The OCR mode matters (and starts the engine check) only for pages without text.
        ocr_mode = self.ocr.effective_mode if pdf_ocr and loaded.ocr_candidates else None
        chunks = self.chunker.chunk(loaded, key, digest)
        embedded, over = self._replace(key, path, digest, chunks, "indexed", None,
                                       loaded.warnings,
                                 pages=loaded.pages, type_=loaded.type,
                                 extra={"redact": redact, "redactions": loaded.redactions,
                                        "ocr": ocr_mode, "ocr_pages": loaded.ocr_pages,
                                        "ocr_candidates": loaded.ocr_candidates,
                                        "tables": loaded.tables})
        return FileResult(key, "indexed", chunks=len(chunks), embedded=embedded,
                          warnings=list(loaded.warnings), redactions=dict(loaded.redactions),
                          ocr_pages=len(loaded.ocr_pages), ocr_cached=loaded.ocr_cached,
                          tables=loaded.tables, over_window=over)

    def _load(self, path: Path, data: bytes, redact: bool) -> LoadedFile:
        """`load_file`; the first time, in a second process while the model and store load.

        Only for a PDF (pypdf is the slow reader; an empty file fails before any model is
        needed) and when this run loads its own embedder (an injected one is already loaded,
        and tests' monkeypatches must apply to the reading): the overlap hides the reading time
        (0.8 s for the 165-page manual) of a cold ingest. Should the reader process fail in
        any way, the file is read here instead, so errors are reported as always.
        """
        if (self._embedder is not None or path.suffix.lower() not in PDF_SUFFIXES
                or not data.strip()):
            return load_file(path, data, redact=redact, ocr=self.ocr)
        request = pickle.dumps({"sys_path": sys.path, "args": (path, data),
                                "kwargs": {"redact": redact, "ocr": self.ocr}})
        reader = subprocess.Popen([sys.executable, "-c", _READER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        # Fed from a thread: the pipe holds 64 KiB, and the reader takes a moment to start.
        feeder = threading.Thread(target=_feed, args=(reader.stdin, request), daemon=True)
        feeder.start()
        try:
            _ = self.embedder, self.store  # what this process needs next anyway
            result = reader.stdout.read()
            reader.wait()
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
        feeder.join()
        try:
            ok, value = pickle.loads(result)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                ImportError):  # no or unreadable answer: the reader died
            return load_file(path, data, redact=redact, ocr=self.ocr)
        if not ok:
            raise value
        return value

    def _replace(self, key: str, path: Path, digest: str, chunks: list[Chunk], status: str,
                 reason: str | None, warnings: list[str], *, pages: int | None = None,
                 type_: str | None = None, extra: dict | None = None) -> tuple[int, int]:
        """Write a file's chunks, drop its stale ones, then record it (the crash-safe order).

        Returns:
            Chunks embedded, and how many of them are longer than the embedder's window.
        """
        entry = self.manifest["files"].get(key)
        old_ids = set(entry["chunk_ids"]) if entry else set()
        have = old_ids & self.store_ids
        new = [c for c in chunks if c.id not in have]
        kept = [c for c in chunks if c.id in have]
        if kept:
            # Same content, same vector: re-write only the metadata (doc hash, chunk index).
            vectors = self.store.embeddings([c.id for c in kept])
            self._writable_store().upsert(kept, [vectors[c.id] for c in kept])
        over = self._embed_and_upsert(new, key)
        new_ids = {c.id for c in chunks}
        stale = sorted(old_ids - new_ids)
        if stale:
            self._writable_store().delete(stale)
        self.store_ids = (self.store_ids - set(stale)) | new_ids
        self.summary.deleted += len(stale)
        record = {
            "hash": digest, "chunk_ids": [c.id for c in chunks], "status": status,
            "type": type_ or (entry or {}).get("type", "doc"), "abs_path": str(path.resolve()),
            "pages": pages, "warnings": warnings, **(extra or {}),
        }
        if reason:
            record["reason"] = reason
        self.manifest["files"][key] = record
        self._save_manifest(self.manifest)
        return len(new), over

    def _embed_and_upsert(self, chunks: list[Chunk], key: str) -> int:
        """Embed and write chunks; returns how many are longer than the embedder's window."""
        if not chunks:
            return 0
        over = 0
        if isinstance(self.embedder, WindowedEmbedder):
            window = self.embedder.max_seq_length
            self.summary.window = window
            over = sum(n > window for n in self.embedder.token_counts([c.text for c in chunks]))
        bar = tqdm(total=len(chunks), desc=f"embedding {Path(key).name}", unit="chunk",
                   leave=False, disable=not self.progress)
        # A text that repeats in the file (a notice printed on several pages) is embedded once.
        vectors: dict[str, list[float]] = {}
        with bar:
            for start in range(0, len(chunks), self.batch_size):
                batch = chunks[start:start + self.batch_size]
                texts = [t for t in dict.fromkeys(c.text for c in batch) if t not in vectors]
                if texts:
                    vectors.update(zip(texts, self.embedder.embed_documents(texts), strict=True))
                self._writable_store().upsert(batch, [vectors[c.text] for c in batch])
                self.summary.embedded += len(batch)
                bar.update(len(batch))
                if self.sleep:
                    time.sleep(self.sleep)
        return over

    def _handle_gone(self, seen: set[str], prune: bool) -> None:
        gone = [
            key for key, entry in self.manifest["files"].items()
            if key not in seen and not Path(entry.get("abs_path", key)).exists()
        ]
        if not gone:
            return
        if not prune:
            self.summary.notes.append(
                f"{len(gone)} indexed file(s) no longer exist ({', '.join(gone[:5])}); "
                "run with --prune to remove their chunks")
            return
        for key in gone:
            ids = self.manifest["files"][key]["chunk_ids"]
            self._writable_store().delete(ids)
            self.store_ids -= set(ids)
            self.summary.deleted += len(ids)
            del self.manifest["files"][key]
            self._save_manifest(self.manifest)
            self.summary.files.append(FileResult(key, "pruned", reason="file no longer exists"))
