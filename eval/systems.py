"""The systems an evaluation compares, each turning a question into one answer record.

- `no-rag`: the model alone. The shared prompt with no passages (`build_messages(q, [])`), so the
  only way to do well is to abstain or to know the answer; shows what retrieval adds.
- `base`: the agent (`agent.api.Assistant`) with the base local model.
- `finetuned`: the agent with the base model plus a LoRA adapter (`--adapter`).
- `remote`: the agent with an OpenAI-compatible server (`--llm-url`, `--llm-model`).

An answer record is `AgentAnswer.to_dict()` (question, answer, reasoning, citations, contexts,
abstained, refused, faq_match, timings), which is what the cache stores and the metrics read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from retrieval.errors import CasewiseError, UsageError
from retrieval.settings import Settings

SYSTEMS = ("no-rag", "base", "finetuned", "remote")


class SystemConfigError(UsageError):
    """A system that cannot be built from the given options."""


class System(Protocol):
    """Something that answers one question with an answer record."""

    name: str

    def answer(self, question: str, *, thread_id: str) -> dict:
        """Answer `question` in its own conversation `thread_id`; return the record."""
        ...


@dataclass(frozen=True)
class SystemOptions:
    """What the systems are built from (the resolved config saved with the run).

    Attributes:
        settings: Index location and embedder for the agent systems.
        model: Base model for `no-rag`, `base` and `finetuned` (`"default"` = embedded SmolLM2).
        adapter: LoRA adapter directory for `finetuned`.
        llm_url: Base URL of the OpenAI-compatible server for `remote`.
        llm_model: Model name on that server.
        top_k: Passages retrieved per question.
        max_new_tokens: Generation budget per answer.
    """

    settings: Settings
    model: str = "default"
    adapter: str | None = None
    llm_url: str | None = None
    llm_model: str | None = None
    top_k: int = 5
    max_new_tokens: int = 256

    def to_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "settings": self.settings.to_dict(), "model": self.model, "adapter": self.adapter,
            "llm_url": self.llm_url, "llm_model": self.llm_model, "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
        }


def check_systems(names: list[str], options: SystemOptions) -> None:
    """Reject unknown systems and missing options before anything is loaded.

    Raises:
        SystemConfigError: Unknown name, `finetuned` without `--adapter`, `remote` without
            `--llm-url`/`--llm-model`.
    """
    for name in names:
        if name not in SYSTEMS:
            raise SystemConfigError(
                f"--systems: unknown system {name!r}: choose from {', '.join(SYSTEMS)}"
            )
    if "finetuned" in names and not options.adapter:
        raise SystemConfigError("--systems finetuned needs --adapter PATH (a LoRA adapter dir)")
    if "remote" in names and not (options.llm_url and options.llm_model):
        raise SystemConfigError("--systems remote needs --llm-url URL and --llm-model NAME")


class NoRagSystem:
    """The model alone: the shared prompt with no passages, parsed like the agent's output."""

    def __init__(self, llm, name: str = "no-rag", max_new_tokens: int = 256) -> None:
        self.llm = llm
        self.name = name
        self.max_new_tokens = max_new_tokens

    def answer(self, question: str, *, thread_id: str) -> dict:
        """Ask the model with an empty passage list; no retrieval, no guard."""
        from finetune.format import build_messages, parse_answer

        start = time.perf_counter()
        text = self.llm.complete(build_messages(question, []), max_new_tokens=self.max_new_tokens)
        parsed = parse_answer(text)
        took = time.perf_counter() - start
        return {
            "question": question,
            "answer": parsed.answer,
            "reasoning": parsed.reasoning,
            "citations": [c.to_dict() for c in parsed.citations],
            "contexts": [],
            "abstained": parsed.abstained,
            "refused": parsed.refused,
            "faq_match": None,
            "timings": {"generate": took, "total": took},
            "raw": text,
        }


class AgentSystem:
    """The agent (retrieval, grading, reasoning, citations, guard) with some LLM backend."""

    def __init__(self, assistant, name: str) -> None:
        self.assistant = assistant
        self.name = name

    def answer(self, question: str, *, thread_id: str) -> dict:
        """`Assistant.ask` in a thread of its own, so questions never share memory."""
        return self.assistant.ask(question, thread_id=thread_id).to_dict()


def _local_llm(options: SystemOptions, adapter: str | None):
    from agent.llm import LocalChatModel

    return LocalChatModel(
        model=options.model, adapter=adapter, max_new_tokens=options.max_new_tokens
    )


def build_system(name: str, options: SystemOptions) -> System:
    """Load the model(s) and index for one system.

    Raises:
        SystemConfigError: See `check_systems`.
        CasewiseError: From the agent/retrieval (missing index, wrong model or adapter path).
    """
    check_systems([name], options)
    if name == "no-rag":
        return NoRagSystem(_local_llm(options, None), max_new_tokens=options.max_new_tokens)
    from agent.api import Assistant

    llm_factories: dict[str, Callable[[], object]] = {
        "base": lambda: _local_llm(options, None),
        "finetuned": lambda: _local_llm(options, options.adapter),
        "remote": lambda: _remote_llm(options),
    }
    llm = llm_factories[name]()
    assistant = Assistant.from_settings(
        options.settings, llm, top_k=options.top_k, max_new_tokens=options.max_new_tokens
    )
    return AgentSystem(assistant, name)


def _remote_llm(options: SystemOptions):
    from agent.llm import OpenAIChatModel

    return OpenAIChatModel(options.llm_url, options.llm_model)
