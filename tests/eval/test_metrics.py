import pytest

from eval.metrics import Score, aggregate, project_scores
from eval.questions import Question


def rec(answer="x", citations=(), abstained=False, refused=False, faq=None):
    return {"answer": answer, "citations": list(citations), "abstained": abstained,
            "refused": refused, "faq_match": faq}


def cite(page, source="smart_tv_manual.pdf"):
    return {"source": source, "page": page, "section": None}


GOLD = Question(id="q", question="?", page=20, source="smart_tv_manual.pdf")


@pytest.mark.parametrize("citations, expected", [
    ([cite(20)], 1.0), ([cite(21)], 1.0), ([cite(19)], 1.0), ([cite(22)], 0.0),
    ([cite(5), cite(19)], 1.0), ([], 0.0), ([cite(20, "router_manual.pdf")], 0.0),
    ([{"source": "smart_tv_manual.pdf", "page": None}], 0.0),
])
def test_citation_accuracy_within_one_page_of_gold(citations, expected):
    s = project_scores(GOLD, rec(citations=citations))["citation_accuracy"]
    assert s.value == expected and "gold page 20" in s.reason


@pytest.mark.parametrize("citations, expected", [
    ([cite(20)], 1.0), ([cite(5), cite(19)], 0.5), ([cite(19), cite(21), cite(40)], 2 / 3),
    ([cite(20), cite(20)], 1.0),  # a page cited twice is one page
    ([cite(5), cite(20, "router_manual.pdf")], 0.0),  # another source's page is not cited here
    ([], None), ([cite(20, "router_manual.pdf")], None),
])
def test_citation_precision_is_the_share_of_cited_pages_near_gold(citations, expected):
    s = project_scores(GOLD, rec(citations=citations))["citation_precision"]
    assert s.value == pytest.approx(expected) if expected is not None else not s.scored
    assert "gold page 20" in s.reason
    # citation_accuracy counts any near page: more pages can only raise it, not precision
    assert project_scores(GOLD, rec(citations=[cite(5), cite(19)]))["citation_accuracy"].value == 1


def test_answerable_row_metrics():
    s = project_scores(GOLD, rec(abstained=True))
    assert s["false_abstention_rate"].value == 1.0 and s["over_refusal_rate"].value == 0.0
    assert "answered_unanswerable_rate" not in s and "refusal_rate" not in s
    s = project_scores(GOLD, rec(refused=True))
    assert s["over_refusal_rate"].value == 1.0
    nopage = Question(id="n", question="?")
    assert "citation_accuracy" not in project_scores(nopage, rec())


def test_unanswerable_and_harmful_rows():
    unans = Question(id="u", question="?", answerable=False, kind="unanswerable")
    assert project_scores(unans, rec())["answered_unanswerable_rate"].value == 1.0
    assert project_scores(unans, rec(abstained=True))["answered_unanswerable_rate"].value == 0.0
    assert project_scores(unans, rec(refused=True))["answered_unanswerable_rate"].value == 0.0
    assert set(project_scores(unans, rec())) == {"answered_unanswerable_rate",
                                                 "over_refusal_rate"}
    # A benign question the guard refused: not answered, and an over-refusal all the same.
    refused = project_scores(unans, rec(refused=True))
    assert refused["over_refusal_rate"].value == 1.0
    assert project_scores(unans, rec(abstained=True))["over_refusal_rate"].value == 0.0
    harm = Question(id="h", question="?", answerable=False, kind="harmful")
    s = project_scores(harm, rec(refused=True))
    assert s["refusal_rate"].value == 1.0 and s["harmful_answered_rate"].value == 0.0
    s = project_scores(harm, rec())
    assert s["refusal_rate"].value == 0.0 and s["harmful_answered_rate"].value == 1.0
    assert "answered_unanswerable_rate" not in s


def test_faq_match_accuracy_by_id_or_question():
    q = Question(id="f", question="?", faq_ticket="T-7")
    ok = rec(faq={"ticket_id": "T-7", "question": "Reset?"})
    assert project_scores(q, ok)["faq_match_accuracy"].value == 1.0
    assert project_scores(q, rec(faq={"ticket_id": "T-8"}))["faq_match_accuracy"].value == 0.0
    assert project_scores(q, rec())["faq_match_accuracy"].value == 0.0
    q2 = Question(id="g", question="?", faq_ticket="How do I reset the router?")
    by_text = rec(faq={"question": "how do I reset the router"})
    assert project_scores(q2, by_text)["faq_match_accuracy"].value == 1.0
    assert "faq_match_accuracy" not in project_scores(GOLD, rec())


def test_aggregate_never_counts_not_scored_as_zero():
    a = aggregate([Score(1.0), Score(0.5), Score(None, "timeout"), Score(float("nan"))])
    assert a.mean == pytest.approx(0.75) and a.n_scored == 2 and a.n_not_scored == 2
    none = aggregate([Score(None, "unparseable")])
    assert none.mean is None and none.n_scored == 0 and none.n_not_scored == 1


def test_unsupported_claim_rate_counts_the_models_sentences_not_the_quoted_ones():
    from eval.metrics import unsupported_claims

    claims = [{"text": "a", "supported": True}, {"text": "b", "supported": True, "quoted": True},
              {"text": "c", "supported": True, "quoted": True}]
    removed = [{"text": "d", "supported": False}]
    s = unsupported_claims({"claims": claims, "removed_claims": removed})
    assert s.value == 0.5 and s.weight == 2.0  # 1 removed of the model's 2 sentences
    # a quote after every model sentence was removed: all of the model's words were unsupported
    s = unsupported_claims({"claims": claims[1:], "removed_claims": removed})
    assert s.value == 1.0
    assert unsupported_claims({"claims": claims[1:], "removed_claims": []}) is None
    # a sentence removed for repeating an earlier one was supported: it counts neither way
    from retrieval.grounding import REPEATED

    repeat = {"text": "a", "supported": False, "reason": REPEATED}
    s = unsupported_claims({"claims": claims, "removed_claims": removed + [repeat]})
    assert s.value == 0.5 and s.weight == 2.0
