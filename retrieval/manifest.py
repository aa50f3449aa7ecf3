"""The index manifest: which files are indexed, with which hashes, chunk ids and settings.

Written by ingest, read by search (to load the embedder that built the index) and by anyone who
needs to know how an index was made. JSON at `settings.manifest_path`:

    {"version": 1, "embedder": "default", "embedder_probe": [0.0123, ...],
     "chunking": {...}, "settings": {...},
     "files": {"docs/a.pdf": {"hash": "...", "chunk_ids": [...], "type": "doc",
                              "status": "indexed", "pages": 12, "warnings": [...]}},
     "updated_at": "2026-01-15T09:00:00+00:00"}

`embedder` names the model that built the vectors; `embedder_probe` is that model's vector of
one fixed sentence (`PROBE_TEXT`), so that a name whose weights changed (an upgraded package,
another model copied to the same path) is caught instead of searching two embedding spaces
(`check_embedder_probe`). Indexes built before the probe existed get it on their next ingest
that embeds anything.

Writes are atomic (temporary file in the same directory, fsync, `os.replace`): a reader or a
crash never sees half a manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from retrieval.errors import IndexNotFoundError, IndexSettingsMismatchError, UsageError

MANIFEST_VERSION = 1


# The probe: an ordinary support question. Weights behind one name that embed it with a cosine
# below PROBE_MIN_COSINE are another model. The same weights on another runtime or CPU differ in
# the last bits only (the bundled model on onnxruntime against torch: 0.99999999); its int8
# build, 0.995 from it, has a name of its own.
PROBE_TEXT = "How do I reset the device to its factory settings?"
PROBE_MIN_COSINE = 0.999


class ManifestError(UsageError):
    """The manifest exists but cannot be used (not JSON, wrong shape, newer version)."""


def new_manifest(embedder: str, chunking: dict, settings: dict) -> dict:
    """An empty manifest for a new index.

    Args:
        embedder: Name of the embedder (`Embedder.name`).
        chunking: The chunking settings (`ChunkingConfig.to_dict()`).
        settings: The resolved settings (`Settings.to_dict()`).

    Returns:
        The manifest dict, with no files.
    """
    return {
        "version": MANIFEST_VERSION,
        "embedder": embedder,
        "chunking": dict(chunking),
        "settings": dict(settings),
        "files": {},
        "updated_at": None,
    }


def embedder_probe(embedder) -> list[float]:
    """`embedder`'s vector of `PROBE_TEXT`, rounded for the manifest."""
    return [round(float(x), 6) for x in embedder.embed_query(PROBE_TEXT)]


def check_embedder_probe(manifest: dict, embedder, path: Path, advice: str) -> None:
    """Refuse an embedder that no longer embeds as the one that built the index did.

    Args:
        manifest: The index manifest; without `embedder_probe` (an index built before it
            existed) nothing can be checked and nothing is.
        embedder: The embedder loaded for the manifest's `embedder` name.
        path: The manifest, named in the message.
        advice: What the user should do (the caller's command).

    Raises:
        IndexSettingsMismatchError: The probe's vector changed dimension, or its cosine with
            the recorded one is below `PROBE_MIN_COSINE`.
    """
    stored = manifest.get("embedder_probe")
    if stored is None:
        return
    now = embedder_probe(embedder)
    if len(now) != len(stored):
        detail = f"its vectors have {len(now)} dimensions, the index's {len(stored)}"
    else:
        norms = math.sqrt(sum(a * a for a in stored)) * math.sqrt(sum(b * b for b in now))
        cosine = sum(a * b for a, b in zip(stored, now, strict=True)) / (norms or 1.0)
        if cosine >= PROBE_MIN_COSINE:
            return
        detail = (f"a fixed probe sentence now embeds at cosine {cosine:.3f} to the vector "
                  f"recorded when the index was built, {PROBE_MIN_COSINE} needed")
    raise IndexSettingsMismatchError(
        f"{path}: embedder {manifest['embedder']!r} no longer embeds as it did when this index "
        f"was built ({detail}): the weights behind the name changed (an upgraded package, or "
        f"another model at that path); {advice}"
    )


def read_manifest(path: Path) -> dict:
    """Read and check a manifest.

    Args:
        path: `settings.manifest_path`.

    Returns:
        The manifest dict.

    Raises:
        IndexNotFoundError: There is no manifest (nothing was indexed there yet).
        ManifestError: The file is damaged or from a newer casewise.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IndexNotFoundError(
            f"no index at {path.parent}: run `python -m ingest docs/` first"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}); re-create the index with "
            "`python -m ingest --rebuild PATH...`"
        ) from e
    missing = [k for k in ("version", "embedder", "chunking", "files") if k not in data] \
        if isinstance(data, dict) else ["(not an object)"]
    if missing:
        raise ManifestError(
            f"{path}: missing key(s) {', '.join(missing)}; re-create the index with "
            "`python -m ingest --rebuild PATH...`"
        )
    if data["version"] > MANIFEST_VERSION:
        raise ManifestError(
            f"{path}: manifest version {data['version']} is newer than this casewise "
            f"understands ({MANIFEST_VERSION}); upgrade casewise"
        )
    return data


def write_manifest(path: Path, manifest: dict) -> None:
    """Write the manifest atomically and stamp `updated_at`.

    Args:
        path: `settings.manifest_path`.
        manifest: The manifest dict (modified in place: `updated_at`).
    """
    manifest["updated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json_atomic(path, manifest, indent=1)


def manifest_digest(path: Path) -> str | None:
    """sha256 of the manifest file's bytes (`None` when there is none): names one manifest."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def write_json_atomic(path: Path, data: dict, indent: int | None = None) -> None:
    """Write JSON so that a reader or a crash sees the old file or the new one, never half.

    Temporary file in the same directory, fsync, `os.replace`.

    Args:
        path: Target file (its directory is created).
        data: JSON-ready dict (written with sorted keys).
        indent: Indentation, `None` for one line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=indent, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
