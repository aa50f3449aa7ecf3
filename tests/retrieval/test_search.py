import json
import math

import numpy as np
import pytest

from retrieval.errors import CasewiseError, IndexSettingsMismatchError, IndexNotFoundError
from retrieval.search import HybridSearcher, open_searcher
from retrieval.types import Chunk

from .conftest import write_manifest


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_search_returns_hits_with_citations_and_similarity_for_every_hit(store, hash_embedder):
    hits = HybridSearcher(store, hash_embedder).search("how to factory reset the router", k=5)
    assert len(hits) == 5
    assert {hits[0].chunk.id, hits[1].chunk.id} == {"c0", "c5"}
    q = hash_embedder.embed_query("how to factory reset the router")
    for hit in hits:
        assert hit.similarity is not None
        assert math.isclose(hit.similarity, _cos(q, hash_embedder.embed_query(hit.text)),
                            abs_tol=1e-4)
    assert hits[0].citation.label() in {"manual.pdf p.3", "faq.csv p.3"}
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_repeated_query_is_embedded_once(store, hash_embedder, monkeypatch):
    embedded = []
    embed_query = hash_embedder.embed_query
    monkeypatch.setattr(hash_embedder, "embed_query",
                        lambda q: embedded.append(q) or embed_query(q))
    searcher = HybridSearcher(store, hash_embedder)
    faq = searcher.search("how to factory reset the router", k=3, where={"type": "faq"})
    every = searcher.search("how to factory reset the router", k=3)
    assert embedded == ["how to factory reset the router"]
    assert faq and every and all(h.chunk.type == "faq" for h in faq)
    searcher.search("change the wifi password", k=3)
    assert embedded == ["how to factory reset the router", "change the wifi password"]


def test_fusion_puts_chunks_found_by_both_lists_first(store, hash_embedder):
    searcher = HybridSearcher(store, hash_embedder, dense_n=7, keyword_n=7, k_rrf=60,
                              dense_weight=1.0, keyword_weight=1.0)
    hits = searcher.search("reset button", k=7)
    both = [h for h in hits if h.dense_rank and h.keyword_rank]
    dense_only = [h for h in hits if h.keyword_rank is None]
    assert both and dense_only
    assert min(h.score for h in both) > max(h.score for h in dense_only)
    expected = {h.chunk.id: 1 / (60 + h.dense_rank) + 1 / (60 + h.keyword_rank) for h in both}
    for hit in both:
        assert math.isclose(hit.score, expected[hit.chunk.id])


def test_weights_shift_the_fusion(store, hash_embedder):
    keyword_only = HybridSearcher(store, hash_embedder, dense_weight=0.0)
    hits = keyword_only.search("XJ42", k=5)
    assert [h.chunk.id for h in hits] == ["c3"]
    assert hits[0].dense_rank is None and hits[0].keyword_rank == 1
    assert hits[0].similarity is not None  # computed from the stored vector
    dense_only = HybridSearcher(store, hash_embedder, keyword_weight=0.0).search("XJ42", k=3)
    assert all(h.keyword_rank is None for h in dense_only) and len(dense_only) == 3


def test_keyword_match_missing_from_the_dense_list_is_still_found(store, hash_embedder):
    # dense_n=1: the dense list holds one chunk; "unplugged" is a keyword-only route to c3.
    searcher = HybridSearcher(store, hash_embedder, dense_n=1, keyword_n=5)
    hits = searcher.search("parental controls unplugged", k=3)
    by_id = {h.chunk.id: h for h in hits}
    assert "c3" in by_id and by_id["c3"].keyword_rank is not None
    assert by_id["c3"].dense_rank is None
    assert by_id["c3"].similarity is not None


def test_where_applies_to_both_lists(store, hash_embedder):
    searcher = HybridSearcher(store, hash_embedder)
    faq = searcher.search("reset router wifi name", k=10, where={"type": "faq"})
    assert {h.chunk.id for h in faq} == {"c5", "c6"}
    manual_docs = searcher.search("reset router", k=10, where={"source": "manual.pdf",
                                                               "type": "doc"})
    assert {h.chunk.source for h in manual_docs} == {"manual.pdf"}
    assert searcher.search("reset", k=3, where={"source": "nothing.pdf"}) == []


def test_keyword_cache_follows_writes_to_the_collection(store, hash_embedder):
    searcher = HybridSearcher(store, hash_embedder, dense_weight=0.0)
    assert searcher.search("zebrafish", k=3) == []
    new = Chunk(id="z", text="zebrafish mode", source="new.pdf", page=1, section=None,
                chunk_index=0, doc_hash="h")
    store.upsert([new], hash_embedder.embed_documents([new.text]))
    assert [h.chunk.id for h in searcher.search("zebrafish", k=3)] == ["z"]
    # same count, different content: a changed file replacing its chunk one for one
    store.delete(["z"])
    swapped = Chunk(id="y", text="octopus mode", source="new.pdf", page=1, section=None,
                    chunk_index=0, doc_hash="h2")
    store.upsert([swapped], hash_embedder.embed_documents([swapped.text]))
    assert searcher.search("zebrafish", k=3) == []
    assert [h.chunk.id for h in searcher.search("octopus", k=3)] == ["y"]


def test_another_writer_is_noticed_by_the_count_at_most_once_a_second(
        store, settings, hash_embedder, monkeypatch):
    import retrieval.search as search
    from retrieval.store import ChunkStore

    clock = [1000.0]
    monkeypatch.setattr(search.time, "monotonic", lambda: clock[0])
    counts = []
    real_count = store.count
    monkeypatch.setattr(store, "count", lambda: counts.append(1) or real_count())
    searcher = HybridSearcher(store, hash_embedder, dense_weight=0.0)
    for _ in range(5):
        assert searcher.search("zebrafish", k=3) == []
    assert len(counts) == 1  # counting scans the collection: not once per search
    new = Chunk(id="z", text="zebrafish mode", source="new.pdf", page=1, section=None,
                chunk_index=0, doc_hash="h")
    ChunkStore(settings, hash_embedder.name).upsert([new], hash_embedder.embed_documents(
        [new.text]))  # another process: neither this store's version nor a manifest changes
    clock[0] += search.COUNT_INTERVAL_S
    assert [h.chunk.id for h in searcher.search("zebrafish", k=3)] == ["z"]
    assert len(counts) == 2


def test_bad_arguments_are_rejected(store, hash_embedder):
    with pytest.raises(ValueError, match="k_rrf"):
        HybridSearcher(store, hash_embedder, k_rrf=0)
    with pytest.raises(ValueError, match="not both 0"):
        HybridSearcher(store, hash_embedder, dense_weight=0, keyword_weight=0)
    with pytest.raises(ValueError, match="k"):
        HybridSearcher(store, hash_embedder).search("x", k=0)
    assert HybridSearcher(store, hash_embedder).search("   ", k=3) == []


def test_open_searcher_without_index_names_the_home_and_the_fix(settings):
    with pytest.raises(IndexNotFoundError, match="python -m ingest docs/") as err:
        open_searcher(settings)
    assert str(settings.home) in str(err.value)


def test_open_searcher_uses_the_index_and_checks_the_embedder(store, settings, hash_embedder):
    write_manifest(settings, hash_embedder.name)
    searcher = open_searcher(settings, embedder=hash_embedder)
    assert searcher.search("XJ42", k=1)[0].chunk.id == "c3"
    with pytest.raises(IndexSettingsMismatchError, match="hash-bow-256"):
        open_searcher(settings.__class__(home=settings.home, embedder="other"))


def test_open_searcher_reports_a_damaged_manifest(settings):
    settings.home.mkdir(parents=True)
    settings.manifest_path.write_text("{not json")
    with pytest.raises(CasewiseError, match="manifest"):
        open_searcher(settings)
    settings.manifest_path.write_text(json.dumps({"version": 1}))
    with pytest.raises(CasewiseError, match="embedder"):
        open_searcher(settings)


def _filler(n):
    return [Chunk(id=f"f{i}", text=f"router reset factory settings filler {i}", source="big.pdf",
                  page=i + 1, section=None, chunk_index=i, doc_hash="h") for i in range(n)]


def test_selective_filter_falls_back_to_chromas_filtered_search(store, hash_embedder):
    filler = _filler(40)
    store.upsert(filler, hash_embedder.embed_documents([c.text for c in filler]))
    # dense_n=1: 8 unfiltered candidates, all filler; guide.pdf's only chunk is far away
    searcher = HybridSearcher(store, hash_embedder, dense_n=1, keyword_weight=0.0)
    hits = searcher.search("router reset factory settings", k=3, where={"source": "guide.pdf"})
    assert [(h.chunk.id, h.dense_rank) for h in hits] == [("c4", 1)]
    unfiltered = searcher.search("router reset factory settings", k=3)
    assert unfiltered[0].chunk.source == "big.pdf"


def test_filter_served_from_the_oversampled_list_matches_chroma(store, hash_embedder):
    filler = _filler(40)
    store.upsert(filler, hash_embedder.embed_documents([c.text for c in filler]))
    searcher = HybridSearcher(store, hash_embedder, dense_n=3, keyword_weight=0.0)
    query = "router reset factory settings"
    hits = searcher.search(query, k=3, where={"source": "big.pdf"})
    expected = store.query(hash_embedder.embed_query(query), 3, where={"source": "big.pdf"})
    assert {h.chunk.source for h in hits} == {"big.pdf"}
    # filler chunks tie with each other, so compare the similarities, not the tie order
    for hit, (_, sim) in zip(hits, expected, strict=True):
        assert math.isclose(hit.similarity, sim, abs_tol=1e-5)


def test_chunks_written_by_another_process_are_still_returned(store, settings, hash_embedder):
    from retrieval.store import ChunkStore

    searcher = HybridSearcher(store, hash_embedder, keyword_weight=0.0)
    searcher.search("anything", k=1)  # corpus cached
    other = ChunkStore(settings, hash_embedder.name)  # another writer: same count afterwards
    other.delete(["c4"])
    new = Chunk(id="n1", text="zebrafish aquarium heater", source="new.pdf", page=2,
                section=None, chunk_index=0, doc_hash="h")
    other.upsert([new], hash_embedder.embed_documents([new.text]))
    hits = searcher.search("zebrafish aquarium heater", k=1)
    assert hits[0].chunk == new
