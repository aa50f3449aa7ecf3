"""Benchmarks: one command each, a table on stdout and JSON under `bench/results/`."""

from __future__ import annotations

import argparse


def doc_parser(doc: str, prog: str) -> argparse.ArgumentParser:
    """An argument parser whose description and examples come from a script's docstring.

    Args:
        doc: The script's `__doc__`: the command line, a blank line, the description (its first
            paragraph is used), and an `Examples:` section, which becomes the epilog.
        prog: The command as a user types it, e.g. `python bench/answers.py`.
    """
    return argparse.ArgumentParser(
        prog=prog, description=doc.split("\n\n")[1],
        epilog="Examples:\n" + doc.split("Examples:\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
