"""The systems an evaluation compares, each turning a question into one answer record.

- `no-rag`: the model alone. The shared prompt with no passages (`build_messages(q, [])`), so the
  only way to do well is to abstain or to know the answer; shows what retrieval adds.
- `base`: the agent (`agent.api.Assistant`) with the base local model.
- `finetuned`: the agent with the base model plus a LoRA adapter (`--adapter`).
- `remote`: the agent with an OpenAI-compatible server (`--llm-url`, `--llm-model`).

An answer record is `AgentAnswer.to_dict()` (question, answer, reasoning, citations, contexts,
mode, claims, removed_claims, raw, ...), which is what the cache stores and the metrics read.

Evaluation never touches the user's conversation memory (`$CASEWISE_HOME/memory.sqlite`): the
agent systems are built with an in-process memory, single questions are asked as one-off
questions (no memory at all), and each scripted conversation gets a thread of its own in that
in-process memory, gone when the run ends.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.prompts import MODEL_CHECK_MAX_NEW_TOKENS
from retrieval.errors import UsageError, at_least
from retrieval.settings import Settings

SYSTEMS = ("no-rag", "base", "finetuned", "remote")
# Generation budget per answer in evaluation, the same for every system (the answers bench,
# bench/answers.py, uses the same). The agent keeps little past it: in the release run on
# 0a46579 the adapter's `Answer:` label always began before token 160 and 2 of its 45
# generated answers kept a sentence beyond it (the base model 3 of 10), while the batches ran
# to 256 because a third of the replies (the no-rag baseline's: 129 of 342) rambled to the
# cap; a batch lasts as long as its longest reply. docs/eval.md has the measurement.
EVAL_MAX_NEW_TOKENS = 160


class SystemConfigError(UsageError):
    """A system that cannot be built from the given options."""


class System(Protocol):
    """Something that answers a question, or a scripted conversation, with answer records."""

    name: str

    def answer(self, question: str) -> dict:
        """Answer `question` on its own (no conversation); return the record."""
        ...

    def converse(self, turns: list[str]) -> list[dict]:
        """Answer the user turns of one conversation in order; one record per turn."""
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
        backend: Local inference engine (`agent.llm.local_backend`: `auto`, `llama.cpp`,
            `transformers`; `None`: `CASEWISE_LLM_BACKEND`, else auto).
        model_check: The agent systems' `Context.model_check`.
        model_check_tokens: Their `Context.model_check_tokens`.
    """

    settings: Settings
    model: str = "default"
    adapter: str | None = None
    llm_url: str | None = None
    llm_model: str | None = None
    top_k: int = 5
    max_new_tokens: int = EVAL_MAX_NEW_TOKENS
    backend: str | None = None
    model_check: bool = False
    model_check_tokens: int = MODEL_CHECK_MAX_NEW_TOKENS

    def __post_init__(self) -> None:
        # Checked here, before a run directory is written or a model loaded (the agent's
        # Context checks the same again, with the same messages).
        for name in ("top_k", "max_new_tokens", "model_check_tokens"):
            at_least(name, getattr(self, name))

    def to_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "settings": self.settings.to_dict(), "model": self.model, "adapter": self.adapter,
            "llm_url": self.llm_url, "llm_model": self.llm_model, "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens, "backend": self.backend,
            "model_check": self.model_check, "model_check_tokens": self.model_check_tokens,
        }

    def answer_options(self, name: str) -> dict:
        """The options that shape the answers of system `name`, JSON-ready.

        The runner stamps them on every answer it caches and reuses a cached answer only under
        the same ones (`eval.runner.check_cached`): what a system does not read (the adapter
        for `base`, the index for `no-rag`) is left out, so adding a system to a run directory
        or answering systems in separate processes still resumes. The agent systems' view
        includes the index itself (`index_manifest`: the start of its manifest's sha256), so a
        re-ingest with other documents is not answered from the old index's answers.
        """
        from retrieval.manifest import manifest_digest

        view: dict = {"max_new_tokens": self.max_new_tokens}
        if name == "remote":
            view.update(llm_url=self.llm_url, llm_model=self.llm_model)
        else:
            view.update(model=self.model, backend=self.backend)
        if name == "finetuned":
            view["adapter"] = self.adapter
        if name != "no-rag":
            digest = manifest_digest(self.settings.manifest_path)
            view.update(settings=self.settings.to_dict(), top_k=self.top_k,
                        model_check=self.model_check, index_manifest=digest and digest[:16])
            if self.model_check:
                view["model_check_tokens"] = self.model_check_tokens
        return json.loads(json.dumps(view, default=str))


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

    def __init__(self, llm, name: str = "no-rag",
                 max_new_tokens: int = EVAL_MAX_NEW_TOKENS) -> None:
        self.llm = llm
        self.name = name
        self.max_new_tokens = max_new_tokens

    def answer(self, question: str, history: list[dict] | None = None) -> dict:
        """Ask the model with an empty passage list (after `history`); no retrieval, no guard."""
        from finetune.format import build_messages, parse_answer

        start = time.perf_counter()
        messages = build_messages(question, [], history)
        text = self.llm.complete(messages, max_new_tokens=self.max_new_tokens)
        parsed = parse_answer(text)
        took = time.perf_counter() - start
        mode = "refused" if parsed.refused else "abstained" if parsed.abstained else "generated"
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
            "mode": mode,
            "claims": [],
            "removed_claims": [],
            "raw": text,
        }

    def converse(self, turns: list[str]) -> list[dict]:
        """Each turn sees the earlier questions and the model's own answers."""
        history: list[dict] = []
        records = []
        for question in turns:
            record = self.answer(question, history)
            records.append(record)
            history += [{"role": "user", "content": question},
                        {"role": "assistant", "content": record["answer"]}]
        return records


class AgentSystem:
    """The agent (retrieval, grading, reasoning, citations, guard) with some LLM backend."""

    def __init__(self, assistant, name: str) -> None:
        self.assistant = assistant
        self.name = name

    def answer(self, question: str) -> dict:
        """`Assistant.ask` as a one-off question: no conversation, nothing remembered."""
        return self.assistant.ask(question, thread_id=None).to_dict()

    def converse(self, turns: list[str]) -> list[dict]:
        """The turns in one fresh thread, so that follow-ups see the earlier turns."""
        thread = f"eval-conversation-{uuid.uuid4().hex}"
        return [self.assistant.ask(t, thread_id=thread).to_dict() for t in turns]


def _local_llm(options: SystemOptions, adapter: str | None):
    # The agent's own choice of engine (llama.cpp where it can run the model, else transformers).
    from agent.llm import local_backend

    return local_backend(options.model, adapter=adapter, max_new_tokens=options.max_new_tokens,
                         backend=options.backend)


def _remote_llm(options: SystemOptions):
    from agent.llm import OpenAIChatModel

    return OpenAIChatModel(options.llm_url, options.llm_model)


def build_llm(name: str, options: SystemOptions):
    """The model (backend) of system `name`, not loaded yet (local models load on first use).

    Raises:
        SystemConfigError: See `check_systems`.
    """
    check_systems([name], options)
    factories: dict[str, Callable[[], object]] = {
        "no-rag": lambda: _local_llm(options, None),
        "base": lambda: _local_llm(options, None),
        "finetuned": lambda: _local_llm(options, options.adapter),
        "remote": lambda: _remote_llm(options),
    }
    return factories[name]()


def build_system(name: str, options: SystemOptions, llm=None, searcher=None) -> System:
    """The system `name` over `llm` (default: `build_llm(name, options)`), index opened.

    Args:
        name: One of `SYSTEMS`.
        options: What the system is built from.
        llm: The model backend (possibly a `BatchingBackend` around it).
        searcher: Retrieval to use instead of opening the index of `options.settings` (tests).

    Raises:
        SystemConfigError: See `check_systems`.
        CasewiseError: From the agent/retrieval (missing index, wrong model or adapter path).
    """
    llm = llm if llm is not None else build_llm(name, options)
    if name == "no-rag":
        return NoRagSystem(llm, max_new_tokens=options.max_new_tokens)
    from agent.api import Assistant
    from retrieval.search import open_searcher

    # Not `Assistant.from_settings`: that opens the user's memory.sqlite under the home. The
    # same builder as the CLI's all the same (the ranker's embedder, the relevance bar's IDF
    # weights, the guard), so that eval measures the agent that ships.
    searcher = searcher if searcher is not None else open_searcher(options.settings)
    assistant = Assistant.from_searcher(searcher, llm, memory_path=None, top_k=options.top_k,
                                        max_new_tokens=options.max_new_tokens,
                                        model_check=options.model_check,
                                        model_check_tokens=options.model_check_tokens)
    return AgentSystem(assistant, name)
