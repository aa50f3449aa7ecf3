"""`bench/relevance_bar.py`: its command line and how it builds each turn's question."""

import pytest

from bench.relevance_bar import main, record_of
from retrieval.grounding import Quote
from retrieval.types import Hit
from tests.agent.conftest import RESET, make_chunk


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python bench/relevance_bar.py" in out and "Examples:" in out


def test_bad_max_contexts_exits_2_with_one_line(capsys, tmp_path):
    code = main(["--max-contexts", "three", "--home", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--max-contexts" in err or "not found" in err  # without ../shared: the data


def test_a_quote_below_the_bar_is_recorded_as_an_abstention():
    other = make_chunk("Other text.", page=9)
    hits = [Hit(RESET, 0.5), Hit(other, 0.4)]
    quote = Quote(passage=2, sentences=(1,), texts=("Other text.",))
    assert record_of(hits, quote, "")["citations"] == [{"source": "router_manual.pdf",
                                                         "page": 9}]
    assert record_of(hits, quote, "too few words")["mode"] == "abstained"
    assert record_of(hits, None, "")["mode"] == "abstained"
    assert [c["page"] for c in record_of(hits, None, "")["contexts"]] == [4, 9]
