"""The REST service behind `python -m agent serve`, for help desks, CRMs and chat front ends.

    python -m agent serve [--host 127.0.0.1] [--port 8080] [--workers N] [--api-keys FILE]

FastAPI on uvicorn; OpenAPI docs at `/docs`. Endpoints (docs/serve.md has the details):

| endpoint | what |
|---|---|
| `POST /v1/ask` | `{question, session_id?, top_k?}` -> the `ask --json` object (+ `session_id`) |
| `POST /v1/ask/stream` | the same as server-sent events: `token` events, then one `answer` |
| `GET`/`DELETE /v1/sessions/{id}` | a conversation's saved history / forget it |
| `POST /v1/feedback` | `{answer_id, rating: up|down, comment?, corrected_answer?}`, stored durably |
| `POST /v1/chat/completions`, `GET /v1/models` | OpenAI-compatible facade, model `casewise` |
| `GET /healthz`, `GET /metrics` | index and model status; Prometheus text |

How it holds up:
- One loaded model answers concurrent requests: generation with a local model runs one request
  at a time behind a lock (a second request waits; tokens of one answer are never interleaved
  with another's), while guard, FAQ match and retrieval of other requests run in parallel in
  the thread pool. A remote OpenAI-compatible model server is not serialised (it batches).
  Turns of one session run one after another, so a conversation's memory stays consistent.
  More than `max_pending` questions in flight get 503 with `Retry-After`.
- Memory (`memory.sqlite`) and feedback (`feedback.sqlite`) live under `$CASEWISE_HOME`, in WAL
  mode with a busy timeout (`agent.db`): concurrent writers wait, a killed server loses nothing
  it acknowledged.
- API keys are bearer tokens, stored as SHA-256 hashes (`KeyRing`); with no key configured the
  server refuses to listen on anything but a loopback address. Request bodies, questions and
  the request rate per key are limited; every error is JSON `{"error": {"message", "type",
  "param", "code"}}` (the OpenAI shape, so SDKs show the message), never a stack trace.

Test-only switch: `CASEWISE_SERVE_TEST_LLM=module:callable` builds the chat backend by calling
that callable instead of loading a model (the tests and `bench/serve.py` use
`tests.conftest:PassageQuotingModel`, a fast scripted model); the server says so at startup.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import importlib
import ipaddress
import json
import logging
import math
import os
import secrets
import socket
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Path as PathParam, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, ServerSentEvent, format_sse_event
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.api import Assistant
from agent.cli import apply_reset_memory, build_assistant, make_llm, resolve_settings
from agent.feedback import FEEDBACK_FILE, FeedbackStore, UnknownAnswerError
from agent.llm import ChatBackend, LlamaCppChatModel, LocalChatModel, OpenAIChatModel
from agent.state import MODES
from retrieval.errors import CasewiseError, UsageError, at_least
from retrieval.settings import Settings

log = logging.getLogger("casewise.serve")

MODEL_NAME = "casewise"
ENV_API_KEYS = "CASEWISE_API_KEYS"
ENV_TEST_LLM = "CASEWISE_SERVE_TEST_LLM"
# Worker processes (--workers N > 1) rebuild the service from these (uvicorn imports the app).
_ENV_WORKER_ARGS = "CASEWISE_SERVE_WORKER_ARGS"
_ENV_WORKER_KEYS = "CASEWISE_SERVE_WORKER_KEYS"
SESSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
MAX_TOP_K = 50
MAX_COMMENT_CHARS = 4000
_HASH_PREFIX = "sha256:"
_SSE_DOC = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or with "
                                                                       "streaming SSE events"}}
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


# --- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeConfig:
    """Limits and binding of one server.

    Attributes:
        host: Address to listen on (`127.0.0.1`; `0.0.0.0` needs API keys).
        port: TCP port.
        workers: uvicorn worker processes, each with its own model (memory x N).
        max_body_bytes: Largest request body accepted (413 beyond).
        max_question_chars: Longest question (and corrected answer) accepted (422 beyond).
        rate_limit: Requests per minute per API key (per client address without keys); 0 turns
            the limit off. Each worker counts on its own.
        max_pending: Questions in flight (waiting or answering) before new ones get 503.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 64 * 1024
    max_question_chars: int = 4000
    rate_limit: int = 120
    max_pending: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise UsageError(f"--port ({self.port}) must be between 1 and 65535")
        at_least("--workers", self.workers)
        at_least("--max-body-bytes", self.max_body_bytes, 1024)
        at_least("--max-question-chars", self.max_question_chars)
        if self.rate_limit < 0:
            raise UsageError(f"--rate-limit ({self.rate_limit}) must be 0 (off) or more")
        at_least("--max-pending", self.max_pending)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServeConfig:
        """The config the `serve` flags describe."""
        return cls(host=args.host, port=args.port, workers=args.workers,
                   max_body_bytes=args.max_body_bytes,
                   max_question_chars=args.max_question_chars, rate_limit=args.rate_limit,
                   max_pending=args.max_pending)


# --- API keys ----------------------------------------------------------------------------------


def hash_key(key: str) -> str:
    """The at-rest form of an API key: `sha256:<hex>`.

    A plain SHA-256 is enough: keys are 256 random bits (`new_key`), not passwords, so there is
    nothing for a slow hash to protect against.
    """
    return _HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def _is_hash(text: str) -> bool:
    digest = text[len(_HASH_PREFIX):]
    return (text.startswith(_HASH_PREFIX) and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest))


class KeyRing:
    """The accepted API keys, by hash, each with a name (the rate-limit and audit identity).

    Args:
        hashes: `{"sha256:<hex>": name}`.
    """

    def __init__(self, hashes: dict[str, str] | None = None) -> None:
        self.hashes = dict(hashes or {})

    def __len__(self) -> int:
        return len(self.hashes)

    @classmethod
    def load(cls, file: str | Path | None, env_value: str | None) -> KeyRing:
        """Read keys from a key file and/or the `CASEWISE_API_KEYS` value.

        The file holds one key hash per line, `NAME sha256:<hex>` (or the hash alone); `#`
        starts a comment. `CASEWISE_API_KEYS` is a comma-separated list of keys or key hashes
        (for secret stores that inject plain keys; they are hashed at once).

        Raises:
            UsageError: The file is missing, or a line is not a hash (plain keys are refused
                in files: the file must not hold usable secrets).
        """
        hashes: dict[str, str] = {}
        if file:
            path = Path(file).expanduser()
            if not path.is_file():
                raise UsageError(f"API key file {path} does not exist: create it with "
                                 f"`python -m agent serve --api-keys {path} --new-key NAME`")
            for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                line = raw.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                name, digest = (parts if len(parts) == 2 else (f"key-{number}", parts[0]))
                if len(parts) > 2 or not _is_hash(digest):
                    raise UsageError(
                        f"{path}:{number}: not 'NAME sha256:<64 hex digits>': the key file holds "
                        f"key hashes, never keys; add keys with `python -m agent serve "
                        f"--api-keys {path} --new-key NAME`")
                hashes[digest] = name
        for index, entry in enumerate((env_value or "").split(","), 1):
            entry = entry.strip()
            if entry:
                hashes[entry if _is_hash(entry) else hash_key(entry)] = f"env-{index}"
        return cls(hashes)

    def identify(self, token: str) -> str | None:
        """The name of the key `token`, or `None` when it is not one of ours."""
        presented = hash_key(token)
        found = None
        for digest, name in self.hashes.items():  # compare every entry: no early-exit timing
            if hmac.compare_digest(presented, digest):
                found = name
        return found


def new_key(file: str | Path, name: str) -> str:
    """Create an API key, append its hash to `file` (created mode 0600) and return the key.

    Raises:
        UsageError: `name` is empty or has spaces, or is already in the file.
    """
    if not name or any(c.isspace() for c in name) or "#" in name:
        raise UsageError(f"--new-key ({name!r}) must be a name without spaces or '#'")
    path = Path(file).expanduser()
    if path.exists() and name in KeyRing.load(path, None).hashes.values():
        raise UsageError(f"{path} already has a key named {name!r}: pick another name, or "
                         f"delete its line to revoke it")
    key = "cw-" + secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(f"{name} {hash_key(key)}\n")
    return key


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (or `localhost`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- rate limit, metrics -----------------------------------------------------------------------


class RateLimiter:
    """Token buckets per client: `per_minute` requests a minute, bursts of up to that many."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last time)
        self._lock = threading.Lock()

    def check(self, client: str) -> float | None:
        """Take one request from `client`'s bucket; `None` if allowed, else seconds to wait."""
        if self.per_minute == 0:
            return None
        rate = self.per_minute / 60.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                return (1.0 - tokens) / rate
            self._buckets[client] = (tokens - 1.0, now)
            return None


class Metrics:
    """Prometheus metrics of the server (one registry per app; all workers' with --workers)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        # With several workers each process writes its samples to PROMETHEUS_MULTIPROC_DIR
        # (set by `run_serve`) and /metrics adds them up; metrics then live in no registry.
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        registry = None if self.multiprocess else self.registry
        self.requests = Counter("casewise_http_requests", "HTTP requests by route and status.",
                                ["method", "route", "status"], registry=registry)
        self.latency = Histogram("casewise_http_request_duration_seconds",
                                 "Time from request to the last byte of the response.",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.answers = Counter("casewise_answers", "Answers served, by how they were produced.",
                               ["mode"], registry=registry)
        self.feedback = Counter("casewise_feedback", "Feedback stored, by rating.", ["rating"],
                                registry=registry)
        for mode in MODES:
            self.answers.labels(mode=mode)
        for rating in ("up", "down"):
            self.feedback.labels(rating=rating)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


# --- errors ------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered as JSON with `status` (raised by handlers and dependencies)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers


def error_body(message: str, type: str, param: str | None = None,
               code: str | None = None) -> dict:
    """The JSON error object (OpenAI's shape, which its SDKs read)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status,
                        headers=e.headers)


_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                 404: "not_found_error", 405: "invalid_request_error",
                 413: "request_too_large", 429: "rate_limit_error"}


def _validation_message(error: dict) -> tuple[str, str | None]:
    """One line for a pydantic error: `(message, field)`."""
    loc = [str(x) for x in error.get("loc", ()) if x not in ("body", "path", "query")]
    field = ".".join(loc) or None
    msg = str(error.get("msg", "invalid value"))
    if error.get("type") == "missing" and field is None:
        return "the request body is missing: send a JSON object", None
    if error.get("type") == "extra_forbidden":
        return f"{field}: unknown field (see /docs for the fields this endpoint takes)", field
    return (f"{field}: {msg}" if field else msg), field


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, e: ApiError) -> JSONResponse:
        return _error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = list(e.errors())
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return _error_response(ApiError(
                400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"))
        message, field = _validation_message(first)
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' * (len(errors) > 2)})"
        return _error_response(ApiError(422, message, param=field, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no endpoint {request.url.path} (see /docs)",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(
            e.status_code, str(e.detail))
        return _error_response(ApiError(e.status_code, message, headers=e.headers,
                                        type=_STATUS_TYPES.get(e.status_code, "api_error")))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:
        # The traceback goes to the server log under an id the client can quote, never to
        # the client.
        ref = uuid.uuid4().hex[:12]
        log.error("internal error %s on %s %s", ref, request.method, request.url.path,
                  exc_info=e)
        return _error_response(ApiError(500, f"internal error (reference {ref}); the server "
                                             f"log has the details", type="api_error"))


def _casewise_error(e: CasewiseError) -> ApiError:
    """An agent error during a request: the client's input (422) or the model server (502)."""
    if isinstance(e, UsageError):
        return ApiError(422, str(e), code="invalid_value")
    return ApiError(502, str(e), type="api_error", code="upstream_error")


# --- ASGI middleware ---------------------------------------------------------------------------


class _Limits:
    """Body-size limit and request metrics, as plain ASGI (no buffering of streamed answers)."""

    def __init__(self, app, *, max_body_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}
        limit = self.max_body_bytes
        too_large = ApiError(413, f"the request body exceeds {limit} bytes (--max-body-bytes)",
                             type="request_too_large")

        async def counted_send(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                await _error_response(too_large)(scope, receive, counted_send)
                return
            seen = 0

            async def limited_receive():
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > limit:  # chunked bodies have no Content-Length to check first
                        raise StarletteHTTPException(413, too_large.message)
                return message

            await self.app(scope, limited_receive, counted_send)
        finally:
            route = scope.get("route")
            path = route.path if route is not None else "unmatched"
            self.metrics.requests.labels(method=scope["method"], route=path,
                                         status=str(status["code"])).inc()
            self.metrics.latency.labels(route=path).observe(time.perf_counter() - start)


# --- the service -------------------------------------------------------------------------------


class _OneAtATime:
    """A chat backend whose calls run one at a time (a local model holds one CPU/GPU)."""

    def __init__(self, llm: ChatBackend) -> None:
        self.llm = llm
        self.name = llm.name
        self._lock = threading.Lock()

    def complete(self, messages: list[dict], **kwargs) -> str:
        with self._lock:
            return self.llm.complete(messages, **kwargs)

    def stream(self, messages: list[dict], **kwargs) -> Iterator[str]:
        # Held until the answer is complete or the stream is closed (client gone).
        with self._lock:
            yield from self.llm.stream(messages, **kwargs)


class Service:
    """The assistant, the feedback store and the server's bookkeeping, shared by all requests.

    Args:
        assistant: The assistant (its memory is the sessions' store).
        feedback: Where served answers and feedback go.
        keys: Accepted API keys (empty: no authentication, loopback only).
        config: Limits.
        model_name: Name of the chat backend, for /healthz.
        settings: The index settings, for /healthz.
    """

    def __init__(self, assistant: Assistant, feedback: FeedbackStore, keys: KeyRing,
                 config: ServeConfig, *, model_name: str, settings: Settings) -> None:
        self.assistant = assistant
        self.feedback = feedback
        self.keys = keys
        self.config = config
        self.model_name = model_name
        self.settings = settings
        self.limiter = RateLimiter(config.rate_limit)
        self.metrics = Metrics()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._sessions: weakref.WeakValueDictionary[str, threading.Lock] = (
            weakref.WeakValueDictionary())
        self._sessions_lock = threading.Lock()

    # Admission: a bounded number of questions in flight.
    def admit(self) -> None:
        """Count one more question in flight, or raise 503 when `max_pending` are."""
        with self._pending_lock:
            if self._pending >= self.config.max_pending:
                raise ApiError(503, f"the server is busy ({self._pending} questions in flight); "
                                    f"retry shortly", type="server_busy",
                               headers={"Retry-After": "2"})
            self._pending += 1

    def release(self) -> None:
        """One question in flight fewer."""
        with self._pending_lock:
            self._pending -= 1

    @contextlib.contextmanager
    def session(self, session_id: str | None):
        """Hold `session_id`'s lock: one turn of a conversation at a time."""
        if session_id is None:
            yield
            return
        with self._sessions_lock:
            lock = self._sessions.get(session_id)
            if lock is None:
                lock = self._sessions[session_id] = threading.Lock()
        with lock:
            yield

    def _served(self, answer, session_id: str | None, client: str) -> dict:
        result = answer.to_dict()
        result["session_id"] = session_id
        self.feedback.record_answer(result, session_id=session_id, client=client)
        self.metrics.answers.labels(mode=result["mode"]).inc()
        return result

    def ask(self, question: str, session_id: str | None, top_k: int | None, client: str) -> dict:
        """Answer one question (blocking: run it in a worker thread).

        Raises:
            ApiError: 503 when `max_pending` questions are in flight already.
        """
        # Admitted here, in the thread that releases it: nothing can cancel in between.
        self.admit()
        try:
            with self.session(session_id):
                answer = self.assistant.ask(question, thread_id=session_id, top_k=top_k)
            return self._served(answer, session_id, client)
        finally:
            self.release()

    def produce(self, question: str, session_id: str | None, top_k: int | None, client: str,
                emit: Callable[[tuple[str, Any]], None], cancelled: threading.Event) -> None:
        """Stream one answer to `emit` as `("token", text)`..., then `("answer", dict)`.

        Runs in its own thread, all of it (LangGraph's generator must be resumed in the
        context it started in); stops at the next token once `cancelled` is set. Failures
        are emitted as `("error", ApiError)`. Releases the admission its caller took (before
        starting the thread, so that a busy server answers 503 before the stream starts).
        """
        try:
            with self.session(session_id):
                # Drafts are streamed labelled as the model's draft (`token`); the verified
                # answer follows as its own event and replaces them.
                stream = self.assistant.stream(question, thread_id=session_id, top_k=top_k,
                                               drafts=True)
                try:
                    while True:
                        if cancelled.is_set():
                            return
                        try:
                            kind, text = next(stream)
                            if kind == "draft":
                                emit(("token", text))
                        except StopIteration as done:
                            answer = done.value
                            break
                finally:
                    stream.close()
            emit(("answer", self._served(answer, session_id, client)))
        except CasewiseError as e:
            emit(("error", _casewise_error(e)))
        except Exception as e:  # a bug: log it, tell the client only that it happened
            ref = uuid.uuid4().hex[:12]
            log.error("internal error %s while streaming", ref, exc_info=e)
            emit(("error", ApiError(500, f"internal error (reference {ref}); the server log "
                                         f"has the details", type="api_error")))
        finally:
            self.release()

    def history(self, session_id: str) -> list[dict]:
        """The saved turns of a session (404 when there are none)."""
        with self.session(session_id):
            messages = self.assistant.history(session_id)
        if not messages:
            raise ApiError(404, f"no conversation with session_id {session_id!r}",
                           type="not_found_error", param="session_id")
        return messages

    def forget(self, session_id: str) -> int:
        """Delete a session; returns how many messages it had (404 when unknown)."""
        with self.session(session_id):
            messages = self.assistant.history(session_id)
            if not messages:
                raise ApiError(404, f"no conversation with session_id {session_id!r}",
                               type="not_found_error", param="session_id")
            self.assistant.forget(session_id)
        return len(messages)

    def health(self) -> tuple[int, dict]:
        """`(status code, body)` of /healthz: index present and readable, model loaded."""
        index = {"home": str(self.settings.home), "present": self.settings.manifest_path.exists()}
        try:
            index["chunks"] = self.assistant.context.searcher.store.count()
        except CasewiseError as e:
            index["error"] = str(e)
        ok = index["present"] and bool(index.get("chunks"))
        body = {"status": "ok" if ok else "unavailable", "index": index,
                "model": {"name": self.model_name, "loaded": True}}
        return (200 if ok else 503), body

    def close(self) -> None:
        """Close the databases."""
        self.assistant.close()
        self.feedback.close()


# --- request and response shapes ---------------------------------------------------------------


class AskRequest(BaseModel):
    """`POST /v1/ask` and `/v1/ask/stream`."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(description="The question, as a support agent or customer wrote it.")
    session_id: str | None = Field(
        None, pattern=SESSION_PATTERN,
        description="Conversation id (e.g. the ticket id): earlier turns resolve follow-ups. "
                    "Omit for a one-off question (nothing saved).")
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K,
                              description="Passages retrieved per search (default: --top-k).")


class FeedbackRequest(BaseModel):
    """`POST /v1/feedback`."""

    model_config = ConfigDict(extra="forbid")
    answer_id: str = Field(min_length=1, max_length=64,
                           description="The answer_id of an answer this server gave.")
    rating: Literal["up", "down"]
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)
    corrected_answer: str | None = Field(
        None, description="The answer the support agent would have given; exported as "
                          "training and evaluation data.")


class ChatMessage(BaseModel):
    """One OpenAI chat message; `content` is text or a list of parts."""

    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[dict] | None = None


class ChatRequest(BaseModel):
    """`POST /v1/chat/completions` (OpenAI's fields; sampling options are ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    session_id: str | None = Field(
        None, pattern=SESSION_PATTERN,
        description="casewise extension (`extra_body`): conversation memory on the server.")


def _question(text: str, limit: int, field: str = "question") -> str:
    text = text.strip()
    if not text:
        raise ApiError(422, f"{field}: must not be empty", param=field, code="invalid_value")
    if len(text) > limit:
        raise ApiError(422, f"{field}: {len(text)} characters; the limit is {limit} "
                            f"(--max-question-chars)", param=field, code="invalid_value")
    return text


def _chat_question(request: ChatRequest, limit: int) -> str:
    user = [m for m in request.messages if m.role == "user"]
    if not user:
        raise ApiError(422, "messages: no message with role 'user' to answer", param="messages")
    content = user[-1].content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, {"type": "image_url"...}]
        content = "\n".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    return _question(content or "", limit, "messages")


def _with_sources(answer: dict) -> str:
    """The answer text with its citations appended, as a chat front end shows it."""
    labels = []
    for c in answer["citations"]:
        label = Path(c["source"]).name + (f" p.{c['page']}" if c.get("page") else "")
        labels.append(f"[{label}]")
    if not labels:
        return answer["answer"]
    return f"{answer['answer']}\n\nSources: {'; '.join(labels)}"


# --- the app -----------------------------------------------------------------------------------


def create_app(service: Service) -> FastAPI:
    """The FastAPI app serving `service` (handy for tests: any backend, no uvicorn).

    Args:
        service: What answers; the app closes it at shutdown.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(
        title="casewise",
        summary="The support assistant's REST API: answers from your documents with citations.",
        version="0.1.0", lifespan=lifespan,
    )
    app.state.service = service
    config = service.config
    _install_error_handlers(app)
    app.add_middleware(_Limits, max_body_bytes=config.max_body_bytes, metrics=service.metrics)
    bearer = HTTPBearer(auto_error=False, description="An API key from the server's key file "
                                                      "or CASEWISE_API_KEYS.")

    def caller(request: Request,
               credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
        """Authenticate the request and charge its rate limit; returns the client's name."""
        if len(service.keys):
            if credentials is None:
                raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'",
                               type="authentication_error", code="missing_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
            client = service.keys.identify(credentials.credentials)
            if client is None:
                raise ApiError(401, "invalid API key", type="authentication_error",
                               code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        else:
            client = f"local:{request.client.host if request.client else 'unknown'}"
        wait = service.limiter.check(client)
        if wait is not None:
            raise ApiError(429, f"rate limit of {config.rate_limit} requests per minute "
                                f"reached; retry in {math.ceil(wait)} s",
                           type="rate_limit_error", headers={"Retry-After": str(math.ceil(wait))})
        return client

    def events(question: str, session_id: str | None, top_k: int | None, client: str):
        """Start answering in a thread; return an async iterator of its events."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone (server shutting down)
                cancelled.set()

        service.admit()
        threading.Thread(target=service.produce, daemon=True, name="casewise-answer",
                         args=(question, session_id, top_k, client, emit, cancelled)).start()

        async def iterate():
            try:
                while True:
                    item = await queue.get()
                    yield item
                    if item[0] != "token":
                        return
            finally:  # client disconnected or done: stop generating
                cancelled.set()

        return iterate()

    @app.post("/v1/ask", tags=["ask"], summary="Answer a question")
    async def ask(body: AskRequest, client: str = Depends(caller)) -> dict:
        """The same object as `python -m agent ask --json`, plus `session_id`."""
        question = _question(body.question, config.max_question_chars)
        try:
            return await run_in_threadpool(service.ask, question, body.session_id, body.top_k,
                                           client)
        except CasewiseError as e:
            raise _casewise_error(e) from e

    # Not `response_class=EventSourceResponse`: FastAPI would then expect a generator
    # endpoint, whose checks could only fail after the 200 status has gone out.
    @app.post("/v1/ask/stream", tags=["ask"], responses=_SSE_DOC,
              summary="Answer a question, streamed as server-sent events")
    async def ask_stream(body: AskRequest, client: str = Depends(caller)) -> Response:
        """`event: token` with `{"text"}` as the model writes (its draft: reasoning, answer and
        sources before verification), then one `event: answer` with the `/v1/ask` object (the
        verified answer), or `event: error` with an error object."""
        # Checked before the response starts: a bad request still gets its 4xx status.
        question = _question(body.question, config.max_question_chars)
        stream = events(question, body.session_id, body.top_k, client)

        async def sse():
            async for kind, value in stream:
                if kind == "token":
                    yield ServerSentEvent(event="token", data={"text": value})
                elif kind == "answer":
                    yield ServerSentEvent(event="answer", data=value)
                else:
                    yield ServerSentEvent(event="error", data=error_body(
                        value.message, value.type, value.param, value.code))

        return EventSourceResponse(_encode(sse()))

    @app.get("/v1/sessions/{session_id}", tags=["sessions"], summary="A conversation's history")
    async def get_session(session_id: str = PathParam(pattern=SESSION_PATTERN),
                          client: str = Depends(caller)) -> dict:
        """The saved turns, oldest first: `{"role", "content", ...}` (user turns also carry
        `standalone`, the question as it was searched; assistant turns their citations)."""
        messages = await run_in_threadpool(service.history, session_id)
        return {"session_id": session_id, "messages": messages}

    @app.delete("/v1/sessions/{session_id}", tags=["sessions"], summary="Forget a conversation")
    async def delete_session(session_id: str = PathParam(pattern=SESSION_PATTERN),
                             client: str = Depends(caller)) -> dict:
        """Delete the conversation from memory (feedback already given is kept)."""
        count = await run_in_threadpool(service.forget, session_id)
        return {"session_id": session_id, "deleted": True, "messages": count}

    @app.post("/v1/feedback", tags=["feedback"], summary="Rate an answer")
    async def feedback(body: FeedbackRequest, client: str = Depends(caller)) -> dict:
        """Stored (committed) before the reply; export with `python -m agent feedback export`."""
        corrected = body.corrected_answer
        if corrected is not None and corrected.strip():
            corrected = _question(corrected, config.max_question_chars, "corrected_answer")
        try:
            row = await run_in_threadpool(
                service.feedback.add_feedback, body.answer_id, body.rating,
                comment=body.comment, corrected_answer=corrected, client=client)
        except UnknownAnswerError as e:
            raise ApiError(404, str(e), type="not_found_error", param="answer_id") from e
        service.metrics.feedback.labels(rating=body.rating).inc()
        return {"feedback_id": row, "answer_id": body.answer_id, "stored": True}

    @app.get("/v1/models", tags=["openai"], summary="OpenAI-compatible model list")
    async def models(client: str = Depends(caller)) -> dict:
        """One model, `casewise`."""
        return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model",
                                            "created": 0, "owned_by": "casewise"}]}

    @app.post("/v1/chat/completions", tags=["openai"], responses=_SSE_DOC,
              summary="OpenAI-compatible chat completions (model `casewise`)")
    async def chat(body: ChatRequest, client: str = Depends(caller)):
        """Answers the last user message (earlier turns count through `session_id` memory).

        The message text is the verified answer with a `Sources:` line; the extra top-level
        field `casewise` holds the whole `/v1/ask` object (citations, mode, claims). Streamed,
        the model's draft arrives as `delta.reasoning_content` and the verified answer as
        `delta.content`; the last chunk carries `casewise`.
        """
        if body.model != MODEL_NAME:
            raise ApiError(404, f"model {body.model!r} does not exist: this server serves "
                                f"{MODEL_NAME!r}", type="not_found_error", param="model",
                           code="model_not_found")
        question = _chat_question(body, config.max_question_chars)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if not body.stream:
            try:
                answer = await run_in_threadpool(service.ask, question, body.session_id, None,
                                                 client)
            except CasewiseError as e:
                raise _casewise_error(e) from e
            message = {"role": "assistant", "content": _with_sources(answer)}
            return {"id": completion_id, "object": "chat.completion", "created": created,
                    "model": MODEL_NAME,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "casewise": answer}
        stream = events(question, body.session_id, None, client)

        async def chunks():
            def chunk(delta: dict, finish: str | None = None, **extra) -> ServerSentEvent:
                return ServerSentEvent(data={
                    "id": completion_id, "object": "chat.completion.chunk", "created": created,
                    "model": MODEL_NAME,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    **extra})

            yield chunk({"role": "assistant", "content": ""})
            async for kind, value in stream:
                if kind == "token":
                    yield chunk({"reasoning_content": value})
                elif kind == "answer":
                    yield chunk({"content": _with_sources(value)})
                    yield chunk({}, "stop", casewise=value)
                else:  # the openai client raises APIError on a data line holding "error"
                    yield ServerSentEvent(data=error_body(value.message, value.type,
                                                          value.param, value.code))
            yield ServerSentEvent(raw_data="[DONE]")

        return EventSourceResponse(_encode(chunks()))

    @app.get("/healthz", tags=["operations"], summary="Index present, model loaded")
    async def healthz() -> Response:
        """200 with `status: ok` when the index has chunks and the model is loaded, else 503.
        No API key needed (for load balancers)."""
        code, body = await run_in_threadpool(service.health)
        return JSONResponse(body, status_code=code)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics(client: str = Depends(caller)) -> Response:
        """Requests by route and status, latency histogram, answers by mode, feedback."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _encode(events):
    """SSE bytes of `ServerSentEvent`s (responses built by hand, after checks that may fail)."""
    async for e in events:
        data = e.raw_data if e.raw_data is not None else json.dumps(e.data, ensure_ascii=False)
        yield format_sse_event(data_str=data, event=e.event)


# --- building and running ----------------------------------------------------------------------


def _test_backend() -> ChatBackend | None:
    target = os.environ.get(ENV_TEST_LLM)
    if not target:
        return None
    module, _, name = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"{ENV_TEST_LLM}={target!r} does not name module:callable ({e})") from e
    print(f"casewise: TEST BACKEND {target} ({ENV_TEST_LLM}): answers do not come from a model",
          file=sys.stderr, flush=True)
    return factory()


def build_service(args: argparse.Namespace, keys: KeyRing, config: ServeConfig) -> Service:
    """Open the index and memory, load the model and the feedback store (what a worker serves).

    Raises:
        CasewiseError: No index, a wrong model path, a damaged database, contradictory flags.
    """
    llm = _test_backend() or make_llm(args)
    if isinstance(llm, (LocalChatModel, LlamaCppChatModel)):
        llm.load()  # a wrong model or adapter path fails before the server listens
    served = llm if isinstance(llm, OpenAIChatModel) else _OneAtATime(llm)
    assistant = build_assistant(args, llm=served)
    settings = resolve_settings(args)
    try:
        feedback = FeedbackStore(settings.home / FEEDBACK_FILE)
    except CasewiseError:
        assistant.close()
        raise
    return Service(assistant, feedback, keys, config, model_name=llm.name, settings=settings)


def app_from_env() -> FastAPI:
    """The app of one worker process of `--workers N` (uvicorn imports this factory)."""
    args = argparse.Namespace(**json.loads(os.environ[_ENV_WORKER_ARGS]))
    keys = KeyRing(json.loads(os.environ[_ENV_WORKER_KEYS]))
    return create_app(build_service(args, keys, ServeConfig.from_args(args)))


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            raise CasewiseError(f"cannot listen on {host}:{port}: {e.strerror or e}; stop the "
                                f"other server or pick another --port") from e


def run_serve(args: argparse.Namespace) -> int:
    """`python -m agent serve`: check the flags and keys, build the service, serve until Ctrl-C.

    Raises:
        UsageError: Bad flags, an unreadable key file, no keys for a non-loopback host.
        CasewiseError: The index, model or stores cannot be opened; the port is taken.
    """
    import uvicorn

    if args.session:
        raise UsageError("--session applies to chat and ask; clients of the server send "
                         "session_id with each request")
    if args.new_key:
        if not args.api_keys:
            raise UsageError("--new-key NAME needs --api-keys FILE (where its hash is kept)")
        key = new_key(args.api_keys, args.new_key)
        print(f"API key {args.new_key!r} (shown once; its hash is in {args.api_keys}):")
        print(key)
        return 0
    config = ServeConfig.from_args(args)
    keys = KeyRing.load(args.api_keys, os.environ.get(ENV_API_KEYS))
    if not len(keys) and not is_loopback(config.host):
        raise UsageError(
            f"refusing to listen on {config.host} without API keys: anyone on the network could "
            f"use the assistant. Create a key (`python -m agent serve --api-keys keys.txt "
            f"--new-key helpdesk`) and pass --api-keys keys.txt, or set {ENV_API_KEYS}")
    _check_port(config.host, config.port)
    settings = resolve_settings(args)
    apply_reset_memory(args, settings)  # here, once, not again by each worker
    where = f"http://{config.host}:{config.port}"
    auth = f"{len(keys)} API key(s)" if len(keys) else "no API keys (loopback only)"
    if config.workers == 1:
        print("casewise: loading the index and the model ...", file=sys.stderr, flush=True)
        service = build_service(args, keys, config)
        print(f"casewise: serving {settings.home} with {service.model_name} on {where} "
              f"(docs at {where}/docs; {auth})", file=sys.stderr, flush=True)
        uvicorn.run(create_app(service), host=config.host, port=config.port,
                    log_level="warning", timeout_graceful_shutdown=10)
        return 0
    # Several workers: each process loads its own model through `app_from_env`. Check what
    # can be checked cheaply here so that a typo fails once, with one line, not per worker.
    from retrieval.search import read_manifest

    read_manifest(settings)
    make_llm(args)
    os.environ[_ENV_WORKER_ARGS] = json.dumps(vars(args))
    os.environ[_ENV_WORKER_KEYS] = json.dumps(keys.hashes)
    with tempfile.TemporaryDirectory(prefix="casewise-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        print(f"casewise: serving {settings.home} with {config.workers} workers on {where} "
              f"(docs at {where}/docs; {auth})", file=sys.stderr, flush=True)
        uvicorn.run("agent.serve:app_from_env", factory=True, host=config.host,
                    port=config.port, workers=config.workers, log_level="warning",
                    timeout_graceful_shutdown=10)
    return 0
