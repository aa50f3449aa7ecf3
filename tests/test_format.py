"""The shared prompt/answer format: rendering and tolerant parsing."""

import json

from finetune.format import (
    ABSTAIN_ANSWER,
    FORMAT_VERSION,
    REFUSAL_ANSWER,
    adapter_format_warning,
    build_messages,
    format_abstain,
    format_answer,
    format_refusal,
    parse_answer,
    parse_citations,
    parse_quote,
)
from retrieval.types import Chunk, Citation


def _chunk(text, source="docs/manual.pdf", page=3, section="Setup"):
    return Chunk(id="x", text=text, source=source, page=page, section=section, chunk_index=0,
                 doc_hash="h")


def test_round_trip_answer():
    text = format_answer("Passage [1] answers the question.", "Hold it.",
                         [Citation("docs/a.pdf", 3)], quote=[(1, 2), (1, 3)])
    assert text.splitlines()[1] == "Quote: 1.2 1.3"
    parsed = parse_answer(text)
    assert parsed.well_formed
    assert parsed.answer == "Hold it."
    assert parsed.quote == [(1, 2), (1, 3)]
    assert parsed.reasoning == "Passage [1] answers the question."
    assert parsed.citations == [Citation("a.pdf", 3)]
    assert not parsed.abstained and not parsed.refused


def test_abstain_and_refusal_are_recognised():
    assert parse_answer(format_abstain()).abstained
    assert parse_answer(format_abstain()).quote == []
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
    assert "[1] [manual.pdf p.3] (Setup)\n(1.1) First." in user
    assert "[2] [manual.pdf p.9]\n(2.1) Second." in user
    assert user.rstrip().endswith("Question: How?")


def test_passage_sentences_are_numbered_one_per_line():
    msgs = build_messages("How?", [_chunk("Press Power. Wait 5 s (see p. 4). Done!")])
    assert msgs[-1]["content"].splitlines()[1:5] == [
        "[1] [manual.pdf p.3] (Setup)", "(1.1) Press Power.", "(1.2) Wait 5 s (see p. 4).",
        "(1.3) Done!"]


def test_quote_numbers_are_read_leniently():
    assert parse_quote("(2.1), [2.2] and 3.1-3.3") == [(2, 1), (2, 2), (3, 1), (3, 2), (3, 3)]
    assert parse_quote("none") == [] and parse_quote("2.1-2.99") == [(2, 1)]
    # a bracketed sentence number is not a file citation
    assert parse_citations("[2.1] and [a.pdf p.3]") == [Citation("a.pdf", 3)]


def test_adapter_format_version_is_checked(tmp_path):
    (tmp_path / "casewise.json").write_text(json.dumps({"format_version": FORMAT_VERSION}))
    assert adapter_format_warning(tmp_path) is None
    (tmp_path / "casewise.json").write_text(json.dumps({"base_model": "default"}))
    warning = adapter_format_warning(tmp_path)
    assert f"trained on format 1, but the agent prompts with format {FORMAT_VERSION}" in warning
    (tmp_path / "casewise.json").write_text("{broken")
    assert "unknown format" in adapter_format_warning(tmp_path)
