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
