"""Batched generation for evaluation: many questions through one loaded model at once.

A backend that can answer several prompts in one call exposes

    complete_many(list_of_messages, *, max_new_tokens=N) -> list[str]

(greedy, each reply as `complete` would give it). The agent asks its model one question at a
time, deep inside the graph, so evaluation runs `workers` questions in threads and puts a
`BatchingBackend` between the graph and the model: each thread's `complete`/`stream` call waits
until every busy thread is waiting for the model, and then one of them sends all the waiting
prompts as one `complete_many` call. The agent's code is unchanged, and the answers are the
ones it would give one by one (greedy decoding of the same prompts).

Everything else a question does (retrieval, grading, parsing, verification, the cache) runs
one thread at a time under `BatchingBackend.turn()`: the retrieval stack (tokenizers, Chroma)
is not promised to be thread-safe, and that work is cheap next to generation.

A backend without `complete_many` is used as it is, one question at a time (`workers` 1).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

# Seconds a request waits for the other busy threads before its batch goes out anyway: a
# thread that is slow to reach the model (a first-time load) must not stall the others.
MAX_WAIT_S = 5.0


def can_batch(backend) -> bool:
    """Whether `backend` answers several prompts in one call (`complete_many`)."""
    return callable(getattr(backend, "complete_many", None))


@dataclass
class _Request:
    messages: list[dict]
    max_new_tokens: int | None
    reply: str | None = None
    error: BaseException | None = None
    done: bool = False
    taken: bool = False
    since: float = field(default=0.0)


class BatchingBackend:
    """A `ChatBackend` that gathers the concurrent calls of worker threads into batches.

    Args:
        backend: The real backend; must have `complete_many` (see `can_batch`).
        max_batch: Most prompts per `complete_many` call.

    Attributes:
        batches: Sizes of the batches sent so far (for the run's speed report).
        batch_log: Per batch sent: its size, the wall seconds of its `complete_many` call, the
            characters of its replies and, when the backend counts tokens (`count_tokens`),
            prompt tokens, new tokens and new tokens per second (`DIR/generation.jsonl` keeps
            them, so a slow run shows whether some batches ran long or all decoded slowly).
    """

    def __init__(self, backend, *, max_batch: int = 16) -> None:
        if not can_batch(backend):
            raise TypeError(f"{backend!r} has no complete_many: use it unbatched")
        self.backend = backend
        self.name = backend.name
        self.max_batch = max_batch
        self.batches: list[int] = []
        self.batch_log: list[dict] = []
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._busy = 0
        self._running = False
        # Held by a worker whenever it runs anything but generation (see the module docstring).
        self._work = threading.Lock()

    def add_workers(self, n: int) -> None:
        """`n` more threads will call this backend: a batch waits for each one's prompt."""
        with self._cond:
            self._busy += n

    def worker_done(self) -> None:
        """A thread has no more questions: batches stop waiting for it."""
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Run one question's non-model work in the calling worker, one thread at a time."""
        self._work.acquire()
        try:
            yield
        finally:
            self._work.release()

    def complete(self, messages: list[dict], *, max_new_tokens: int | None = None) -> str:
        """The reply to `messages`, generated in a batch with the other threads' prompts."""
        req = _Request(messages, max_new_tokens, since=time.monotonic())
        with self._cond:
            self._pending.append(req)
            self._cond.notify_all()
        self._work.release()
        try:
            self._wait(req)
        finally:
            self._work.acquire()
        if req.error is not None:
            raise req.error
        return req.reply

    def stream(self, messages: list[dict], *, max_new_tokens: int | None = None) -> Iterator[str]:
        """The whole reply as one piece (nobody watches evaluation answers being typed)."""
        yield self.complete(messages, max_new_tokens=max_new_tokens)

    def _wait(self, req: _Request) -> None:
        with self._cond:
            while not req.done:
                waiting = [r for r in self._pending if not r.taken]
                ready = waiting and not self._running and (
                    len(waiting) >= min(self._busy, self.max_batch)
                    or time.monotonic() - waiting[0].since >= MAX_WAIT_S
                )
                if not ready:
                    self._cond.wait(timeout=0.5)
                    continue
                batch = self._take(waiting)
                self._running = True
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._pending = [r for r in self._pending if not r.done]
                    self._cond.notify_all()

    def _logged(self, batch: list[_Request], replies: list[str], seconds: float) -> dict:
        # Tokens only where the backend counts them in its own vocabulary (the local backends'
        # `count_tokens`); counted after the batch's clock stopped, so they cost no decode time.
        # Prompt tokens are those of the messages' texts (the chat template's few are left out);
        # new tokens those of the decoded replies.
        entry = {"size": len(batch), "seconds": round(seconds, 3),
                 "reply_chars": sum(len(r or "") for r in replies)}
        count = getattr(self.backend, "count_tokens", None)
        if count is not None:
            entry["prompt_tokens"] = sum(count(m["content"]) for r in batch for m in r.messages)
            entry["new_tokens"] = sum(count(r or "") for r in replies)
            entry["new_tokens_per_s"] = round(entry["new_tokens"] / seconds, 1) if seconds else None
        return entry

    def _take(self, waiting: list[_Request]) -> list[_Request]:
        # One call per kind of request: the oldest request's generation budget and whether it
        # continues a prefilled assistant turn, and whoever shares both.
        kind = _kind(waiting[0])
        batch = [r for r in waiting if _kind(r) == kind][: self.max_batch]
        for r in batch:
            r.taken = True
        return batch

    def _run(self, batch: list[_Request]) -> None:
        self.batches.append(len(batch))
        try:
            kwargs = {} if batch[0].max_new_tokens is None else {
                "max_new_tokens": batch[0].max_new_tokens}
            start = time.perf_counter()
            replies = self.backend.complete_many([r.messages for r in batch], **kwargs)
            self.batch_log.append(self._logged(batch, replies, time.perf_counter() - start))
            if len(replies) != len(batch):
                raise RuntimeError(f"complete_many returned {len(replies)} replies for "
                                   f"{len(batch)} prompts")
            for r, reply in zip(batch, replies, strict=True):
                r.reply = reply
        except BaseException as e:  # every waiting question gets the error, re-raised there
            for r in batch:
                r.error = e
        for r in batch:
            r.done = True


def _kind(req: _Request) -> tuple:
    prefilled = bool(req.messages) and req.messages[-1]["role"] == "assistant"
    return req.max_new_tokens, prefilled


def run_parallel(items: list, work: Callable, *, workers: int,
                 batcher: BatchingBackend | None) -> Iterator[tuple[object, object]]:
    """Yield `(item, work(item))` as each finishes, `workers` at a time (1: in this thread).

    With a `batcher`, each worker thread is registered with it for as long as it may still ask
    the model, and each item runs inside `batcher.turn()`, so that the model calls of the
    workers meet in batches. The first error stops the run (items not started are not
    started) and is raised here; what finished before it has been yielded.
    """
    if batcher is None:
        for item in items:
            yield item, work(item)
        return
    if workers <= 1 or len(items) <= 1:
        batcher.add_workers(1)
        try:
            for item in items:
                with batcher.turn():
                    result = work(item)
                yield item, result
        finally:
            batcher.worker_done()
        return
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for item in items:
        todo.put(item)
    done: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def worker() -> None:
        try:
            while not stop.is_set():
                try:
                    item = todo.get_nowait()
                except queue.Empty:
                    break
                try:
                    with batcher.turn():
                        result = work(item)
                except BaseException as e:
                    stop.set()
                    done.put((item, None, e))
                    break
                done.put((item, result, None))
        finally:
            batcher.worker_done()
            done.put(None)

    threads = [threading.Thread(target=worker, daemon=True, name=f"eval-worker-{i}")
               for i in range(min(workers, len(items)))]
    batcher.add_workers(len(threads))
    for t in threads:
        t.start()
    finished = 0
    try:
        while finished < len(threads):
            got = done.get()
            if got is None:
                finished += 1
                continue
            item, result, error = got
            if error is not None:
                raise error
            yield item, result
    finally:
        stop.set()
