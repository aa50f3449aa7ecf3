"""LLM backends behind one small interface: local transformers, or an OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class ChatBackend(Protocol):
    """A chat model the agent can call.

    Attributes:
        name: Human-readable identity for reports (model id, adapter path, URL).
    """

    name: str

    def stream(self, messages: list[dict], *, max_new_tokens: int = 256) -> Iterator[str]:
        """Yield the reply to `messages` piece by piece (greedy decoding)."""
        ...

    def complete(self, messages: list[dict], *, max_new_tokens: int = 256) -> str:
        """Return the whole reply to `messages`."""
        ...
