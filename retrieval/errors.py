"""Errors a user can act on. CLIs print `str(error)` as one line and exit non-zero."""

from __future__ import annotations


class CasewiseError(Exception):
    """Base class for expected, user-facing errors (bad input, missing index, wrong path).

    The message names the file or field, what was wrong and what to do. Entry points catch this
    class and print the message without a traceback.
    """


class IndexNotFoundError(CasewiseError):
    """No index at the configured location."""


class EmbedderMismatchError(CasewiseError):
    """The index was built with a different embedder than the one configured."""


class ModelNotFoundError(CasewiseError):
    """A model id or path that cannot be resolved or loaded."""
