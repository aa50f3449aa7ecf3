"""Shared fixtures and first-class fakes.

- `HashEmbedder`: deterministic, content-dependent embeddings (hashed bag of words, normalised),
  so that texts sharing words are near each other: good enough to test search logic.
- `ScriptedChatModel`: replays queued answers and records the messages it was sent.
- `tiny_llama`: a 2-layer, 64-dim random Llama built from a config, for training mechanics.
- An autouse fixture isolates environment variables and home/cache paths to `tmp_path`; the
  embedded-model conversion cache is shared by the whole session so it happens once.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, skipping the test when it is absent (a user's clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


class HashEmbedder:
    """Hashed bag-of-words embedder: deterministic, content-dependent, L2-normalised."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self.name = f"hash-bow-{dim}"
        self.calls = 0
        self.texts_embedded = 0

    def _vec(self, text: str) -> list[float]:
        v = [0.0] * self.dim
        for tok in re.findall(r"[a-z0-9]+", text.lower()):
            h = int.from_bytes(hashlib.sha256(tok.encode()).digest()[:8], "big")
            v[h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / norm for x in v]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        self.texts_embedded += len(texts)
        return [self._vec(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vec(text)


class ScriptedChatModel:
    """A chat backend that replays queued answers (simonw/llm's queued mock model)."""

    def __init__(self, answers: list[str] | None = None, name: str = "scripted") -> None:
        self.name = name
        self.queue: deque[str] = deque(answers or [])
        self.calls: list[list[dict]] = []

    def push(self, *answers: str) -> None:
        self.queue.extend(answers)

    def complete(self, messages: list[dict], *, max_new_tokens: int = 256) -> str:
        self.calls.append([dict(m) for m in messages])
        if not self.queue:
            raise AssertionError(f"ScriptedChatModel has no answer queued for call {len(self.calls)}")
        return self.queue.popleft()

    def stream(self, messages: list[dict], *, max_new_tokens: int = 256) -> Iterator[str]:
        text = self.complete(messages, max_new_tokens=max_new_tokens)
        for piece in re.findall(r"\S+\s*", text):
            yield piece


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """Session-wide cache for converted models (the embedded GGUF is converted once)."""
    return tmp_path_factory.mktemp("casewise-cache")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch, model_cache):
    """Keep every test away from the user's home, caches, settings and the network."""
    for var in ("CASEWISE_HOME", "CASEWISE_EMBEDDER", "CASEWISE_CHROMA_URL", "CASEWISE_COLLECTION",
                "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CASEWISE_HOME", str(tmp_path / ".casewise"))
    monkeypatch.setenv("CASEWISE_CACHE", str(model_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("ANONYMIZED_TELEMETRY", "False")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    yield


@pytest.fixture
def hash_embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture
def scripted_llm() -> ScriptedChatModel:
    return ScriptedChatModel()


@pytest.fixture
def tiny_llama(tmp_path):
    """A 2-layer, 64-dim random Llama plus the embedded model's tokenizer vocabulary size.

    Returns a `LlamaForCausalLM` built from a config (no weights on disk, no tokenizer).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def embedded_model_path(model_cache) -> str:
    """The embedded SmolLM2 converted to safetensors (once per test session)."""
    import os

    os.environ["CASEWISE_CACHE"] = str(model_cache)
    from finetune.model import resolve_base_model

    return resolve_base_model("default")


class PassageQuotingModel:
    """A fast, deterministic stand-in for the local model that answers any number of questions.

    It replies in the shared format (v2) with the first sentence of passage [1] as its quote
    and its answer, and that passage's label as its source: verbatim, so verification keeps it. No model,
    no queue: the REST service tests and `bench/serve.py` run it behind a real server
    (`CASEWISE_SERVE_TEST_LLM=tests.conftest:PassageQuotingModel`).
    """

    name = "passage-quoting (test backend)"
    _FIRST = re.compile(r"^\[1\] \[(?P<label>[^\]]+)\][^\n]*\n(?P<text>.+?)(?=\n\[2\] |\n\n|\Z)",
                        re.MULTILINE | re.DOTALL)

    def complete(self, messages: list[dict], *, max_new_tokens: int = 256) -> str:
        from finetune.format import ABSTAIN_ANSWER

        user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        found = self._FIRST.search(user)
        if found is None:
            return f"Reasoning: No passage is given.\nAnswer: {ABSTAIN_ANSWER}"
        # Format v2 numbers each sentence on its own line: "(1.1) To reset the router ...".
        sentence = re.sub(r"^\(1\.1\)\s*", "", found["text"].strip().splitlines()[0]).strip()
        reply = (f"Reasoning: Passage [1] answers the question.\nQuote: 1.1\n"
                 f"Answer: {sentence}\nSources: [{found['label']}]")
        prefix = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
        # A final assistant message is a prefix the reply continues (agent.llm.ChatBackend).
        return reply[len(prefix):] if prefix and reply.startswith(prefix) else reply

    def stream(self, messages: list[dict], *, max_new_tokens: int = 256) -> Iterator[str]:
        yield from re.findall(r"\S+\s*", self.complete(messages, max_new_tokens=max_new_tokens))
