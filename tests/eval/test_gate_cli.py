import json
import subprocess
import sys

import pytest

from eval.cli import main
from tests.conftest import REPO


def _results(tmp_path, metrics, by_set=None):
    d = tmp_path / "run"
    d.mkdir()
    (d / "results.json").write_text(json.dumps(
        {"systems": list(metrics), "metrics": metrics, "metrics_by_set": by_set or {}}))
    return d


METRICS = {
    "base": {"faithfulness": {"mean": 0.9, "n_scored": 10, "n_not_scored": 1},
             "answered_unanswerable_rate": {"mean": 0.3, "n_scored": 25, "n_not_scored": 0},
             "context_recall": {"mean": None, "n_scored": 0, "n_not_scored": 4}},
}
BY_SET = {
    "in-domain-unanswerable:report": {
        "base": {"answered_unanswerable_rate": {"mean": 0.5, "n_scored": 20, "n_not_scored": 0}}},
    "off-domain-unanswerable": {
        "base": {"answered_unanswerable_rate": {"mean": 0.0, "n_scored": 25, "n_not_scored": 0}}},
}


def test_gate_passes(tmp_path, capsys):
    d = _results(tmp_path, METRICS)
    assert main(["gate", str(d), "--min", "faithfulness=0.8", "--max",
                 "answered_unanswerable_rate=0.5"]) == 0
    out = capsys.readouterr().out
    assert "passed" in out
    # The table: each threshold against the measured value.
    assert "| base | faithfulness | >= 0.8 | 0.900 | 10 / 11 | pass |" in out
    assert "| base | answered_unanswerable_rate | <= 0.5 | 0.300 | 25 / 25 | pass |" in out


def test_gate_fails_naming_each_threshold(tmp_path, capsys):
    d = _results(tmp_path, METRICS)
    rc = main(["gate", str(d), "--min", "faithfulness=0.95", "--max",
               "answered_unanswerable_rate=0.1", "--min", "context_recall=0.1", "--max",
               "over_refusal_rate=0.1"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "faithfulness >= 0.95: got 0.900" in out
    assert "answered_unanswerable_rate <= 0.1: got 0.300" in out
    assert "| base | context_recall | >= 0.1 | n/a | 0 / 4 | FAIL |" in out
    assert "context_recall >= 0.1: no scored rows" in out
    assert "over_refusal_rate <= 0.1: no scored rows" in out


@pytest.mark.parametrize("args", [
    ["--min", "faithfulnes=0.8"], ["--min", "faithfulness"], ["--max", "faithfulness=high"],
    [], ["--min", "faithfulness=0.1", "--system", "nope"],
])
def test_gate_usage_errors_exit_2(tmp_path, args, capsys):
    d = _results(tmp_path, METRICS)
    assert main(["gate", str(d), *args]) == 2
    assert "error" in capsys.readouterr().err


def test_gate_reads_a_metric_within_one_question_set(tmp_path, capsys):
    d = _results(tmp_path, METRICS, BY_SET)
    assert main(["gate", str(d), "--max",
                 "answered_unanswerable_rate@off-domain-unanswerable=0.1"]) == 0
    rc = main(["gate", str(d), "--max",
               "answered_unanswerable_rate@in-domain-unanswerable:report=0.1"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "answered_unanswerable_rate@in-domain-unanswerable:report <= 0.1: got 0.500" in out
    assert main(["gate", str(d), "--max", "answered_unanswerable_rate@nope=0.1"]) == 2
    assert "no question set 'nope'" in capsys.readouterr().err


def test_gate_accepts_any_metric_the_results_hold(tmp_path, capsys):
    metrics = {"base": {"my_new_metric": {"mean": 0.7, "n_scored": 3, "n_not_scored": 0}}}
    d = _results(tmp_path, metrics)
    assert main(["gate", str(d), "--min", "my_new_metric=0.6"]) == 0
    assert main(["gate", str(d), "--min", "my_new_metric=0.8"]) == 1


def test_gate_old_metric_name_warns_and_checks_the_new_one(tmp_path, capsys):
    d = _results(tmp_path, METRICS)
    assert main(["gate", str(d), "--max", "hallucination_rate=0.1"]) == 1
    captured = capsys.readouterr()
    assert "deprecated name, now answered_unanswerable_rate" in captured.err
    assert "answered_unanswerable_rate <= 0.1: got 0.300" in captured.out


def test_gate_missing_results_exit_2(tmp_path, capsys):
    assert main(["gate", str(tmp_path / "none"), "--min", "faithfulness=0.5"]) == 2
    assert "results.json" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [["--help"], ["run", "--help"], ["report", "--help"],
                                 ["gate", "--help"], ["compare", "--help"]])
def test_help(cmd):
    p = subprocess.run([sys.executable, "-m", "eval", *cmd], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "usage" in p.stdout
    if cmd != ["--help"]:
        assert f"python -m eval {cmd[0]} " in p.stdout.split("examples:")[1]


def test_run_bad_inputs_exit_non_zero_without_traceback(tmp_path, capsys):
    bad = tmp_path / "empty.jsonl"
    bad.write_text("")
    rc = main(["run", "--questions", str(bad), "--systems", "no-rag", "--out",
               str(tmp_path / "o"), "--judge", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "empty.jsonl" in err and "Traceback" not in err
    rc = main(["run", "--questions", str(bad), "--systems", "finetuned", "--out",
               str(tmp_path / "o")])
    assert rc == 2 and "--adapter" in capsys.readouterr().err
    rc = main(["run", "--questions", str(bad), "--systems", "gpt9", "--out", str(tmp_path / "o")])
    assert rc == 2 and "unknown system" in capsys.readouterr().err
    rc = main(["run", "--questions", str(bad), "--out", str(tmp_path / "o"), "--judge",
               "remote"])
    assert rc == 2 and "--judge-url" in capsys.readouterr().err
    rc = main(["run", "--questions", str(bad), "--out", str(tmp_path / "o"), "--threads", "0"])
    assert rc == 2 and "--threads" in capsys.readouterr().err
    rc = main(["run", "--questions", str(bad), "--out", str(tmp_path / "o"), "--max-minutes",
               "0"])
    assert rc == 2 and "--max-minutes (0.0) must be positive" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path / "o")]) == 2  # no question file at all
    assert "--questions" in capsys.readouterr().err


def test_report_on_empty_dir_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no evaluation run here" in capsys.readouterr().err


def test_judge_options_resolve_against_the_saved_config():
    from eval.cli import _judge_config, build_parser

    def parse(*argv):
        return build_parser().parse_args(["report", "d", *argv])

    saved = {"kind": "local", "url": None, "model": None, "limit": 3, "timeout": 300.0,
             "max_new_tokens": 512}
    assert _judge_config(parse(), saved).kind == "local"
    assert _judge_config(parse(), saved).limit == 3
    j = _judge_config(parse("--judge-url", "http://h:8000/v1", "--judge-model", "qwen"), saved)
    assert (j.kind, j.url, j.model) == ("remote", "http://h:8000/v1", "qwen")
    assert _judge_config(parse("--judge", "none", "--judge-limit", "0"), saved).limit == 0
