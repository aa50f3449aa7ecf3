"""LLM backends behind one small interface: llama.cpp or transformers locally, or an OpenAI server.

- `LlamaCppChatModel`: the embedded SmolLM2 GGUF (or any `.gguf` file) through llama.cpp
  (llama-cpp-python), with an optional PEFT LoRA adapter converted once to GGUF LoRA and applied
  at run time. Several times faster than transformers on a CPU (docs/speed.md), so it is the
  default wherever llama-cpp-python is installed (`make setup` builds it).
- `LocalChatModel`: the same model (or any causal LM id/path) through transformers, with an
  optional LoRA adapter. The fallback when llama.cpp is not installed, and the only local
  backend for Hugging Face models (e.g. Llama-3.1-8B on a GPU).
- `OpenAIChatModel`: any server speaking the OpenAI chat-completions API (vLLM, llama.cpp's
  `llama-server`, Ollama, ...). The `openai` client retries connection failures, timeouts, 429
  and 5xx answers with exponential backoff (honouring `Retry-After`); what still fails surfaces
  as one `CasewiseError` naming the URL.

`local_backend` chooses between the two local backends (`--backend` / `CASEWISE_LLM_BACKEND`:
`auto`, `llama.cpp`, `transformers`). Both decode greedily with the same repetition penalty
over the same chat-template token ids, so their answers agree up to float rounding (tested).
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from retrieval.errors import CasewiseError, ModelNotFoundError, UsageError, at_least

DEFAULT_MAX_NEW_TOKENS = 256
# The small model loops on long passages; a mild penalty keeps greedy output usable. Applied the
# transformers way by both local backends: every token of prompt and reply, once.
REPETITION_PENALTY = 1.1
BACKENDS = ("auto", "llama.cpp", "transformers")
ENV_BACKEND = "CASEWISE_LLM_BACKEND"
# Which weights llama.cpp runs for the embedded model: `bf16` (a dense bfloat16 GGUF with the
# adapter merged in, built once and cached: prompts are processed about twice as fast), `q4_1`
# (the shipped file, the adapter applied at run time: a third of the memory), `auto` (bf16 where
# the CPU has AVX-512 BF16, whose kernels make it fast; q4_1 elsewhere). Measured and not offered
# (docs/speed.md, eighth pass): q8_0 (decodes faster, first token no sooner) and 4-bit q4_0 /
# iq4_nl (sooner first token, but a second 4-bit rounding turns the adapter's answers into
# abstentions).
ENV_LLAMA_WEIGHTS = "CASEWISE_LLAMA_WEIGHTS"
LLAMA_WEIGHTS = ("auto", "bf16", "q4_1")
# Batched decoding (`LlamaCppChatModel.complete_many`): most sequences decoded together, and most
# KV cells their context may hold (each sequence gets prompt + reply, rounded up to 256). A cell of
# SmolLM2-135M costs 23 KB in f16 (30 layers x 3 KV heads x 64 x 2 x 2 bytes), so 32,768 cells
# are 0.75 GB; a batch that would need more is split into groups that fit.
BATCH_MAX_SEQS = 16
BATCH_MAX_CELLS = 32768
# A prefix shared by every prompt of a batch (the system prompt) is evaluated once and copied to
# the other sequences when it is at least this long; shorter ones are not worth the copy.
MIN_SHARED_PREFIX = 16


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (the `avx512_bf16` flag of /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512_bf16" in line for line in f)
    except OSError:
        return False

log = logging.getLogger(__name__)


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

    def complete_many(self, conversations: list[list[dict]], *,
                      max_new_tokens: int = 256) -> list[str]:
        """Return the replies to many conversations, in order, through the one loaded model."""
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
        at_least("max_new_tokens", max_new_tokens)
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

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in this model's vocabulary (the prompt's passage budget,
        `Context.passage_tokens`); loads the tokenizer on first use."""
        self.load()
        return token_count(self._tokenizer, text)

    def _inputs(self, messages: list[dict]):
        self.load()
        return self._tokenizer(self._inputs_text(messages), return_tensors="pt",
                               add_special_tokens=False).to(self.device)

    def _inputs_text(self, messages: list[dict]) -> str:
        return chat_prompt(self._tokenizer, messages)

    def _generate_kwargs(self, inputs, max_new_tokens: int | None) -> dict:
        tok = self._tokenizer
        return dict(
            **inputs,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            do_sample=False,
            repetition_penalty=REPETITION_PENALTY,
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

    def complete_many(self, conversations: list[list[dict]], *,
                      max_new_tokens: int | None = None, batch_size: int = 8) -> list[str]:
        """Greedy replies to many conversations, `batch_size` at a time in one `generate` call.

        Prompts are left-padded so that every row's reply starts at the same column.
        """
        import torch

        self.load()
        tok = self._tokenizer
        replies: list[str] = []
        for start in range(0, len(conversations), batch_size):
            batch = conversations[start:start + batch_size]
            texts = [self._inputs_text(m) for m in batch]
            side, tok.padding_side = tok.padding_side, "left"
            try:
                inputs = tok(texts, return_tensors="pt", padding=True,
                             add_special_tokens=False).to(self.device)
            finally:
                tok.padding_side = side
            with torch.inference_mode():
                out = self._model.generate(**self._generate_kwargs(inputs, max_new_tokens))
            width = inputs["input_ids"].shape[1]
            replies += tok.batch_decode(out[:, width:], skip_special_tokens=True)
        return replies

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


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The model's chat template applied to `messages`, as text.

    A final assistant message is continued (not closed), so the reply follows the prefix.
    """
    prefilled = bool(messages) and messages[-1]["role"] == "assistant"
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=not prefilled,
        continue_final_message=prefilled,
    )


def token_count(tokenizer, text: str) -> int:
    """Tokens of `text` under a Hugging Face tokenizer, special tokens left out."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def penalise(logits, seen):
    """Apply the transformers repetition penalty to `logits` in place, and return them.

    Args:
        logits: Next-token logits, one row (1-D) or one row per sequence (2-D numpy array).
        seen: Boolean array of the same shape: the tokens already in that prompt or reply.
    """
    import numpy as np

    picked = logits[seen]
    logits[seen] = np.where(picked < 0, picked * REPETITION_PENALTY, picked / REPETITION_PENALTY)
    return logits


def greedy_decode_many(prompts: list[list[int]], first_logits, step, *, limit: int, eos: int,
                       n_vocab: int) -> list[list[int]]:
    """Greedy reply ids of several sequences decoded in lockstep, as `_generate` decodes one.

    Each sequence's token is the argmax of its penalised logits (`penalise`, over its own prompt
    and reply); a sequence stops at `eos` (not included) or after `limit` tokens, and the
    others go on without it.

    Args:
        prompts: Each sequence's prompt ids (for the repetition penalty).
        first_logits: `(len(prompts), n_vocab)` next-token logits after each prompt.
        step: Called with `[(sequence index, token)]` for the sequences still decoding; returns
            their next-token logits after that token, one row each, in that order.
        limit: Most tokens per reply.
        eos: The end-of-sequence token id.
        n_vocab: Vocabulary size (the logits' width).
    """
    import numpy as np

    seen = np.zeros((len(prompts), n_vocab), dtype=bool)
    for seq, ids in enumerate(prompts):
        seen[seq, ids] = True
    replies: list[list[int]] = [[] for _ in prompts]
    active, logits = list(range(len(prompts))), first_logits
    while active:
        choices = penalise(logits, seen[active]).argmax(axis=1).tolist()
        fed = []
        for seq, token in zip(active, choices, strict=True):
            if token == eos:
                continue
            replies[seq].append(token)
            seen[seq, token] = True
            if len(replies[seq]) < limit:
                fed.append((seq, token))
        active = [seq for seq, _ in fed]
        if fed:
            logits = step(fed)
    return replies


def common_prefix_len(prompts: list[list[int]]) -> int:
    """How many leading token ids all `prompts` share."""
    shortest = min(len(p) for p in prompts)
    for i in range(shortest):
        if any(p[i] != prompts[0][i] for p in prompts[1:]):
            return i
    return shortest


def cells_per_seq(prompt_len: int, limit: int) -> int:
    """KV cells a sequence of a batch context gets: its prompt and reply, rounded up to 256."""
    return -(-(prompt_len + limit) // 256) * 256


def plan_groups(lengths: list[int], limit: int, *, max_seqs: int, max_cells: int
                ) -> list[list[int]]:
    """Split prompts (by token count) into consecutive groups that one batch context holds.

    A group has at most `max_seqs` prompts and `len(group) * cells_per_seq(longest, limit)`
    at most `max_cells` (a single prompt always makes a group).

    Returns:
        The prompts' indices, group by group, in order.
    """
    groups: list[list[int]] = []
    group: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        widest = max(longest, n)
        if group and (len(group) >= max_seqs
                      or (len(group) + 1) * cells_per_seq(widest, limit) > max_cells):
            groups.append(group)
            group, widest = [], n
        group.append(i)
        longest = widest
    if group:
        groups.append(group)
    return groups


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python is installed (checked without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCppChatModel:
    """A GGUF model (plus optional LoRA adapter) run by llama.cpp on this machine.

    The prompt is built and tokenised by the model's Hugging Face tokenizer (the same ids as
    `LocalChatModel`), evaluated by llama.cpp, and decoded greedily here with the transformers
    repetition penalty, so both local backends choose the same tokens up to float rounding.
    The KV cache of the longest common prefix with the previous call is kept, so the system
    prompt that every question shares is evaluated once per process. `complete_many` decodes
    its conversations together in a second context on the same weights.

    Args:
        model: `"default"` (the embedded SmolLM2-135M-Instruct GGUF) or a `.gguf` file (e.g. from
            `python -m finetune export --gguf`).
        adapter: PEFT LoRA adapter directory trained on that base model, or `None`; converted
            to GGUF LoRA once per adapter content (cached under the casewise cache).
        max_new_tokens: Default cap on generated tokens per reply.
        n_ctx: Context window in tokens (prompt plus reply).
        threads: CPU threads; default all cores this process may use.
        weights: For `"default"`: `bf16`, `q4_1` or `auto` (see `ENV_LLAMA_WEIGHTS`); `None`
            reads `CASEWISE_LLAMA_WEIGHTS`, else `auto`. A `.gguf` file runs as it is.
        batch_seqs: Most sequences `complete_many` decodes together (more run in groups).
        kv_unified: The batch context's KV cache as one buffer for all sequences (the shared
            prefix is then shared, not copied, but every sequence attends over all cells) instead
            of one stream per sequence; split measured as fast on short prompts (docs/speed.md).
    """

    def __init__(
        self,
        model: str = "default",
        adapter: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        n_ctx: int = 4096,
        threads: int | None = None,
        weights: str | None = None,
        batch_seqs: int = BATCH_MAX_SEQS,
        kv_unified: bool = False,
    ) -> None:
        at_least("max_new_tokens", max_new_tokens)
        at_least("batch_seqs", batch_seqs)
        source = "weights" if weights else ENV_LLAMA_WEIGHTS
        weights = (weights or os.environ.get(ENV_LLAMA_WEIGHTS) or "auto").strip().lower()
        if weights not in LLAMA_WEIGHTS:
            raise UsageError(f"{source} {weights!r}: choose one of {', '.join(LLAMA_WEIGHTS)}")
        if weights == "auto":
            weights = "bf16" if cpu_has_bf16() else "q4_1"
        self.weights = weights if model == "default" else "gguf"
        if model != "default" and not model.endswith(".gguf"):
            raise UsageError(
                f"the llama.cpp backend runs 'default' or a .gguf file, not {model!r}: export one "
                f"with `python -m finetune export --gguf OUT.gguf`, or use --backend transformers"
            )
        self.model_name = model
        self.adapter = adapter
        self.max_new_tokens = max_new_tokens
        self.n_ctx = n_ctx
        self.threads = threads or len(os.sched_getaffinity(0))
        # the weights are part of the name: replies cached by name (bench/answers.py) must not
        # pass from one set of weights to another
        self.name = (f"{model}+{adapter}" if adapter else model) + (
            f" (llama.cpp, {self.weights})" if model == "default" else " (llama.cpp)")
        self.batch_seqs = batch_seqs
        self.kv_unified = kv_unified
        self._llama = None
        self._tokenizer = None
        self._eos: int | None = None
        self._lock = threading.Lock()
        self._batch_ctx = None  # complete_many's context, made on first use
        self._batch_shape: tuple[int, int] | None = None

    def _paths(self) -> tuple[Path, str]:
        """The GGUF file and the directory of the matching Hugging Face tokenizer/config."""
        from finetune.model import embedded_gguf_path, resolve_base_model

        if self.model_name == "default":
            return embedded_gguf_path(), resolve_base_model("default")
        gguf = Path(self.model_name).expanduser()
        if not gguf.is_file():
            raise ModelNotFoundError(f"model file {self.model_name} does not exist")
        return gguf, str(gguf)

    def load(self) -> None:
        """Load the model, tokenizer and adapter now (otherwise done on the first call).

        Raises:
            ModelNotFoundError: Wrong model or adapter path, missing embedded package, or an
                adapter llama.cpp cannot apply.
        """
        with self._lock:
            if self._llama is not None:
                return
            import llama_cpp

            from finetune.model import check_adapter_dir, load_tokenizer

            gguf, tokenizer_dir = self._paths()
            if tokenizer_dir == str(gguf):
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            else:
                tokenizer = load_tokenizer(tokenizer_dir)
            lora = None
            if self.weights == "bf16":
                from finetune.export import cached_dense_gguf

                adapter = check_adapter_dir(self.adapter) if self.adapter is not None else None
                if not cached_dense_gguf(adapter, "bf16", build=False).is_file():
                    log.info("llama.cpp: building the bfloat16 GGUF of the embedded model%s "
                             "(once; cached)", " with the adapter merged" if adapter else "")
                try:
                    gguf = cached_dense_gguf(adapter, "bf16")
                except CasewiseError as e:  # UsageError and ExportError both
                    raise ModelNotFoundError(f"{e} (set {ENV_LLAMA_WEIGHTS}=q4_1 or use "
                                             "--backend transformers)") from e
            elif self.adapter is not None:
                lora = str(self._lora(check_adapter_dir(self.adapter), tokenizer_dir, gguf))
            try:
                self._llama = llama_cpp.Llama(
                    model_path=str(gguf), lora_path=lora, n_ctx=self.n_ctx, n_batch=512,
                    n_threads=self.threads, n_threads_batch=self.threads, verbose=False,
                )
            except (ValueError, RuntimeError) as e:
                raise ModelNotFoundError(f"llama.cpp cannot load {gguf}: {e}") from e
            self._tokenizer = tokenizer
            self._eos = tokenizer.eos_token_id

    @staticmethod
    def _lora(adapter: Path, model_dir: str, gguf: Path) -> Path:
        import json

        from finetune.export import cached_gguf_lora

        if model_dir == str(gguf):
            import gguf as gguf_py

            reader = gguf_py.GGUFReader(str(gguf))
            arch = reader.fields["general.architecture"].contents()
            field = lambda key: reader.fields[f"{arch}.{key}"].contents()  # noqa: E731
            config = {"model_type": arch, "num_hidden_layers": field("block_count"),
                      "num_attention_heads": field("attention.head_count"),
                      "num_key_value_heads": field("attention.head_count_kv"),
                      "hidden_size": field("embedding_length")}
        else:
            config = json.loads((Path(model_dir) / "config.json").read_text())
        try:
            return cached_gguf_lora(adapter, config)
        except UsageError as e:
            raise ModelNotFoundError(f"{e} (use --backend transformers)") from e

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in this model's vocabulary (the prompt's passage budget,
        `Context.passage_tokens`); loads the tokenizer on first use."""
        self.load()
        return token_count(self._tokenizer, text)

    def _prompt_ids(self, messages: list[dict], max_new_tokens: int) -> list[int]:
        ids = self._tokenizer(chat_prompt(self._tokenizer, messages),
                              add_special_tokens=False)["input_ids"]
        if len(ids) + max_new_tokens > self.n_ctx:
            raise CasewiseError(
                f"the prompt ({len(ids)} tokens) plus max_new_tokens ({max_new_tokens}) does not "
                f"fit the llama.cpp context of {self.n_ctx} tokens: retrieve fewer passages "
                f"(--top-k) or lower --max-new-tokens"
            )
        return ids

    def _generate(self, messages: list[dict], max_new_tokens: int | None) -> Iterator[int]:
        """Yield greedy token ids; the model lock is held until the generator finishes."""
        import llama_cpp
        import numpy as np

        self.load()
        limit = max_new_tokens or self.max_new_tokens
        ids = self._prompt_ids(messages, limit)
        llm = self._llama
        with self._lock:
            cached = llm.input_ids[:llm.n_tokens]
            # evaluate at least one token to get fresh logits
            keep = min(common_prefix_len([list(cached), ids]), len(ids) - 1)
            llm.n_tokens = keep  # eval() drops the KV cache past n_tokens itself
            llm.eval(ids[keep:])
            n_vocab = llm.n_vocab()
            seen = np.zeros(n_vocab, dtype=bool)
            seen[ids] = True
            for _ in range(limit):
                logits = np.ctypeslib.as_array(
                    llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)
                ).copy()
                token = int(np.argmax(penalise(logits, seen)))
                if token == self._eos:
                    return
                yield token
                seen[token] = True
                llm.eval([token])

    def complete(self, messages: list[dict], *, max_new_tokens: int | None = None) -> str:
        """Return the whole greedy reply to `messages`."""
        tokens = list(self._generate(messages, max_new_tokens))
        return self._tokenizer.decode(tokens, skip_special_tokens=True)

    def complete_many(self, conversations: list[list[dict]], *,
                      max_new_tokens: int | None = None) -> list[str]:
        """Greedy replies to many conversations, decoded together (one `llama_decode` a step).

        Decoding one token is memory-bound (every weight is read for it), so a step that
        decodes a token of each of N sequences costs little more than a step for one. The
        conversations get one sequence each in a second llama.cpp context on the same weights
        (`_batch_context`; the single-sequence context and its prefix cache are not touched):
        the prefix every prompt shares (the system prompt) is evaluated once and copied to the
        other sequences, the rest of each prompt is evaluated in packed batches, and then each
        step feeds one token of every unfinished sequence. Each sequence chooses its tokens as
        `complete` does (greedy, the same repetition penalty) and stops at EOS or after
        `max_new_tokens`. More conversations than fit one context (`BATCH_MAX_SEQS`,
        `BATCH_MAX_CELLS`) run in consecutive groups.
        """
        if len(conversations) <= 1:
            return [self.complete(m, max_new_tokens=max_new_tokens) for m in conversations]
        self.load()
        limit = max_new_tokens or self.max_new_tokens
        prompts = [self._prompt_ids(m, limit) for m in conversations]
        replies: list[list[int]] = [[] for _ in prompts]
        with self._lock:
            for group in plan_groups([len(p) for p in prompts], limit,
                                     max_seqs=self.batch_seqs, max_cells=BATCH_MAX_CELLS):
                tokens = self._decode_together([prompts[i] for i in group], limit)
                for i, reply in zip(group, tokens, strict=True):
                    replies[i] = reply
        return [self._tokenizer.decode(t, skip_special_tokens=True) for t in replies]

    def _batch_context(self, n_seqs: int, n_ctx_seq: int):
        """A context for `n_seqs` sequences of `n_ctx_seq` cells each (kept while it fits).

        Same weights, adapter and settings as the single-sequence context; its KV cache is
        `n_seqs * n_ctx_seq` cells (see `BATCH_MAX_CELLS` for the memory).
        """
        import llama_cpp
        from llama_cpp import _internals

        if self._batch_shape is not None and self._batch_shape[0] >= n_seqs \
                and self._batch_shape[1] >= n_ctx_seq:
            return self._batch_ctx.ctx
        if self._batch_ctx is not None:
            self._batch_ctx.close()
            self._batch_ctx = self._batch_shape = None
        llm = self._llama
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_seq_max = n_seqs
        params.n_ctx = n_seqs * n_ctx_seq
        params.kv_unified = self.kv_unified
        try:
            # llama-cpp-python's own context wrapper: it frees the context before the model.
            context = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        except ValueError as e:
            raise CasewiseError(f"llama.cpp cannot make a context for {n_seqs} sequences of "
                                f"{n_ctx_seq} tokens: {e}") from e
        if llm._lora_adapter is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(llm._lora_adapter)
            scales = (ctypes.c_float * 1)(llm.lora_scale)
            if llama_cpp.llama_set_adapters_lora(context.ctx, adapters, 1, scales):
                context.close()
                raise CasewiseError(f"llama.cpp cannot apply the adapter {self.adapter} to a "
                                    "batch context")
        self._batch_ctx, self._batch_shape = context, (n_seqs, n_ctx_seq)
        return context.ctx

    def _decode_together(self, prompts: list[list[int]], limit: int) -> list[list[int]]:
        """Greedy reply ids of `prompts`, one sequence each in one batch context."""
        import llama_cpp

        ctx = self._batch_context(len(prompts), cells_per_seq(max(map(len, prompts)), limit))
        memory = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_clear(memory, False)
        # At least the last token of every prompt is evaluated in its own sequence (its logits).
        shared = min(common_prefix_len(prompts), min(map(len, prompts)) - 1)
        if shared < MIN_SHARED_PREFIX:
            shared = 0
        batch = llama_cpp.llama_batch_init(self._llama.n_batch, 0, 1)
        try:
            feed = lambda entries: self._feed(ctx, batch, entries)  # noqa: E731
            if shared:
                feed([(0, pos, token, False) for pos, token in enumerate(prompts[0][:shared])])
                for seq in range(1, len(prompts)):
                    llama_cpp.llama_memory_seq_cp(memory, 0, seq, -1, -1)
            first = feed([(seq, pos, p[pos], pos == len(p) - 1)
                          for seq, p in enumerate(prompts) for pos in range(shared, len(p))])
            positions = [len(p) for p in prompts]

            def step(tokens: list[tuple[int, int]]):
                entries = [(seq, positions[seq], token, True) for seq, token in tokens]
                for seq, _ in tokens:
                    positions[seq] += 1
                return feed(entries)

            return greedy_decode_many(prompts, first, step, limit=limit, eos=self._eos,
                                      n_vocab=self._llama.n_vocab())
        finally:
            llama_cpp.llama_batch_free(batch)

    def _feed(self, ctx, batch, entries: list[tuple[int, int, int, bool]]):
        """Evaluate `(sequence, position, token, wants_logits)` entries, `n_batch` at a time.

        Returns:
            The next-token logits of the entries that want them, one row each, in order.
        """
        import llama_cpp
        import numpy as np

        n_vocab = self._llama.n_vocab()
        rows = []
        size = self._llama.n_batch
        for start in range(0, len(entries), size):
            chunk = entries[start:start + size]
            batch.n_tokens = len(chunk)
            for j, (seq, pos, token, wants) in enumerate(chunk):
                batch.token[j] = token
                batch.pos[j] = pos
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = seq
                batch.logits[j] = wants
            code = llama_cpp.llama_decode(ctx, batch)
            if code != 0:
                raise CasewiseError(f"llama.cpp could not decode a batch of {len(chunk)} tokens "
                                    f"(llama_decode returned {code})")
            rows += [np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, j),
                                           shape=(n_vocab,)).copy()
                     for j, entry in enumerate(chunk) if entry[3]]
        return np.stack(rows) if rows else np.empty((0, n_vocab), dtype=np.float32)

    def stream(self, messages: list[dict], *, max_new_tokens: int | None = None) -> Iterator[str]:
        """Yield the greedy reply piece by piece; closing the iterator stops generation."""
        tokens: list[int] = []
        emitted = ""
        for token in self._generate(messages, max_new_tokens):
            tokens.append(token)
            text = self._tokenizer.decode(tokens, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue  # half a multi-byte character: wait for the rest
            if len(text) > len(emitted):
                yield text[len(emitted):]
                emitted = text


def local_backend(
    model: str = "default",
    adapter: str | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    backend: str | None = None,
) -> LlamaCppChatModel | LocalChatModel:
    """The local chat backend for `model`: llama.cpp where it can run it, else transformers.

    Args:
        model: `"default"`, a `.gguf` file, a model directory or a hub id.
        adapter: PEFT LoRA adapter directory, or `None`.
        max_new_tokens: Default cap on generated tokens per reply.
        backend: `auto` (default; from `CASEWISE_LLM_BACKEND` when unset), `llama.cpp` or
            `transformers`. `auto` takes llama.cpp for `"default"` and `.gguf` files when
            llama-cpp-python is installed and the adapter is one llama.cpp can apply, and
            transformers otherwise (the reason is logged).

    Returns:
        An unloaded backend (`.load()` loads it; otherwise the first call does).

    Raises:
        UsageError: An unknown backend name, llama.cpp asked for but not installed or not able to
            run this model/adapter, a `.gguf` file asked of transformers.
    """
    choice = (backend or os.environ.get(ENV_BACKEND) or "auto").strip().lower()
    if choice not in BACKENDS:
        source = "--backend" if backend else ENV_BACKEND
        raise UsageError(f"{source} {choice!r}: choose one of {', '.join(BACKENDS)}")
    is_gguf = model.endswith(".gguf")
    if choice == "transformers":
        if is_gguf:
            raise UsageError(f"--backend transformers cannot run the GGUF file {model}: use "
                             "--backend llama.cpp, or give a model directory")
        return LocalChatModel(model, adapter=adapter, max_new_tokens=max_new_tokens)
    reason = None
    if not llama_cpp_available():
        reason = "llama-cpp-python is not installed (`make setup` builds it)"
    elif not (is_gguf or model == "default"):
        reason = f"{model} is not a GGUF file (`python -m finetune export --gguf` makes one)"
    elif adapter is not None and Path(adapter, "adapter_config.json").is_file():
        from finetune.export import lora_unsupported_reason

        found = lora_unsupported_reason(adapter)
        reason = f"adapter {adapter}: {found}" if found else None
    if reason is None:
        return LlamaCppChatModel(model, adapter=adapter, max_new_tokens=max_new_tokens)
    if choice == "llama.cpp" or is_gguf:
        raise UsageError(f"the llama.cpp backend cannot be used: {reason}")
    log.info("using the transformers backend: %s", reason)
    return LocalChatModel(model, adapter=adapter, max_new_tokens=max_new_tokens)


class OpenAIChatModel:
    """Any OpenAI-compatible chat-completions server.

    Args:
        base_url: Server URL, e.g. `http://localhost:8000/v1` (vLLM), `http://localhost:11434/v1`
            (Ollama), `http://localhost:8080/v1` (llama.cpp). A URL without `/v1` gets it added.
        model: Model name the server knows (for vLLM with LoRA, the adapter's served name).
        timeout: Seconds per request before it counts as failed.
        retries: Extra attempts after a connection error, timeout or 408/409/429/5xx answer,
            made by the `openai` client with exponential backoff and jitter, honouring the
            server's `Retry-After`.
        api_key: Sent as a bearer token; local servers ignore it.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        timeout: float = 60.0,
        retries: int = 2,
        api_key: str | None = None,
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
        self.name = f"{model}@{base_url}"
        import openai

        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "not-needed", timeout=timeout,
            max_retries=retries,
        )

    def _create(self, messages: list[dict], max_new_tokens: int, stream: bool):
        import openai

        # Servers differ in how (and whether) they continue a final assistant message, so the
        # prefix is not sent; the reply is cut to what follows it instead (`_after_prefix`).
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        try:
            return self._client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_new_tokens,
                temperature=0.0, stream=stream,
            )
        except (openai.APIConnectionError, openai.RateLimitError,
                openai.InternalServerError) as e:  # what the client retried, still failing
            raise ModelServerError(
                f"cannot reach the model server at {self.base_url}: {_reason(e)} "
                f"(after {self.retries + 1} attempts; check --llm-url and that the server "
                f"is running)"
            ) from e
        except openai.APIStatusError as e:
            raise ModelServerError(
                f"the model server at {self.base_url} refused the request: {_reason(e)} "
                f"(check --llm-model {self.model!r})"
            ) from e

    def complete(self, messages: list[dict], *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
        """Return the whole reply (temperature 0).

        Raises:
            ModelServerError: The server is unreachable after all retries, or rejected the call.
        """
        response = self._create(messages, max_new_tokens, stream=False)
        return _after_prefix(messages, response.choices[0].message.content or "")

    def complete_many(self, conversations: list[list[dict]], *,
                      max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                      concurrency: int = 8) -> list[str]:
        """Replies to many conversations, `concurrency` requests in flight at a time.

        Servers such as vLLM and llama-server batch concurrent requests, so this is their
        batched generation. Raises `ModelServerError` as `complete` does.
        """
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(conversations)))) as pool:
            return list(pool.map(lambda m: self.complete(m, max_new_tokens=max_new_tokens),
                                 conversations))

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
