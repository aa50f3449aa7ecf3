"""LLM backends behind one small interface: local transformers, or an OpenAI-compatible server.

- `LocalChatModel`: the embedded SmolLM2 (or any causal LM id/path) through transformers, with an
  optional LoRA adapter; greedy decoding; tokens streamed with `TextIteratorStreamer`. The model
  is loaded on first use, so building an assistant (or printing `--help`) stays fast.
- `OpenAIChatModel`: any server speaking the OpenAI chat-completions API (vLLM, llama.cpp's
  `llama-server`, Ollama, ...). Connection failures and timeouts are retried with exponential
  backoff, then surface as one `CasewiseError` naming the URL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Protocol

from retrieval.errors import CasewiseError, UsageError

DEFAULT_MAX_NEW_TOKENS = 256


class ChatBackend(Protocol):
    """A chat model the agent can call.

    Attributes:
        name: Human-readable identity for reports (model id, adapter path, URL).

    A final `{"role": "assistant"}` message is a prefix of the reply: the backend continues it
    and returns only what follows it.
    """

    name: str

    def stream(self, messages: list[dict], *, max_new_tokens: int = 256) -> Iterator[str]:
        """Yield the reply to `messages` piece by piece (greedy decoding)."""
        ...

    def complete(self, messages: list[dict], *, max_new_tokens: int = 256) -> str:
        """Return the whole reply to `messages`."""
        ...


class ModelServerError(CasewiseError):
    """The OpenAI-compatible model server cannot be reached or answered with an error."""


class LocalChatModel:
    """A transformers causal LM (plus optional LoRA adapter) on this machine.

    Args:
        model: `"default"` (embedded SmolLM2-135M-Instruct), a local model directory or a hub id.
        adapter: Directory of a PEFT LoRA adapter trained on that base model, or `None`.
        max_new_tokens: Default cap on generated tokens per reply.
        device: Torch device (`"cpu"`, `"cuda"`).
    """

    def __init__(
        self,
        model: str = "default",
        adapter: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        device: str = "cpu",
    ) -> None:
        if max_new_tokens < 1:
            raise UsageError(f"max_new_tokens ({max_new_tokens}) must be at least 1")
        self.model_name = model
        self.adapter = adapter
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.name = f"{model}+{adapter}" if adapter else model
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load model and tokenizer now (otherwise done on the first call).

        Raises:
            ModelNotFoundError: Wrong model or adapter path, missing embedded package.
        """
        with self._lock:
            if self._model is None:
                from finetune.model import load_causal_lm

                self._model, self._tokenizer = load_causal_lm(
                    self.model_name, adapter=self.adapter, device=self.device
                )

    def _inputs(self, messages: list[dict]):
        self.load()
        prefilled = bool(messages) and messages[-1]["role"] == "assistant"
        return self._tokenizer.apply_chat_template(
            messages, add_generation_prompt=not prefilled, continue_final_message=prefilled,
            return_tensors="pt", return_dict=True,
        ).to(self.device)

    def _generate_kwargs(self, inputs, max_new_tokens: int | None) -> dict:
        tok = self._tokenizer
        return dict(
            **inputs,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            do_sample=False,
            # The small model loops on long passages; a mild penalty keeps greedy output usable.
            repetition_penalty=1.1,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )

    def complete(self, messages: list[dict], *, max_new_tokens: int | None = None) -> str:
        """Return the whole greedy reply to `messages`."""
        import torch

        inputs = self._inputs(messages)
        with torch.inference_mode():
            out = self._model.generate(**self._generate_kwargs(inputs, max_new_tokens))
        new = out[0, inputs["input_ids"].shape[1] :]
        return self._tokenizer.decode(new, skip_special_tokens=True)

    def stream(self, messages: list[dict], *, max_new_tokens: int | None = None) -> Iterator[str]:
        """Yield the greedy reply piece by piece as it is generated.

        Generation runs in a worker thread; closing the iterator early (Ctrl-C in the CLI) stops
        it at the next token through a stopping criterion.
        """
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        inputs = self._inputs(messages)
        streamer = TextIteratorStreamer(
            self._tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600
        )
        stop = threading.Event()

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                return stop.is_set()

        kwargs = self._generate_kwargs(inputs, max_new_tokens)
        kwargs.update(streamer=streamer, stopping_criteria=StoppingCriteriaList([_Stop()]))
        errors: list[BaseException] = []

        def work() -> None:
            try:
                with torch.inference_mode():
                    self._model.generate(**kwargs)
            except BaseException as e:  # re-raised in the consumer thread below
                errors.append(e)
                streamer.end()

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            stop.set()
            worker.join()
        if errors:
            raise errors[0]


class OpenAIChatModel:
    """Any OpenAI-compatible chat-completions server.

    Args:
        base_url: Server URL, e.g. `http://localhost:8000/v1` (vLLM), `http://localhost:11434/v1`
            (Ollama), `http://localhost:8080/v1` (llama.cpp). A URL without `/v1` gets it added.
        model: Model name the server knows (for vLLM with LoRA, the adapter's served name).
        timeout: Seconds per request before it counts as failed.
        retries: Extra attempts after a connection error, timeout or 5xx/429 answer.
        api_key: Sent as a bearer token; local servers ignore it.
        backoff: Seconds before the first retry; doubled for each further one.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        timeout: float = 60.0,
        retries: int = 2,
        api_key: str | None = None,
        backoff: float = 0.5,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise UsageError(f"base_url ({base_url!r}) must start with http:// or https://")
        if not model.strip():
            raise UsageError("model must not be empty: pass the name the server serves")
        if timeout <= 0:
            raise UsageError(f"timeout ({timeout}) must be positive")
        if retries < 0:
            raise UsageError(f"retries ({retries}) must be 0 or more")
        base_url = base_url.rstrip("/")
        if not base_url.endswith("/v1"):
            base_url += "/v1"
        self.base_url = base_url
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.name = f"{model}@{base_url}"
        import openai

        # Retries are ours (to give one clear error at the end), not the client's.
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "not-needed", timeout=timeout, max_retries=0
        )

    def _create(self, messages: list[dict], max_new_tokens: int, stream: bool):
        import openai

        # Servers differ in how (and whether) they continue a final assistant message, so the
        # prefix is not sent; the reply is cut to what follows it instead (`_after_prefix`).
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        retryable = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                     openai.InternalServerError)
        for attempt in range(self.retries + 1):
            try:
                return self._client.chat.completions.create(
                    model=self.model, messages=messages, max_tokens=max_new_tokens,
                    temperature=0.0, stream=stream,
                )
            except retryable as e:
                if attempt == self.retries:
                    raise ModelServerError(
                        f"cannot reach the model server at {self.base_url}: {_reason(e)} "
                        f"(after {self.retries + 1} attempts; check --llm-url and that the server "
                        f"is running)"
                    ) from e
                time.sleep(self.backoff * 2**attempt)
            except openai.APIStatusError as e:
                raise ModelServerError(
                    f"the model server at {self.base_url} refused the request: {_reason(e)} "
                    f"(check --llm-model {self.model!r})"
                ) from e
        raise AssertionError("unreachable")

    def complete(self, messages: list[dict], *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
        """Return the whole reply (temperature 0).

        Raises:
            ModelServerError: The server is unreachable after all retries, or rejected the call.
        """
        response = self._create(messages, max_new_tokens, stream=False)
        return _after_prefix(messages, response.choices[0].message.content or "")

    def stream(
        self, messages: list[dict], *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    ) -> Iterator[str]:
        """Yield the reply as the server streams it (server-sent events).

        Raises:
            ModelServerError: The server is unreachable after all retries, or the stream broke.
        """
        import openai

        response = self._create(messages, max_new_tokens, stream=True)
        prefix = _prefix(messages)
        head = ""  # held back until we know whether the reply repeats the prefix
        try:
            for event in response:
                if not (event.choices and event.choices[0].delta.content):
                    continue
                piece = event.choices[0].delta.content
                if prefix is None:
                    yield piece
                    continue
                head += piece
                if len(head.lstrip()) >= len(prefix) or not prefix.startswith(head.lstrip()):
                    yield _after_prefix(messages, head)
                    prefix = None
            if prefix is not None and head:
                yield _after_prefix(messages, head)
        except openai.APIError as e:
            raise ModelServerError(
                f"the model server at {self.base_url} broke off the answer: {_reason(e)}"
            ) from e
        finally:
            response.close()


def _prefix(messages: list[dict]) -> str | None:
    if messages and messages[-1]["role"] == "assistant":
        return messages[-1]["content"]
    return None


def _after_prefix(messages: list[dict], reply: str) -> str:
    """The reply as a continuation of the prefilled assistant message, if there is one."""
    prefix = _prefix(messages)
    if prefix and reply.lstrip().startswith(prefix):
        return reply.lstrip()[len(prefix):]
    return reply


def _reason(error: Exception) -> str:
    cause = error.__cause__ or error.__context__
    text = str(error)
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return text
