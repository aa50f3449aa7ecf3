"""Which runtime embeds passages at ingest: onnxruntime where installed, sentence-transformers
otherwise or when asked; the vectors agree; a cold ingest does not import torch."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

import retrieval.embeddings as embeddings
from ingest.pipeline import run
from tests.conftest import REPO, HashEmbedder, shared_data
from tests.ingest.conftest import write_markdown


class _Fake(HashEmbedder):
    """Stands in for a runtime's embedder class: records that it was built."""

    built: list[str] = []

    def __init__(self, name, model, **kwargs) -> None:
        super().__init__()
        self.name = name
        _Fake.built.append(type(self).__name__)


class FakeOnnx(_Fake):
    pass


class FakeTorch(_Fake):
    pass


@pytest.fixture
def runtimes(monkeypatch):
    """Both runtime classes replaced by fakes; returns the list of classes built."""
    _Fake.built = []
    monkeypatch.setattr(embeddings, "OnnxEmbedder", FakeOnnx)
    monkeypatch.setattr(embeddings, "SentenceTransformerEmbedder", FakeTorch)
    return _Fake.built


@pytest.mark.parametrize("onnx, env, expected", [
    (True, None, "FakeOnnx"),       # the default wherever onnxruntime is installed
    (False, None, "FakeTorch"),     # the fallback: sentence-transformers
    (True, "torch", "FakeTorch"),   # asked for
    (False, "onnx", "FakeOnnx"),    # asked for (fails loudly in the real class if missing)
])
def test_ingest_embeds_with_the_search_runtime(runtimes, monkeypatch, settings, tmp_path,
                                               onnx, env, expected):
    monkeypatch.setattr(embeddings, "onnx_available", lambda: onnx)
    if env:
        monkeypatch.setenv(embeddings.ENV_RUNTIME, env)
    doc = write_markdown(tmp_path / "docs" / "guide.md")
    settings = replace(settings, embedder="default")  # float32, either runtime
    summary = run([doc], settings, progress=False)
    assert runtimes == [expected]
    assert summary.embedded > 0 and summary.embedder == "default"
    # An unchanged re-run loads no embedder at all.
    again = run([doc], settings, progress=False)
    assert runtimes == [expected] and again.embedded == 0


@pytest.mark.integration
def test_cold_ingest_imports_neither_torch_nor_sentence_transformers(tmp_path):
    if not embeddings.onnx_available():
        pytest.skip("onnxruntime is not installed: ingest uses sentence-transformers")
    embeddings.onnx_model_path(embeddings.bundled_model_path())  # the one-time export (torch)
    doc = write_markdown(tmp_path / "docs" / "guide.md")
    code = (
        "import sys, json\n"
        "from ingest.pipeline import run\n"
        "from retrieval.settings import Settings\n"
        f"s = run([{str(doc)!r}], Settings.resolve(home={str(tmp_path / 'index')!r}), "
        "progress=False)\n"
        "print(json.dumps({'embedded': s.embedded, 'modules': [m for m in "
        "('torch', 'sentence_transformers', 'transformers') if m in sys.modules]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["embedded"] > 0 and result["modules"] == []


@pytest.mark.integration
def test_onnx_passages_match_sentence_transformers_on_the_manual():
    """The manual's own chunks (many over the 256-piece window): cosine >= 0.999 to the
    float32 sentence-transformers vectors, so indexes built by either runtime are one space."""
    from ingest.chunking import Chunker, ChunkingConfig, file_hash
    from ingest.loaders import load_file

    pdf = shared_data("emanual", "smart_tv_manual.pdf")
    data = pdf.read_bytes()
    chunks = Chunker(ChunkingConfig()).chunk(load_file(pdf, data), "manual.pdf", file_hash(data))
    texts = [c.text for c in chunks[::6]]  # every 6th chunk: 30 of them, lengths as they come
    onnx = embeddings.load_embedder("default", runtime="onnx")
    torch_st = embeddings.load_embedder("default", runtime="torch")
    torch_st._bf16_documents = False  # the float32 reference
    a = np.asarray(onnx.embed_documents(texts))
    b = np.asarray(torch_st.embed_documents(texts))
    assert sum(n > 256 for n in onnx.token_counts(texts)) > 5  # truncation is exercised
    assert (a * b).sum(axis=1).min() >= 0.999


def test_an_index_of_one_bundled_variant_is_refused_by_the_other(runtimes, settings, tmp_path):
    from retrieval.errors import IndexSettingsMismatchError

    doc = write_markdown(tmp_path / "docs" / "guide.md")
    int8 = replace(settings, embedder=embeddings.INT8_NAME)
    run([doc], int8, progress=False)
    assert json.loads(int8.manifest_path.read_text())["embedder"] == "default-int8"
    # The float32 "default" (unchanged files or not) must not add to or keep the int8 index:
    # its vectors are of another embedding space. --rebuild re-embeds everything.
    float32 = replace(int8, embedder="default")
    with pytest.raises(IndexSettingsMismatchError, match="built with embedder 'default-int8'"):
        run([doc], float32, progress=False)
    run([doc], float32, progress=False, rebuild=True)
    assert json.loads(float32.manifest_path.read_text())["embedder"] == "default"
    with pytest.raises(IndexSettingsMismatchError, match="built with embedder 'default'"):
        run([doc], int8, progress=False)
