import pytest

from retrieval.bm25 import BM25Index

from .conftest import make_chunks


def test_keyword_only_match_ranks_the_chunk_with_the_rare_term_first():
    index = BM25Index(make_chunks())
    results = index.search("what does XJ42 mean", n=5)
    assert results[0][0].id == "c3"
    assert results[0][1] > 0
    # "mean" occurs only in c3 as well; nothing else shares a term with the query
    assert [c.id for c, _ in results] == ["c3"]


def test_rarer_terms_and_more_occurrences_score_higher():
    index = BM25Index(make_chunks())
    results = index.search("reset button seconds", n=10)
    ids = [c.id for c, _ in results]
    assert set(ids[:2]) == {"c0", "c5"}
    scores = [s for _, s in results]
    assert scores == sorted(scores, reverse=True)


def test_where_filters_by_source_and_type():
    index = BM25Index(make_chunks())
    assert [c.id for c, _ in index.search("reset", n=5, where={"type": "faq"})] == ["c5"]
    assert [c.id for c, _ in index.search("reset", n=5, where={"source": "manual.pdf"})] == ["c0"]
    assert index.search("reset", n=5, where={"source": "guide.pdf"}) == []
    with pytest.raises(ValueError, match="only equality"):
        index.search("reset", n=5, where={"type": {"$in": ["doc"]}})


def test_no_shared_terms_or_empty_index_gives_nothing():
    assert BM25Index(make_chunks()).search("the and of", n=5) == []
    assert BM25Index([]).search("reset", n=5) == []


def test_top_n_is_respected_and_deterministic():
    index = BM25Index(make_chunks())
    first = index.search("page admin wifi reset router", n=2)
    assert len(first) == 2
    assert first == index.search("page admin wifi reset router", n=2)


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="b"):
        BM25Index([], b=2.0)


def test_idf_is_higher_for_rarer_terms_and_highest_for_unseen_ones():
    index = BM25Index(make_chunks())
    assert index.idf("xj42") > index.idf("reset") > 0
    assert index.idf("never-indexed") > index.idf("xj42")
