from langchain_core.documents import Document

from retrieval.langchain import CasewiseRetriever
from retrieval.search import HybridSearcher


def test_retriever_returns_documents_with_citation_metadata(store, hash_embedder):
    retriever = CasewiseRetriever(searcher=HybridSearcher(store, hash_embedder), k=3)
    docs = retriever.invoke("how to factory reset the router")
    assert len(docs) == 3 and all(isinstance(d, Document) for d in docs)
    top = docs[0]
    assert top.metadata["citation"] in {"manual.pdf p.3", "faq.csv p.3"}
    assert top.metadata["section"] == "Factory reset"
    assert top.metadata["similarity"] is not None and top.metadata["score"] > 0
    assert "reset" in top.page_content


def test_retriever_filter_and_extra_metadata(store, hash_embedder):
    retriever = CasewiseRetriever(searcher=HybridSearcher(store, hash_embedder), k=5,
                                  where={"type": "faq"})
    docs = retriever.invoke("reset router")
    assert {d.metadata["type"] for d in docs} == {"faq"}
    assert {d.metadata["row"] for d in docs} == {5, 6}
