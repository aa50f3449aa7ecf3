import numpy as np
import pytest

from retrieval.embeddings import OnnxEmbedder, bundled_model_path, load_embedder
from retrieval.errors import ModelNotFoundError, UsageError


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
    return load_embedder("default", runtime="torch")


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


def test_an_unknown_runtime_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("CASEWISE_EMBEDDER_RUNTIME", "tensorflow")
    with pytest.raises(UsageError, match="CASEWISE_EMBEDDER_RUNTIME='tensorflow'"):
        load_embedder("default")


@pytest.fixture(scope="module")
def onnx_minilm():
    return load_embedder("default", runtime="onnx")


@pytest.mark.integration
def test_onnx_runtime_gives_the_sentence_transformers_vectors(onnx_minilm, minilm):
    assert isinstance(onnx_minilm, OnnxEmbedder) and onnx_minilm.name == minilm.name
    assert (onnx_minilm.dim, onnx_minilm.max_seq_length) == (minilm.dim, minilm.max_seq_length)
    long = " ".join(["Press the Home button, then open Settings and choose Picture Mode."] * 40)
    texts = ["Open Settings > General > Reset and enter the PIN.", "Bananas are yellow.", long]
    native = minilm._bf16_documents
    try:
        minilm._bf16_documents = False
        reference = np.array(minilm.embed_documents(texts))
    finally:
        minilm._bf16_documents = native
    vectors = np.array(onnx_minilm.embed_documents(texts))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The long text is truncated at 256 word pieces by both, so its vectors agree too.
    assert (vectors * reference).sum(axis=1).min() > 0.9999
    query = "How do I pair the remote control with the TV?"
    assert float(np.dot(onnx_minilm.embed_query(query), minilm.embed_query(query))) > 0.9999
    assert onnx_minilm.token_counts(texts) == minilm.token_counts(texts)
    assert onnx_minilm.token_counts(texts)[2] > 256


@pytest.mark.integration
def test_onnx_queries_come_from_the_cache(onnx_minilm, monkeypatch):
    question = "Where is the Reset button on the router?"
    first = onnx_minilm.embed_query(question)
    calls = []
    real = onnx_minilm._forward
    monkeypatch.setattr(onnx_minilm, "_forward", lambda texts: calls.append(1) or real(texts))
    assert onnx_minilm.embed_query(question) == first and calls == []
    onnx_minilm.embed_query("A question never asked before either")
    assert calls == [1]


@pytest.mark.integration
def test_onnx_batches_by_token_count_and_returns_vectors_in_order(onnx_minilm, monkeypatch):
    short = ["Bananas are yellow.", "Press Home."]
    long = [" ".join(["Open Settings, then General, then Reset, and enter the PIN."] * 6),
            " ".join(["Hold the power button for five seconds to restart the set."] * 6)]
    texts = [long[0], short[0], long[1], short[1]]  # long and short interleaved
    alone = np.array([onnx_minilm._forward([t])[0] for t in texts])
    widths = []
    real = onnx_minilm._run
    monkeypatch.setattr(onnx_minilm, "_run", lambda encoded: widths.append(
        sorted(len(e.ids) for e in encoded)) or real(encoded))
    monkeypatch.setattr(onnx_minilm, "batch_size", 2)
    vectors = np.array(onnx_minilm.embed_documents(texts))
    # The two short texts share a batch, the two long ones the other: little padding.
    counts = onnx_minilm.token_counts(texts)
    assert widths == [sorted([counts[1], counts[3]]), sorted([counts[0], counts[2]])]
    # Padding inside a batch changes nothing: each vector is the text's own, in input order.
    assert (vectors * alone).sum(axis=1).min() > 0.99999


def test_int8_without_onnxruntime_is_a_clear_error(monkeypatch):
    import retrieval.embeddings as embeddings

    monkeypatch.setattr(embeddings, "onnx_available", lambda: False)
    with pytest.raises(ModelNotFoundError, match="'default-int8' runs on onnxruntime"):
        load_embedder("default-int8")


@pytest.mark.integration
def test_int8_embedder_stays_near_float32_and_keeps_paraphrases_nearer(onnx_minilm):
    int8 = load_embedder("default-int8")
    assert isinstance(int8, OnnxEmbedder) and int8.name == "default-int8" and int8.dim == 384
    assert int8.batch_size == 8  # the measured batch size (docs/speed.md)
    texts = ["Open Settings > General > Reset and enter the PIN.", "Bananas are yellow.",
             " ".join(["Press the Home button, then open Settings and choose Picture Mode."] * 40)]
    vectors, reference = np.array(int8.embed_documents(texts)), np.array(
        onnx_minilm.embed_documents(texts))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * reference).sum(axis=1)
    # Quantised, so not float32's vectors (the manual's chunks: min 0.9875), but close to them.
    assert cosines.min() > 0.97 and cosines.max() < 0.99999
    query = np.array(int8.embed_query("How do I reset the TV to factory settings?"))
    near = np.array(int8.embed_query("Restoring the television's factory defaults"))
    far = np.array(int8.embed_query("Bananas are yellow."))
    assert query @ near > query @ far
