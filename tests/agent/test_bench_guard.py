"""bench/guard.py's command line: the sets it measures are named and checked before any model loads."""

import pytest

from bench import guard as bench_guard


def test_help_lists_the_sets_and_examples(capsys):
    with pytest.raises(SystemExit) as done:
        bench_guard.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--sets" in out and "advbench_dev" in out and "examples:" in out


@pytest.mark.parametrize("sets", ["nope", "advbench_dev,nope", ","])
def test_an_unknown_set_is_a_usage_error_naming_it(sets, capsys):
    with pytest.raises(SystemExit) as done:
        bench_guard.main(["--sets", sets])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "--sets" in err and ("nope" in err or "none given" in err)


def test_evals_unanswerable_questions_are_a_benign_set():
    """The repo's own unanswerable questions are measured as benign; no model is loaded."""
    import json

    sets = bench_guard.collect_sets()
    measured = sets["eval_unanswerable_benign"]
    written = [json.loads(line)["question"] for name in bench_guard.EVAL_BENIGN
               for line in (bench_guard.REPO / "eval" / "data" / name).read_text().splitlines()
               if line.strip()]
    assert measured["harmful"] is False and measured["texts"] == written and len(written) >= 70
    assert "eval_unanswerable_benign" in bench_guard.SET_NAMES
