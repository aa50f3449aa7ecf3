import numpy as np
import pytest

from retrieval.embeddings import bundled_model_path, load_embedder
from retrieval.errors import ModelNotFoundError


def test_bundled_model_is_located_through_package_metadata():
    path = bundled_model_path()
    assert (path / "modules.json").is_file() and (path / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["/no/such/model", "./missing-model", "  "])
def test_bad_model_path_is_a_clear_error(name):
    with pytest.raises(ModelNotFoundError, match="embedder"):
        load_embedder(name)


def test_a_file_instead_of_a_model_directory_is_refused(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        load_embedder(str(path))


def test_a_directory_that_is_no_model_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="cannot load"):
        load_embedder(str(tmp_path))


def test_hub_id_is_not_downloaded():
    with pytest.raises(ModelNotFoundError, match="Hugging Face cache"):
        load_embedder("sentence-transformers/surely-not-cached-model")


@pytest.fixture(scope="module")
def minilm():
    return load_embedder("default")


@pytest.mark.integration
def test_minilm_vectors_are_normalised_and_paraphrases_are_nearer(minilm):
    assert minilm.name == "default" and minilm.dim == 384
    docs = np.array(minilm.embed_documents([
        "Restore the device to its original factory configuration.",
        "Bananas are rich in potassium and make a good snack.",
    ]))
    query = np.array(minilm.embed_query("How do I factory reset my router?"))
    assert docs.shape == (2, 384)
    assert np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-4)
    similar, unrelated = docs @ query
    assert similar > unrelated + 0.2
    assert minilm.embed_documents([]) == []


@pytest.mark.integration
def test_repeated_queries_come_from_the_cache(minilm, monkeypatch):
    question = "How do I pair the remote control with the TV?"
    first = np.array(minilm.embed_query(question))
    reference = minilm._model.encode([question], normalize_embeddings=True)[0]
    assert np.abs(first - reference).max() < 1e-5
    calls = []
    real_forward = minilm._model.forward
    monkeypatch.setattr(minilm._model, "forward", lambda f: calls.append(1) or real_forward(f))
    again = minilm.embed_query(question)
    assert again == first.tolist() and calls == []  # served from the cache
    again.append(0.0)  # a caller's change must not reach the cache
    assert len(minilm.embed_query(question)) == 384
    minilm.embed_query("A question never asked before")
    assert calls == [1]


@pytest.mark.integration
def test_passages_in_bfloat16_stay_within_rounding_of_float32(minilm):
    texts = ["Open Settings > General > Reset and enter the PIN to restore factory settings.",
             "Bluetooth headphones pair from Settings > Sound > Sound Output."]
    native = minilm._bf16_documents
    try:
        minilm._bf16_documents = False
        full = np.array(minilm.embed_documents(texts))
        minilm._bf16_documents = True
        half = np.array(minilm.embed_documents(texts))
    finally:
        minilm._bf16_documents = native
    assert np.allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-6)
    assert (full * half).sum(axis=1).min() > 0.999
