"""`python -m eval compare`: a scripted OpenAI-compatible judge on localhost, both orders, and
the reference-based fallback without a judge."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eval.cli import main
from eval.judge import JudgeConfig
from eval.runner import RunConfig, run
from eval.systems import SystemOptions
from retrieval.settings import Settings
from tests.conftest import send_chat_completion
from tests.eval.conftest import SCRIPT, FakeSystem


class ScriptedJudge(BaseHTTPRequestHandler):
    """Prefers the reply containing GOOD; `mode` "first" always says A (pure position bias),
    "garbage" answers prose."""

    prompts: list[str] = []
    mode = "fair"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        type(self).prompts.append(prompt)
        a = re.search(r"Reply A:\n(.*?)\n\nReply B:", prompt, re.S).group(1)
        b = re.search(r"Reply B:\n(.*?)\n\nAnswer with JSON", prompt, re.S).group(1)
        if type(self).mode == "garbage":
            content = "Both replies are fine, I think."
        elif type(self).mode == "first":
            content = '{"winner": "A", "reason": "A comes first"}'
        elif ("GOOD" in a) == ("GOOD" in b):
            content = '{"winner": "tie", "reason": "same quality"}'
        else:
            winner = "A" if "GOOD" in a else "B"
            content = f'Sure. {{"winner": "{winner}", "reason": "reply {winner} is right"}}'
        send_chat_completion(self, body["model"], content)


@pytest.fixture
def judge_url():
    ScriptedJudge.prompts, ScriptedJudge.mode = [], "fair"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedJudge)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _results(tmp_path, answers_a, answers_b):
    """One run directory with systems a and b answering the same three questions."""
    d = tmp_path / "run"
    d.mkdir(exist_ok=True)
    rows = []
    for system, answers in (("a", answers_a), ("b", answers_b)):
        for i, text in enumerate(answers):
            rows.append({"id": f"q{i}", "system": system, "set": "answerable",
                         "question": f"Question {i}?", "reference": "The reference.",
                         "answerable": True, "kind": "normal", "answer": text,
                         "mode": "generated", "scores": {}})
    (d / "results.json").write_text(json.dumps(
        {"systems": ["a", "b"], "metrics": {"a": {}, "b": {}}, "rows": rows}))
    return d


def test_judge_decides_with_both_orders(tmp_path, judge_url, capsys):
    d = _results(tmp_path, ["GOOD one", "plain", "GOOD too"], ["plain", "GOOD", "GOOD also"])
    rc = main(["compare", f"{d}:a", f"{d}:b", "--judge-url", judge_url, "--judge-model", "j",
               "--out", str(tmp_path / "cmp")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "win 1 (33.3%), tie 1 (33.3%), loss 1 (33.3%), not judged 0" in out
    assert "each pair judged twice with the order swapped" in out
    assert len(ScriptedJudge.prompts) == 6
    # Every pair was shown in both orders.
    firsts = [re.search(r"Reply A:\n(.*?)\n", p).group(1) for p in ScriptedJudge.prompts]
    assert firsts[:2] == ["GOOD one", "plain"]
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["outcome"] for r in result["rows"]] == ["win", "loss", "tie"]
    assert "reply A is right" in result["rows"][0]["reason"]
    assert "Reference answer (from the manual): The reference." in ScriptedJudge.prompts[0]
    # Cached: a second comparison asks the judge nothing.
    main(["compare", f"{d}:a", f"{d}:b", "--judge-url", judge_url, "--judge-model", "j",
          "--out", str(tmp_path / "cmp")])
    assert len(ScriptedJudge.prompts) == 6


def test_position_bias_cancels_to_ties(tmp_path, judge_url, capsys):
    ScriptedJudge.mode = "first"
    d = _results(tmp_path, ["GOOD", "x", "y"], ["z", "GOOD", "w"])
    assert main(["compare", f"{d}:a", f"{d}:b", "--judge-url", judge_url,
                 "--judge-model", "j"]) == 0
    assert "win 0 (0.0%), tie 3 (100.0%), loss 0 (0.0%)" in capsys.readouterr().out


def test_unparseable_verdicts_are_not_judged_not_ties(tmp_path, judge_url, capsys):
    ScriptedJudge.mode = "garbage"
    d = _results(tmp_path, ["GOOD", "x", "y"], ["z", "GOOD", "w"])
    assert main(["compare", f"{d}:a", f"{d}:b", "--judge-url", judge_url,
                 "--judge-model", "j"]) == 0
    out = capsys.readouterr().out
    assert "win 0 (n/a), tie 0 (n/a), loss 0 (n/a), not judged 3" in out


def test_reference_preference_without_a_judge_on_real_runs(tmp_path, question_file,
                                                           harmful_file, hash_embedder, capsys):
    # no-rag and base answer from the same script; base has contexts, both cite the same pages.
    config = RunConfig(
        questions=[str(question_file)], systems=["no-rag", "base"], out=tmp_path / "run",
        options=SystemOptions(settings=Settings.resolve()), harmful=str(harmful_file),
        judge=JudgeConfig(kind="none"),
    )
    run(config, build=lambda name, options, llm=None: FakeSystem(name, SCRIPT, []),
        make_llm=lambda name, options: None, embedder=hash_embedder)
    rc = main(["compare", f"{config.out}:no-rag", f"{config.out}:base"])
    out = capsys.readouterr().out
    assert rc == 0 and "reference-based preference (no judge endpoint given)" in out
    assert "tie 6 (100.0%)" in out  # identical answers
    md = (config.out / "compare-no-rag-vs-base" / "compare.md").read_text()
    assert "neither refused" in md and "both answered an uncovered question" in md


def test_reference_rules():
    from eval.compare import reference_preference

    harm = {"kind": "harmful"}
    assert reference_preference({**harm, "mode": "refused"}, {**harm, "mode": "generated"})[0] == "a"
    un = {"answerable": False, "kind": "in-domain-unanswerable"}
    assert reference_preference({**un, "mode": "quoted"}, {**un, "mode": "abstained"})[0] == "b"
    def ans(cite, rouge):
        return {"answerable": True, "scores": {"citation_accuracy": {"value": cite},
                                               "rouge_l": {"value": rouge}}}
    assert reference_preference(ans(1.0, 0.1), ans(0.0, 0.9))[0] == "a"
    assert reference_preference(ans(0.0, 0.5), ans(0.0, 0.3))[0] == "a"
    assert reference_preference(ans(0.0, 0.32), ans(0.0, 0.30))[0] == "tie"


def test_compare_usage_errors_exit_2(tmp_path, capsys):
    d = _results(tmp_path, ["a"], ["b"])
    assert main(["compare", str(d), f"{d}:b"]) == 2  # two systems: which one?
    assert "name one as" in capsys.readouterr().err
    assert main(["compare", f"{d}:zz", f"{d}:b"]) == 2
    assert "no system 'zz'" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nothing"), f"{d}:b"]) == 2
    assert main(["compare", f"{d}:a", f"{d}:b", "--judge-url", "http://x/v1"]) == 2
    assert "go together" in capsys.readouterr().err
