"""The one exit-code policy (`retrieval.errors`): every CLI exits 2 on bad usage or input, 1 when
the run fails, 130 when interrupted, with one `error:` line on stderr and no traceback."""

from __future__ import annotations

import pytest

from retrieval.errors import CasewiseError, UsageError, run_cli


def _raise(error: BaseException):
    def body() -> int:
        raise error
    return body


@pytest.mark.parametrize(("error", "code"), [
    (UsageError("--top-k (0) must be at least 1"), 2),
    (CasewiseError("cannot reach the model server at http://x/v1"), 1),
    (KeyboardInterrupt(), 130),
])
def test_run_cli_maps_errors_to_codes(error, code, capsys):
    assert run_cli(_raise(error)) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    if code != 130:
        assert err == f"error: {error}"


def test_run_cli_passes_the_body_code_through():
    assert run_cli(lambda: 0) == 0 and run_cli(lambda: 1) == 1


def test_unexpected_errors_are_not_swallowed():
    # A bug is a bug: only expected errors become one line.
    with pytest.raises(ZeroDivisionError):
        run_cli(lambda: 1 // 0)


def _missing_index_argv(cli: str, home: str, tmp_path) -> list[str]:
    return {
        "retrieval": ["reset the router", "--home", home],
        "agent": ["ask", "reset the router", "--home", home, "--llm-url", "http://127.0.0.1:9",
                  "--llm-model", "m"],
        "eval": ["run", "--questions", str(tmp_path / "q.jsonl"), "--systems", "base",
                 "--home", home, "--out", str(tmp_path / "o"), "--judge", "none",
                 "--llm-url", "http://127.0.0.1:9", "--llm-model", "m"],
        "finetune": ["data", "--faq", str(tmp_path / "faq.csv"), "--home", home,
                     "--out", str(tmp_path / "o"), "--no-token-count"],
    }[cli]


@pytest.mark.parametrize("cli", ["retrieval", "agent", "eval", "finetune"])
def test_a_missing_index_is_an_input_error_in_every_cli(cli, tmp_path, capsys):
    import importlib

    (tmp_path / "q.jsonl").write_text('{"id": "q1", "question": "How do I reset the router?"}\n')
    (tmp_path / "faq.csv").write_text("question,answer\nHow do I reset?,Hold Reset.\n")
    main = importlib.import_module(f"{cli}.cli").main
    home = str(tmp_path / "no-index")
    assert main(_missing_index_argv(cli, home, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "no index at" in err and "Traceback" not in err


def test_ingest_bad_setting_is_a_usage_error(tmp_path, capsys):
    from ingest.cli import main

    assert main([str(tmp_path), "--home", str(tmp_path / "h"), "--chunk-size", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: chunk_size (0)")


def test_at_least_is_the_one_count_check():
    from retrieval.errors import at_least

    at_least("--top-k", 1)
    at_least("--max-body-bytes", 1024, 1024)
    with pytest.raises(UsageError, match=r"^--top-k \(0\) must be at least 1$"):
        at_least("--top-k", 0)
    with pytest.raises(UsageError, match=r"^chunk_size \(0\) must be at least 1 word$"):
        at_least("chunk_size", 0, unit="word")

    class ConfigError(UsageError):
        pass

    with pytest.raises(ConfigError):
        at_least("k", -1, error=ConfigError)
