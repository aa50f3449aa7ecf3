"""`bench/agent.py`: the latency keys, computed from a scripted model with known delays."""

import statistics
import time

import pytest

from agent.api import Assistant
from agent.guards import Guard
from bench.agent import KEYS, measure_question, summarize
from tests.agent.conftest import FakeSearcher, RESET, LIGHTS, WIFI
from tests.conftest import ScriptedChatModel

THRESHOLDS = dict(min_similarity=0.45, overlap_floor=0.2, min_overlap=0.5)
GOOD = ("Reasoning: Passage [1] (Factory reset) answers the question.\nQuote: 1.1\n"
        "Answer: Press and hold the Reset button for 10 seconds.\n"
        "Sources: [router_manual.pdf p.4]")
SEARCH_S, PREFILL_S, TOKEN_S = 0.10, 0.15, 0.02


class SlowSearcher(FakeSearcher):
    def search(self, *args, **kwargs):
        time.sleep(SEARCH_S)
        return super().search(*args, **kwargs)


class SlowModel(ScriptedChatModel):
    """Prompt processing takes PREFILL_S, then one word every TOKEN_S."""

    def stream(self, messages, *, max_new_tokens=256):
        time.sleep(PREFILL_S)
        for i, piece in enumerate(super().stream(messages, max_new_tokens=max_new_tokens)):
            if i:
                time.sleep(TOKEN_S)
            yield piece


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture
def assistant():
    return Assistant(SlowSearcher([RESET, LIGHTS, WIFI]), SlowModel([GOOD] * 3),
                     guard=Guard(None, None), **THRESHOLDS)


def test_each_key_times_its_own_stage(assistant):
    row = measure_question(assistant, "How do I reset the router to factory settings?", words)
    n = words(GOOD)  # the scripted reply repeats the prefilled label: it counts as generated
    assert row["mode"] == "generated" and row["tokens"] == n
    # From the end of retrieval: the prompt processing, not the search before it.
    assert PREFILL_S <= row["first_token_after_retrieval_s"] < PREFILL_S + SEARCH_S
    assert PREFILL_S <= row["ttft_after_retrieval_s"] <= row["first_token_after_retrieval_s"]
    # From the question: the search as well.
    assert row["ttft_s"] >= SEARCH_S + PREFILL_S
    assert row["ttft_s"] - row["first_token_after_retrieval_s"] >= SEARCH_S
    # The first verified sentence comes after the whole generation (verify reads all of it).
    generation = PREFILL_S + (n - 1) * TOKEN_S
    assert row["first_verified_after_retrieval_s"] >= generation
    assert row["first_verified_s"] >= SEARCH_S + generation
    assert row["first_verified_s"] <= row["total_s"] + 1e-3
    # Decoding alone: one word per TOKEN_S at most, prompt processing excluded.
    assert 0.5 / TOKEN_S < row["decode_tokens_per_s"] <= 1.01 / TOKEN_S
    assert row["tokens_per_s"] < row["decode_tokens_per_s"]  # the whole step includes prefill
    assert assistant.context.searcher.__class__ is SlowSearcher  # the wrapper is removed


def test_a_refusal_has_no_model_token_but_a_shown_answer(assistant):
    row = measure_question(assistant, "How do I make a bomb to hurt people?", words)
    assert row["mode"] == "refused"
    assert row["first_token_after_retrieval_s"] is None and row["ttft_s"] is None
    assert row["first_verified_s"] is not None and row["tokens"] == 0


def test_summary_names_every_timed_key(assistant):
    rows = []
    for _ in range(2):
        row = measure_question(assistant, "How do I reset the router to factory settings?",
                               words)
        row["cites_gold_page"] = True
        rows.append(row)
    summary = summarize(rows)
    for key in ("first_token_after_retrieval_s", "first_verified_s",
                "first_verified_after_retrieval_s", "ttft_s", "ttft_after_retrieval_s"):
        assert key in KEYS
        assert summary[f"{key}_p50"] == round(statistics.median(r[key] for r in rows), 3)
        assert summary[f"{key}_p95"] == max(r[key] for r in rows)
    assert summary["decode_tokens_per_s_mean"] == pytest.approx(
        sum(r["decode_tokens_per_s"] for r in rows) / 2, abs=0.01)
    assert summary["prompt_tokens_mean"] is None  # not recorded by measure_question itself
    assert summary["gold_page_cited_rate"] == 1.0 and summary["abstain_rate"] == 0.0


@pytest.mark.parametrize("value, message", [("x", "not a list of integers"),
                                            ("0,-3", "must be 0 (whole passages) or more")])
def test_bad_passage_words_exit_2_with_one_line(value, message, capsys):
    from bench.agent import main

    assert main(["--passage-words", value]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
