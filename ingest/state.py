"""The index-state record: the embedded store held exactly the manifest's chunks when a run ended.

With it an ingest run knows, without opening Chroma, that there is nothing to repair (no
orphans of a killed run, no incomplete file), so a re-run over unchanged files never imports
chromadb (about 0.8 s of a 1-2 s run) or the embedder: it reads the manifest, hashes the files
and prints the summary.

`<home>/index-state.json` names one manifest (sha256 of its bytes) and one store
(`retrieval.store.embedded_fingerprint`: its files, collection, record count and write log).
It is written atomically at the end of a run that finished, and removed before a run's first
write to the store, so a run killed midway leaves none and the next run repairs the store from
Chroma as it always did. Any difference - another or edited manifest, a deleted, replaced or
rewritten store, another collection, a record count that is not the manifest's - and the run
opens the store and reconciles. A Chroma server has none: it is checked on every run.
"""

from __future__ import annotations

import contextlib
import json
import os

from retrieval.manifest import manifest_digest, write_json_atomic
from retrieval.settings import Settings
from retrieval.store import embedded_fingerprint

STATE_VERSION = 1


def is_clean(settings: Settings) -> bool:
    """Whether the embedded store holds exactly the chunks of the manifest on disk.

    Args:
        settings: The index (home, Chroma location, collection).

    Returns:
        True when the record matches the manifest file and the store as they are now.
    """
    if settings.chroma_url:
        return False
    try:
        record = json.loads(settings.state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # none (killed run, older casewise) or damaged: reconcile through Chroma
    if not isinstance(record, dict) or record.get("version") != STATE_VERSION:
        return False
    if record.get("manifest_sha256") != manifest_digest(settings.manifest_path):
        return False
    fingerprint = embedded_fingerprint(settings)
    return fingerprint is not None and record.get("store") == fingerprint


def mark_clean(settings: Settings, chunks: int) -> bool:
    """Record that the store now holds exactly the manifest's `chunks` chunks.

    Call it only when the run finished and nothing else writes the store (the ingest lock is
    held). Not recorded (and any old record removed) when the store cannot be fingerprinted
    or its record count is not `chunks`.

    Args:
        settings: The index.
        chunks: Chunks the manifest owns (the store's count, which the fingerprint checks).

    Returns:
        Whether the record was written.
    """
    if settings.chroma_url:
        return False
    fingerprint = embedded_fingerprint(settings)
    digest = manifest_digest(settings.manifest_path)
    if fingerprint is None or digest is None or fingerprint["records"] != [[chunks]]:
        clear(settings)
        return False
    write_json_atomic(settings.state_path, {"version": STATE_VERSION, "manifest_sha256": digest,
                                            "store": fingerprint})
    return True


def clear(settings: Settings) -> None:
    """Remove the record durably (before the store is written: a crash must not leave it)."""
    try:
        settings.state_path.unlink()
    except FileNotFoundError:
        return
    # The unlink itself must reach the disk before the store's first write does.
    with contextlib.suppress(OSError):
        fd = os.open(settings.home, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
