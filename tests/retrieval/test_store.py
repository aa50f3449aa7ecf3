import math

import numpy as np
import pytest

from retrieval.errors import IndexSettingsMismatchError
from retrieval.settings import Settings
from retrieval.store import ChunkStore, StoreUnavailableError, chroma_where
from retrieval.types import Chunk


def test_round_trip_keeps_every_field_and_extra_metadata(store, chunks):
    assert store.count() == len(chunks)
    assert store.get([c.id for c in chunks]) == chunks
    no_page = next(c for c in chunks if c.page is None)
    got = store.get([no_page.id])[0]
    assert got.page is None and got.section is None
    assert store.get(["c5"])[0].metadata == {"row": 5}


def test_reopening_from_disk_reads_the_same_chunks(store, settings, hash_embedder, chunks):
    reopened = ChunkStore(settings, hash_embedder.name)
    assert sorted(reopened.all_chunks(), key=lambda c: c.id) == sorted(chunks, key=lambda c: c.id)


def test_get_keeps_order_and_skips_unknown_ids(store):
    assert [c.id for c in store.get(["c3", "nope", "c0"])] == ["c3", "c0"]


def test_upsert_is_idempotent_and_replaces_content(store, chunks, hash_embedder):
    vectors = hash_embedder.embed_documents([c.text for c in chunks])
    store.upsert(chunks, vectors)
    assert store.count() == len(chunks)
    changed = Chunk(id="c0", text="new text", source="manual.pdf", page=9, section="New",
                    chunk_index=0, doc_hash="other")
    store.upsert([changed], hash_embedder.embed_documents(["new text"]))
    assert store.count() == len(chunks)
    assert store.get(["c0"]) == [changed]


def test_delete_and_ids_with_filters(store):
    assert store.ids({"source": "faq.csv"}) == {"c5", "c6"}
    assert store.ids({"type": "doc", "source": "manual.pdf"}) == {"c0", "c1", "c2", "c3"}
    store.delete(["c5", "missing-id"])
    assert store.ids({"type": "faq"}) == {"c6"}
    assert "c5" not in store.ids()
    assert {c.id for c in store.all_chunks({"type": "faq"})} == {"c6"}


def test_query_returns_cosine_similarity_and_honours_where(store, hash_embedder, chunks):
    query = "factory reset router"
    results = store.query(hash_embedder.embed_query(query), k=3)
    assert results[0][0].id in {"c0", "c5"}
    q = np.array(hash_embedder.embed_query(query))
    for chunk, sim in results:
        expected = float(q @ np.array(hash_embedder.embed_query(chunk.text)))
        assert math.isclose(sim, expected, abs_tol=1e-4)
    sims = [s for _, s in results]
    assert sims == sorted(sims, reverse=True)
    faq = store.query(hash_embedder.embed_query(query), k=5, where={"type": "faq"})
    assert {c.id for c, _ in faq} == {"c5", "c6"}


def test_query_on_empty_store_is_empty(settings, hash_embedder):
    assert ChunkStore(settings, hash_embedder.name).query(hash_embedder.embed_query("x"), 5) == []


def test_bulk_upsert_is_split_into_batches(settings, hash_embedder):
    store = ChunkStore(settings, hash_embedder.name)
    store._max_batch = 7  # force several batches on a small input
    many = [Chunk(id=f"b{i}", text=f"bulk chunk {i}", source="bulk.txt", page=None, section=None,
                  chunk_index=i, doc_hash="h") for i in range(30)]
    vectors = np.array(hash_embedder.embed_documents([c.text for c in many]), dtype=np.float32)
    store.upsert(many, vectors)
    assert store.count() == 30
    assert len(store.all_chunks()) == 30  # read back page by page too
    store.delete([c.id for c in many[:20]])
    assert store.count() == 10


def test_upsert_rejects_bad_input(settings, hash_embedder, chunks):
    store = ChunkStore(settings, hash_embedder.name)
    with pytest.raises(ValueError, match="one vector per chunk"):
        store.upsert(chunks, [])
    clash = Chunk(id="x", text="t", source="s", page=1, section=None, chunk_index=0,
                  doc_hash="h", metadata={"page": 3})
    with pytest.raises(ValueError, match="'page' collides"):
        store.upsert([clash], hash_embedder.embed_documents(["t"]))


def test_other_embedder_on_existing_collection_is_refused(store, settings):
    with pytest.raises(IndexSettingsMismatchError, match="hash-bow-256"):
        ChunkStore(settings, "another-model")


def test_reset_empties_the_collection_for_a_rebuild(store, settings):
    store.reset()
    assert store.count() == 0
    ChunkStore(settings, store.embedder_name)  # still the same embedder recorded


def test_unreachable_server_is_a_clear_error(tmp_path):
    settings = Settings(home=tmp_path, chroma_url="http://127.0.0.1:9")
    with pytest.raises(StoreUnavailableError, match="http://127.0.0.1:9"):
        ChunkStore(settings, "x")


def test_chroma_where_combines_keys_with_and():
    assert chroma_where(None) is None
    assert chroma_where({"type": "doc"}) == {"type": "doc"}
    assert chroma_where({"type": "doc", "source": "a"}) == {
        "$and": [{"type": "doc"}, {"source": "a"}]
    }


def test_invalid_collection_name_is_a_clear_error(tmp_path):
    from retrieval.errors import CasewiseError

    with pytest.raises(CasewiseError, match="CASEWISE_COLLECTION"):
        ChunkStore(Settings(home=tmp_path, collection="x"), "e")


def test_drop_collection_removes_any_embedders_collection(store, settings):
    from retrieval.store import drop_collection

    assert drop_collection(settings) is True
    assert drop_collection(settings) is False
    assert ChunkStore(settings, "another-model").count() == 0  # free for a new embedder
