"""Errors a user can act on, and the one exit-code policy of every casewise command line.

Every CLI (`python -m ingest|retrieval|agent|finetune|eval`) exits with:

| code | meaning |
|---|---|
| 0 | success |
| 1 | the run failed, or part of it did: a server unreachable, the index locked by another ingest, some files not indexed, a gate threshold not met |
| 2 | usage or input error: a bad flag or setting, a missing or malformed input file, no index, a wrong model path, an index built with other settings |
| 130 | interrupted (Ctrl-C) |

Expected errors derive from `CasewiseError` and carry their `exit_code`; entry points run their
`main` through `run_cli`, which prints `error: <message>` as one line on stderr (no traceback)
and returns that code. Package-specific errors live in their packages and subclass one of the
two classes here: `UsageError` (exit 2) or `CasewiseError` (exit 1).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CasewiseError(Exception):
    """Base class for expected, user-facing errors: the run failed for a reason the user can act on.

    The message names the file or field, what was wrong and what to do. Exit code 1.
    """

    exit_code = EXIT_FAILED


class UsageError(CasewiseError):
    """Bad usage or input: a flag, setting or input file the user must fix (exit code 2).

    Deliberately not a `ValueError`: code that catches a library's `ValueError` (pypdf's
    structural errors, say) must not swallow ours.
    """

    exit_code = EXIT_USAGE


class IndexNotFoundError(UsageError):
    """No index at the configured location (run `python -m ingest docs/` first)."""


class IndexSettingsMismatchError(UsageError):
    """The index was built with other settings (embedder or chunking) than the ones configured."""


class ModelNotFoundError(UsageError):
    """A model id or path (generator or embedder) that cannot be resolved or loaded."""


def at_least(name: str, value: float, least: int = 1, *, unit: str = "",
             error: type[UsageError] = UsageError) -> None:
    """The one check of a count or budget: `error` (exit 2) unless `value >= least`.

    The message is "NAME (VALUE) must be at least LEAST[ UNIT]", UNIT being what is counted or
    a hint, e.g. "--top-k (0) must be at least 1", "chunk_size (0) must be at least 1 word",
    "k (0) must be at least 1 (passages per prompt)". `error` is the package's own
    `UsageError` subclass, where it has one.
    """
    if value < least:
        raise error(f"{name} ({value}) must be at least {least}{' ' + unit if unit else ''}")


def run_cli(main: Callable[[], int], *, interrupted: str = "interrupted") -> int:
    """Run a CLI body and turn expected errors into one line on stderr and the policy's code.

    Args:
        main: The command's body; returns its exit code.
        interrupted: What to print on Ctrl-C (say what was kept and how to resume).

    Returns:
        `main()`'s code, the error's `exit_code`, or 130 on Ctrl-C.
    """
    try:
        return main()
    except CasewiseError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
