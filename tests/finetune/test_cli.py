"""`python -m finetune` subcommands: --help smoke tests, bad-input exit codes, data end-to-end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from finetune.cli import main
from tests.conftest import REPO


@pytest.mark.parametrize("command", ["data", "merge", "train"])
def test_help(command):
    result = subprocess.run([sys.executable, "-m", "finetune", command, "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


def test_data_missing_faq_file(tmp_path, capsys):
    code = main(["data", "--faq", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o"),
                 "--no-token-count"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.csv: does not exist" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_data_missing_index(faq_csv, tmp_path, capsys):
    code = main(["data", "--faq", str(faq_csv), "--home", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "o"), "--no-token-count"])
    assert code == 2
    assert "no index at" in capsys.readouterr().err


def test_data_bad_setting(faq_csv, tmp_path, capsys):
    code = main(["data", "--faq", str(faq_csv), "--out", str(tmp_path / "o"), "--p-gold", "2"])
    assert code == 2
    assert "p_gold (2.0)" in capsys.readouterr().err
    code = main(["data", "--faq", str(faq_csv), "--out", str(tmp_path / "o"),
                 "--passage-words", "-5"])
    assert code == 2
    assert "passage_words (-5) must be 0" in capsys.readouterr().err


def test_data_bad_argument_exit_code(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["data", "--out", str(tmp_path)])
    assert e.value.code == 2


def test_data_end_to_end(faq_csv, searcher, tmp_path, monkeypatch, capsys):
    import retrieval.search

    monkeypatch.setattr(retrieval.search, "open_searcher", lambda settings: searcher)
    out = tmp_path / "data"
    code = main(["data", "--faq", str(faq_csv), "--out", str(out), "--k", "2", "--seed", "1",
                 "--eval-fraction", "0.2", "--no-token-count"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "train:" in printed and "abstain" in printed and "refusal" in printed
    stats = json.loads((out / "stats.json").read_text())
    assert stats["config"]["k"] == 2
    n = sum(1 for _ in (out / "train.jsonl").open()) + sum(1 for _ in (out / "eval.jsonl").open())
    assert n == stats["train"]["examples"] + stats["eval"]["examples"] == 40 + 2


def test_merge_bad_adapter(tmp_path, capsys):
    code = main(["merge", "--adapter", str(tmp_path / "nope"), "--out", str(tmp_path / "m")])
    assert code == 2
    assert "adapter path" in capsys.readouterr().err
