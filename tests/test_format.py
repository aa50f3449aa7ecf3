"""The shared prompt/answer format: rendering and tolerant parsing."""

from finetune.format import (
    ABSTAIN_ANSWER,
    REFUSAL_ANSWER,
    build_messages,
    format_abstain,
    format_answer,
    format_refusal,
    parse_answer,
)
from retrieval.types import Chunk, Citation


def _chunk(text, source="docs/manual.pdf", page=3, section="Setup"):
    return Chunk(id="x", text=text, source=source, page=page, section=section, chunk_index=0,
                 doc_hash="h")


def test_round_trip_answer():
    text = format_answer('Passage [1] says "hold 5 s".', "Hold it.", [Citation("docs/a.pdf", 3)])
    parsed = parse_answer(text)
    assert parsed.well_formed
    assert parsed.answer == "Hold it."
    assert parsed.reasoning.startswith("Passage [1]")
    assert parsed.citations == [Citation("a.pdf", 3)]
    assert not parsed.abstained and not parsed.refused


def test_abstain_and_refusal_are_recognised():
    assert parse_answer(format_abstain()).abstained
    assert parse_answer(format_refusal()).refused
    assert parse_answer(f"Answer: {ABSTAIN_ANSWER}").abstained
    assert not parse_answer(f"Answer: {REFUSAL_ANSWER}").abstained


def test_malformed_output_is_tolerated():
    parsed = parse_answer("just some words citing [x.pdf p.2] and [x.pdf p.2]")
    assert not parsed.well_formed
    assert parsed.answer.startswith("just some words")
    assert parsed.citations == [Citation("x.pdf", 2)]
    assert parse_answer("").answer == ""
    assert parse_answer("Reasoning: only thinking").answer == ""


def test_sources_section_wins_over_citations_in_reasoning():
    text = "Reasoning: [a.pdf p.1] is irrelevant\nAnswer: yes\nSources: [b.pdf p.2]"
    assert parse_answer(text).citations == [Citation("b.pdf", 2)]


def test_messages_number_and_label_passages():
    msgs = build_messages("How?", [_chunk("First."), _chunk("Second.", page=9, section=None)])
    assert msgs[0]["role"] == "system" and ABSTAIN_ANSWER in msgs[0]["content"]
    user = msgs[-1]["content"]
    assert "[1] [manual.pdf p.3] (Setup)\nFirst." in user
    assert "[2] [manual.pdf p.9]\nSecond." in user
    assert user.rstrip().endswith("Question: How?")
