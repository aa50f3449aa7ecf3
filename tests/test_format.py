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


# --- passage windows (`PASSAGE_WORDS`) ---------------------------------------------------------

LONG = ("The TV has many settings. Picture mode changes colours. Sound mode changes the audio. "
        "To reset the TV, open Settings > General > Reset. Enter your PIN. The TV restarts. "
        "Eco mode saves power. Timers turn the TV off.")


def test_a_window_starts_at_the_sentence_that_matches_the_question():
    from finetune.format import passage_window

    window = passage_window("How do I reset the TV?", _chunk(LONG), 16)
    assert window.first == 4
    assert window.sentences == ("To reset the TV, open Settings > General > Reset.",
                                "Enter your PIN.", "The TV restarts.")
    assert window.whole(1) == 4 and window.whole(3) == 6
    # whole passages when the budget is 0 or the passage fits
    assert passage_window("How do I reset the TV?", _chunk(LONG), 0).first == 1
    assert len(passage_window("reset", _chunk(LONG), 200).sentences) == 8


def test_a_window_at_a_passage_end_fills_its_budget_backwards():
    from finetune.format import passage_window

    window = passage_window("What do timers do?", _chunk(LONG), 9)
    assert window.sentences == ("Eco mode saves power.", "Timers turn the TV off.")
    assert window.first == 7


def test_a_sentence_longer_than_the_budget_is_cut():
    from finetune.format import passage_window

    window = passage_window("reset", _chunk("Reset " + "word " * 50 + "end."), 10)
    assert window.sentences[0].split()[:-1] == ["Reset"] + ["word"] * 9
    assert window.sentences[0].endswith(" ...")


def test_the_prompt_shows_the_window_numbered_from_one_under_the_whole_label():
    msgs = build_messages("How do I reset the TV?", [_chunk(LONG)], passage_words=16)
    lines = msgs[-1]["content"].splitlines()
    assert lines[1:5] == ["[1] [manual.pdf p.3] (Setup)",
                          "(1.1) To reset the TV, open Settings > General > Reset.",
                          "(1.2) Enter your PIN.", "(1.3) The TV restarts."]
    assert "Picture mode" not in msgs[-1]["content"]
    whole = build_messages("How do I reset the TV?", [_chunk(LONG)], passage_words=0)
    assert "(1.8) Timers turn the TV off." in whole[-1]["content"]


def test_selected_numbers_map_back_to_the_whole_passage():
    from finetune.format import whole_sentence_numbers, window_passages

    windows = window_passages("How do I reset the TV?", [_chunk(LONG), _chunk("Short.")], 16)
    assert whole_sentence_numbers([(1, 1), (1, 3), (2, 1), (1, 4), (3, 1)], windows) == [
        (1, 4), (1, 6), (2, 1)]


# --- a token budget for the passages (`fit_windows`, `Context.passage_tokens`) -----------------


def _words(text):
    """A fake tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def _whole(question, *passages):
    from finetune.format import window_passages

    return window_passages(question, list(passages), 0)


def test_windows_within_the_budget_are_left_alone():
    from finetune.format import fit_windows, format_passages

    windows = _whole("How do I reset the TV?", _chunk(LONG))
    size = _words(format_passages(windows))
    assert fit_windows("How do I reset the TV?", windows, size, _words) == windows
    assert fit_windows("How do I reset the TV?", windows, 0, _words) == windows


def test_the_least_relevant_sentence_farthest_from_the_centre_goes_first():
    from finetune.format import fit_windows, format_passages

    question = "How do I reset the TV?"
    windows = _whole(question, _chunk(LONG))
    size = _words(format_passages(windows))
    (one,) = fit_windows(question, windows, size - 1, _words)
    # "Eco mode saves power." shares no word with the question and is the farthest such
    # sentence from the reset step (3 after it); the sentences naming the TV stay
    assert "Eco mode saves power." not in one.sentences
    assert len(one.sentences) == 7
    assert _words(format_passages([one])) <= size - 1
    # the kept sentences keep their order and map back to the whole passage's numbers
    assert [one.whole(j) for j in range(1, 8)] == [1, 2, 3, 4, 5, 6, 8]
    assert one.sentences[-1] == "Timers turn the TV off."


def test_a_budget_is_respected_and_sentences_about_the_question_outlast_the_others():
    from finetune.format import fit_windows, format_passages, passage_sentences

    question = "How do I reset the TV?"
    windows = _whole(question, _chunk(LONG))
    budget = _words(format_passages(windows)) - 12
    (one,) = fit_windows(question, windows, budget, _words)
    assert _words(format_passages([one])) <= budget
    whole = passage_sentences(LONG)
    assert list(one.sentences) == [whole[n - 1] for n in sorted(one.numbers)]
    assert {"The TV has many settings.", "To reset the TV, open Settings > General > Reset.",
            "The TV restarts.", "Timers turn the TV off."} <= set(one.sentences)
    assert "Picture mode changes colours." not in one.sentences


def test_the_centre_sentence_and_every_passage_stay_however_small_the_budget():
    from finetune.format import fit_windows, format_passages

    question = "How do I reset the TV?"
    other = _chunk("Eco mode saves power. Timers turn the TV off at night. Sound mode changes "
                   "the audio.", page=9, section="Power")
    windows = _whole(question, _chunk(LONG), other)
    fitted = fit_windows(question, windows, 1, _words)
    assert fitted[0].sentences == ("To reset the TV, open Settings > General > Reset.",)
    assert fitted[0].whole(1) == 4
    assert fitted[1].sentences == ("Timers turn the TV off at night.",)
    assert "[2] [manual.pdf p.9] (Power)" in format_passages(fitted)


def test_the_longest_window_is_trimmed_first():
    from finetune.format import fit_windows, format_passages

    question = "How do I reset the TV?"
    short = _chunk("Reset the TV with the remote. Hold the power key. Wait.", page=5)
    windows = _whole(question, _chunk(LONG), short)
    budget = _words(format_passages(windows)) - 8
    fitted = fit_windows(question, windows, budget, _words)
    assert fitted[1].sentences == windows[1].sentences
    assert len(fitted[0].sentences) < len(windows[0].sentences)
    assert _words(format_passages(fitted)) <= budget


def test_estimate_tokens_counts_characters():
    from finetune.format import TOKEN_CHARS, estimate_tokens

    assert estimate_tokens("") == 0
    assert estimate_tokens("x" * int(TOKEN_CHARS * 10)) == 10
