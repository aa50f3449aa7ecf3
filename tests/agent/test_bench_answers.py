"""`bench/answers.py`: its command line, the reply cache and the summary figures."""

import pytest

from bench.answers import CachedModel, adapter_tag, main, summarize
from tests.conftest import ScriptedChatModel


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python bench/answers.py" in out and "Examples:" in out and "--adapter" in out


@pytest.mark.parametrize("argv, message", [
    (["--configs", "base:nope"], "unknown system 'base:nope'"),
    (["--limit", "0"], "--limit (0) must be at least 1"),
    (["--configs", "adapter:extract"], "not a LoRA adapter directory"),
    (["--passage-words", "-1"], "--passage-words (-1) must be 0 (whole passages) or more"),
    (["--max-contexts", "0"], "--max-contexts (0) must be at least 1"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_the_cache_replays_and_completes_a_reply_the_reader_stopped(tmp_path):
    llm = ScriptedChatModel(["Reasoning: r\nQuote: 1.1\nAnswer: a long answer\nSources: none"])
    cached = CachedModel(llm, tmp_path / "c.jsonl", max_new_tokens=64)
    messages = [{"role": "user", "content": "q"}]
    stream = cached.stream(messages)
    assert next(stream).startswith("Reasoning:")
    stream.close()  # extract mode stops reading at the Answer label
    again = CachedModel(llm, tmp_path / "c.jsonl", max_new_tokens=64)
    assert "".join(again.stream(messages)).endswith("Sources: none")  # whole, from disk
    assert len(llm.calls) == 1 and again.generated == 0


def _row(mode, answerable=True, removed=0, claims=1, split=None, **kw):
    return {"mode": mode, "answerable": answerable, "removed": removed, "claims": claims,
            "raw": "x", "seconds": 1.0, "split": split, **kw}


def test_summary_figures():
    rows = [
        _row("generated", rouge_l=0.5, citation_ok=1.0, removed=1, claims=3, gold_in_contexts=1.0),
        _row("quoted", rouge_l=0.3, citation_ok=0.0, gold_in_contexts=1.0),
        _row("abstained", rouge_l=0.0, citation_ok=0.0, claims=0),
        _row("abstained", rouge_l=0.1, citation_ok=0.0, claims=0),
        _row("quoted", answerable=False, split="calibration"),
        _row("abstained", answerable=False, claims=0, split="report"),
    ]
    s = summarize(rows)
    assert s["mode_shares"] == {"generated": 0.25, "quoted": 0.25, "abstained": 0.5,
                                "refused": 0.0}
    assert s["false_abstention"] == 0.5 and s["citation_accuracy"] == 0.25
    assert s["rouge_l"] == 0.225
    assert s["gold_page_in_contexts"] == 1.0  # of the rows that have the field
    assert s["unanswerable_answered"] == 0.5
    assert s["unanswerable_answered_by_split"] == {"calibration": 1.0, "report": 0.0}
    assert s["unsupported_claim_share"] == 0.25  # 1 removed of 3 kept + 1 removed


def test_quote_rank_help_and_bad_input(capsys):
    from bench import quote_rank

    with pytest.raises(SystemExit) as exit_:
        quote_rank.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python bench/quote_rank.py" in out and "Examples:" in out
    assert quote_rank.main(["--limit", "0"]) == 2
    err = capsys.readouterr().err
    assert "--limit (0) must be at least 1" in err and len(err.strip().splitlines()) == 1


def test_the_reply_cache_follows_the_adapter_weights_not_its_path(tmp_path):
    first, copy = tmp_path / "a", tmp_path / "b"
    for folder in (first, copy):
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"weights one")
    assert adapter_tag(first) == adapter_tag(copy)  # a copy elsewhere reuses the replies
    before = adapter_tag(first)
    (first / "adapter_model.safetensors").write_bytes(b"weights two")  # retrained in place
    assert adapter_tag(first) != before
