"""`bench/model_check.py`: the contrast set, its word verdicts and the check's arithmetic."""

import json

import pytest

from bench.model_check import load_items, main, measure, word_verdicts
from retrieval.errors import UsageError
from tests.conftest import ScriptedChatModel


class Oracle(ScriptedChatModel):
    """A checker that knows the answer: "yes" exactly for the sentences in `true`."""

    def __init__(self, true: set[str]) -> None:
        super().__init__()
        self.true = true

    def complete(self, messages, *, max_new_tokens=256):
        self.calls.append(messages)
        claim = messages[-1]["content"].split("Answer sentence: ", 1)[1].split("\n")[0]
        return "Yes" if claim in self.true else "No"


def test_every_item_has_both_kinds_and_its_passage_comes_from_the_sample_manual():
    from samples.build_samples import MANUAL

    sections = {s: " ".join(ps) for _, secs in MANUAL for s, ps in secs}
    items = load_items()
    assert {i["id"].rsplit("-", 1)[0] for i in items if i["holds"]} == {
        i["id"].rsplit("-", 1)[0] for i in items if not i["holds"]}
    assert all(i["passage"] == sections[i["section"]] for i in items)


def test_the_checks_arithmetic_with_an_oracle_and_with_a_model_that_confirms_everything():
    items = load_items()
    verdicts = word_verdicts(items)
    keep = {kind: sum(len(k) == n > 0 for i, _, k, n in verdicts if i["holds"] is (kind == "holds"))
            for kind in ("holds", "misread")}
    oracle = measure("oracle", Oracle({i["claim"] for i in items if i["holds"]}), verdicts)
    assert oracle["misreads_caught"] == keep["misread"] and oracle["true_lost"] == 0
    assert oracle["holds"]["model_confirms"] == keep["holds"]
    yes = measure("yes", Oracle({i["claim"] for i in items}), verdicts)
    assert yes["misreads_caught"] == 0 and yes["true_lost"] == 0
    assert yes["checks"] == keep["holds"] + keep["misread"]
    # the word checks alone pass most misreads: the gap the model check is for
    assert keep["misread"] > len(items) / 4


def test_bad_input_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "set.jsonl"
    bad.write_text(json.dumps({"id": "a", "question": "q", "passage": "p", "claim": "c"}) + "\n")
    with pytest.raises(UsageError, match=r"set.jsonl:1: missing holds"):
        load_items(bad)
    assert main(["--data", str(bad), "--systems", "base"]) == 2
    assert f"{bad}:1: missing holds" in capsys.readouterr().err
    assert main(["--systems", "remote"]) == 2
    assert "needs --llm-url and --llm-model" in capsys.readouterr().err
    assert main(["--systems", "nope"]) == 2


class Thinker(ScriptedChatModel):
    """Thinks before its verdict, and is cut off when the reply budget is too small."""

    def complete(self, messages, *, max_new_tokens=256):
        self.calls.append(max_new_tokens)
        return "<think>the passage says so</think> Yes" if max_new_tokens >= 16 else "<think>the"


def test_the_reply_budget_reaches_every_check():
    verdicts = word_verdicts(load_items())
    cut = Thinker()
    short = measure("thinker", cut, verdicts)  # the default budget cuts it before its verdict
    assert short["reply_tokens"] == 4 and set(cut.calls) == {4}
    assert short["holds"]["model_confirms"] == 0 and short["misread"]["model_confirms"] == 0
    room = Thinker()
    long = measure("thinker", room, verdicts, 64)
    assert long["reply_tokens"] == 64 and set(room.calls) == {64}
    assert long["holds"]["model_confirms"] == long["holds"]["words_keep"] > 0


def test_a_bad_reply_budget_stops_before_any_model_loads(capsys, monkeypatch):
    import bench.model_check

    monkeypatch.setattr(bench.model_check, "make_llm", lambda *a: pytest.fail("model loaded"))
    assert main(["--systems", "base", "--model-check-tokens", "0"]) == 2
    assert "--model-check-tokens (0) must be at least 1" in capsys.readouterr().err
