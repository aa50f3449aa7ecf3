"""Every command line's `--help` ends with examples, and every example parses with that CLI's
own parser (so the examples in `--help` cannot drift from the flags they show)."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from agent.cli import build_parser as agent_parser
    from finetune.cli import build_parser as finetune_parser
    from ingest.cli import build_parser as ingest_parser
    from retrieval.cli import build_parser as retrieval_parser

    return {"agent": agent_parser(), "finetune": finetune_parser(), "ingest": ingest_parser(),
            "retrieval": retrieval_parser()}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for subcommands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _examples(help_text: str, package: str) -> list[list[str]]:
    """The `python -m PACKAGE ...` lines after `examples:`, split like a shell would."""
    assert "examples:" in help_text, help_text
    section = re.sub(r"\s*\\\n\s*", " ", help_text.split("examples:", 1)[1]).split("\n\n")[0]
    commands = []
    for line in section.splitlines():
        command = re.split(r"\s{2,}", line.strip())[0]  # a description may follow in a column
        words = shlex.split(command, comments=True)
        if words[:3] == ["python", "-m", package] and "..." not in line and "[-" not in line:
            commands.append(words[3:])
    return commands


# (package, subcommand or None): the parsers whose help users read first. `finetune train` and
# `align` are TRL parsers (tested below), `eval` has its own help test.
HELPS = [("agent", None), ("agent", "ask"), ("agent", "serve"), ("retrieval", None),
         ("ingest", None), ("finetune", None), ("finetune", "data"), ("finetune", "merge"),
         ("finetune", "export"), ("finetune", "sweep")]


@pytest.mark.parametrize(("package", "command"), HELPS)
def test_help_has_examples_that_parse(package, command):
    top = _parsers()[package]
    parser = _subparsers(top)[command] if command else top
    examples = _examples(parser.format_help(), package)
    assert examples, f"python -m {package} {command or ''} --help shows no runnable example"
    for argv in examples:
        if argv and argv[0] in ("train", "align"):
            continue  # parsed by TRL, below
        try:
            top.parse_args(argv)
        except SystemExit as e:
            if argv[-1:] != ["--help"]:
                raise AssertionError(f"example does not parse: python -m {package} "
                                     f"{shlex.join(argv)}") from e


def test_finetune_train_help_has_examples(capsys):
    from finetune.train import parse

    with pytest.raises(SystemExit) as done:
        parse(["--help"])
    assert done.value.code == 0
    examples = _examples(capsys.readouterr().out, "finetune")
    assert examples and all(argv[0] == "train" and "--config" in argv for argv in examples)
