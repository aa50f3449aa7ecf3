"""`bench/ingest_cli.py`: its arguments are checked before any ingest runs."""

from bench.ingest_cli import main


def test_a_tree_that_is_not_a_checkout_is_a_usage_error(tmp_path, capsys):
    assert main(["--tree", f"x={tmp_path}"]) == 2
    assert capsys.readouterr().err == (f"error: --tree 'x={tmp_path}': give NAME=DIR, DIR a "
                                       "casewise checkout\n")
    assert main(["--tree", "no-equals-sign"]) == 2
