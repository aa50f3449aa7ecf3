"""`Assistant`: the one object the CLI and eval use to ask questions.

    assistant = Assistant.from_settings(Settings.resolve(), LocalChatModel())
    result = assistant.ask("How do I reset the router?", thread_id="ticket-42")

`from_settings` (and `from_searcher`, over an index already open) is how every entry point builds
the assistant as shipped; `Assistant(...)` itself takes every setting as given (tests).

`ask` runs the graph to the end and returns an `AgentAnswer`; `stream` yields the final answer's
text once it is verified (the model's unchecked tokens only on request, tagged as a draft) and
returns the `AgentAnswer` (as the generator's return value, also kept in `last_answer`). Conversation memory is LangGraph's SQLite checkpointer at
`settings.memory_path`, keyed by `thread_id`; a `thread_id` of `None` is a one-off question with
no memory (what eval wants).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

from agent.context import Context
from agent.db import connect, move_aside
from agent.faq import DEFAULT_FAQ_THRESHOLD, FaqMatcher
from agent.graph import build_graph
from agent.guards import load_guard
from agent.llm import ChatBackend
from agent.state import AgentAnswer
from retrieval.settings import Settings
from retrieval.types import Searcher
from retrieval.vocabulary import IndexTerms
from retrieval.errors import UsageError

if TYPE_CHECKING:  # chromadb is heavy to import; only from_settings opens an index
    from retrieval.search import HybridSearcher

# Types that checkpoints may hold (LangGraph refuses to revive unregistered classes).
_CHECKPOINT_TYPES = [
    ("retrieval.types", "Chunk"),
    ("retrieval.types", "Hit"),
    ("retrieval.types", "Citation"),
    ("agent.state", "FaqMatch"),
    ("agent.state", "Claim"),
]


def open_memory(path: Path) -> SqliteSaver:
    """A SQLite checkpointer at `path` (created with its directory when missing).

    WAL and a busy timeout (`agent.db.connect`) let the threads and worker processes of
    `python -m agent serve` write one memory file concurrently.

    Raises:
        DamagedDatabaseError: `path` is not a healthy SQLite database; the message names the
            file and says how to start a fresh memory (`--reset-memory`).
    """
    # The CLI streams from a worker thread of LangGraph; SqliteSaver serialises access itself.
    conn = connect(Path(path), what="conversation memory", fix=(
        "start a fresh memory with --reset-memory (the damaged file is kept as "
        f"{Path(path).name}.<time>.bak beside it; its conversations are not read)"))
    return SqliteSaver(conn, serde=_serde())


def reset_memory(path: Path) -> Path | None:
    """Move the memory database at `path` aside so that the next `open_memory` starts empty.

    Returns:
        Where the old file was kept (`<name>.<time>.bak`), or `None` when there was none.
    """
    return move_aside(Path(path))


def _serde() -> JsonPlusSerializer:
    return JsonPlusSerializer(allowed_msgpack_modules=_CHECKPOINT_TYPES)


class Assistant:
    """Ask questions against an index with a chat model, with per-thread memory.

    Args:
        searcher: Retrieval over the index.
        llm: The reasoning model.
        memory_path: SQLite file for conversation memory; `None` keeps memory in this process.
        faq: FAQ matcher, or `None` to skip FAQ matching.
        **context: Further `agent.context.Context` fields (`top_k`, thresholds, ...).
    """

    def __init__(
        self,
        searcher: Searcher,
        llm: ChatBackend,
        *,
        memory_path: Path | None = None,
        faq: FaqMatcher | None = None,
        **context,
    ) -> None:
        self.context = Context(searcher=searcher, llm=llm, faq=faq, **context)
        if memory_path is not None:
            self._memory = open_memory(Path(memory_path))
        else:
            from langgraph.checkpoint.memory import InMemorySaver

            self._memory = InMemorySaver(serde=_serde())
        self.graph = build_graph(checkpointer=self._memory)
        # One-off questions (eval runs hundreds) leave nothing in the memory database.
        self._oneoff_graph = build_graph()
        self.last_answer: AgentAnswer | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        llm: ChatBackend,
        *,
        top_k: int = 5,
        faq_threshold: float | None = None,
        **context,
    ) -> Assistant:
        """Open the index described by `settings` and build an assistant on it, with the
        conversation memory at `settings.memory_path` (see `from_searcher`).

        Raises:
            IndexNotFoundError: No index at `settings.home` (run `python -m ingest docs/`).
        """
        from retrieval.search import open_searcher

        return cls.from_searcher(open_searcher(settings), llm, memory_path=settings.memory_path,
                                 top_k=top_k, faq_threshold=faq_threshold, **context)

    @classmethod
    def from_searcher(
        cls,
        searcher: HybridSearcher,
        llm: ChatBackend,
        *,
        memory_path: Path | None = None,
        top_k: int = 5,
        faq_threshold: float | None = None,
        **context,
    ) -> Assistant:
        """The assistant as shipped, over an index already open: the FAQ match, the quote
        ranker's embedder, the relevance bar's IDF weights and the guard all come from
        `searcher`. The CLI, the REST service, eval and the benchmarks build it here, so that
        every one of them answers by the same rules (eval once built `Assistant` itself without
        the IDF weights, and its relevance bar let 40% of the in-domain unanswerable questions
        through where the CLI's let 8%).

        Args:
            searcher: Retrieval over the index (`retrieval.search.open_searcher`).
            llm: The reasoning model.
            memory_path: SQLite file for conversation memory; `None` keeps it in this process.
            top_k: Passages retrieved per question.
            faq_threshold: FAQ match threshold (default `agent.faq.DEFAULT_FAQ_THRESHOLD`).
            **context: Further `agent.context.Context` fields; they win over the defaults.
        """
        threshold = DEFAULT_FAQ_THRESHOLD if faq_threshold is None else faq_threshold
        context.setdefault("embedder", searcher.embedder)  # ranks sentences for quotes
        # IDF weights of the answer relevance bar, from the keyword index search already built,
        # and its reading of misspelt words as the indexed words they misspell.
        terms = IndexTerms(lambda: searcher.keyword_index(), searcher.embedder)
        context.setdefault("term_weight", terms.weight)
        context.setdefault("term_reading", terms.read)
        # The guard's classifier reads the vectors of the embedder retrieval already loaded.
        context.setdefault("guard", load_guard(searcher.embedder))
        return cls(
            searcher, llm, memory_path=memory_path,
            faq=FaqMatcher(searcher, threshold=threshold), top_k=top_k, **context,
        )

    @staticmethod
    def _config(thread_id: str | None) -> dict:
        return {"configurable": {"thread_id": thread_id or f"oneoff-{uuid.uuid4().hex}"}}

    def threads(self) -> set[str]:
        """Ids of the conversations saved in memory."""
        return {c.config["configurable"]["thread_id"] for c in self._memory.list(None)}

    @staticmethod
    def _check(question: str) -> str:
        if not question or not question.strip():
            raise UsageError("the question is empty: type a question about the documents")
        return question.strip()

    def ask(self, question: str, thread_id: str | None = None, *,
            top_k: int | None = None) -> AgentAnswer:
        """Answer one question (blocking).

        Args:
            question: The question as typed.
            thread_id: Conversation id; earlier turns of that thread resolve follow-ups.
            top_k: Passages retrieved per search for this question (default: the context's).

        Raises:
            UsageError: The question is empty, or `top_k` is below 1.
        """
        generator = self.stream(question, thread_id, top_k=top_k)
        while True:
            try:
                next(generator)
            except StopIteration as done:
                return done.value

    def stream(
        self, question: str, thread_id: str | None = None, *, top_k: int | None = None,
        drafts: bool = False, cancel: threading.Event | None = None,
    ) -> Generator[str | tuple[str, str], None, AgentAnswer]:
        """Yield the final answer's text, a sentence at a time, once verified; return the
        `AgentAnswer`.

        Every final answer (generated, quoted, abstained, refused) is yielded; what the model
        writes before verification is not, unless `drafts`: then every item is a pair,
        `("draft", token)` as the model writes (unverified: show it only labelled as a draft,
        to be replaced) and `("answer", text)` for the verified answer. Read the returned
        answer (or `last_answer`) for the mode, claims and citations. Setting `cancel` (from
        another thread: the chat CLI on Ctrl-C) stops the run before its next model call or
        generated token; nothing of the stopped turn is recorded.

        Raises:
            UsageError: The question is empty, or `top_k` is below 1.
            Cancelled: `cancel` was set.
        """
        question = self._check(question)
        # A per-call copy (validated again): the REST service takes top_k per request.
        overrides = {k: v for k, v in (("top_k", top_k), ("cancel", cancel)) if v is not None}
        context = replace(self.context, **overrides) if overrides else self.context
        start = time.perf_counter()
        final: dict = {}
        graph = self.graph if thread_id else self._oneoff_graph
        for mode, chunk in graph.stream(
            {"question": question}, self._config(thread_id), context=context,
            stream_mode=["custom", "values"],
        ):
            if mode == "custom":
                kind, text = chunk
                if drafts:
                    yield kind, text
                elif kind == "answer":
                    yield text
            else:
                final = chunk
        timings = {k: round(v, 4) for k, v in (final.get("timings") or {}).items()}
        timings.setdefault("retrieve", 0.0)
        timings.setdefault("generate", 0.0)
        timings["total"] = round(time.perf_counter() - start, 4)
        refused, abstained = bool(final.get("refused")), bool(final.get("abstained"))
        self.last_answer = AgentAnswer(
            question=question,
            answer=final.get("answer", ""),
            reasoning=final.get("reasoning", ""),
            citations=list(final.get("citations") or []),
            contexts=list(final.get("contexts") or []),
            abstained=abstained,
            refused=refused,
            faq_match=final.get("faq_match"),
            timings=timings,
            mode=final.get("mode") or (
                "refused" if refused else "abstained" if abstained else "generated"),
            claims=list(final.get("claims") or []),
            removed_claims=list(final.get("removed_claims") or []),
            raw=final.get("raw", ""),
            answer_id=uuid.uuid4().hex,
            guard=final.get("guard"),
        )
        return self.last_answer

    def history(self, thread_id: str) -> list[dict]:
        """The conversation of `thread_id` as `{"role", "content", ...}` dicts (oldest first)."""
        state = self.graph.get_state(self._config(thread_id))
        return list(state.values.get("messages") or [])

    def forget(self, thread_id: str) -> None:
        """Delete the saved conversation of `thread_id` (nothing happens when there is none)."""
        self._memory.delete_thread(thread_id)

    def close(self) -> None:
        """Close the memory database."""
        if isinstance(self._memory, SqliteSaver):
            self._memory.conn.close()
