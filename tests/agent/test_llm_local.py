"""The local backends: which one `local_backend` picks, its fallback, and that both agree.

Agreement (integration), for both llama.cpp weights: `q4_1` runs the embedded Q4_1 GGUF with the
adapter as GGUF LoRA, `bf16` the same weights in bfloat16 with the adapter merged; transformers
runs them dequantised to float32 with the PEFT adapter. llama.cpp rounds activations to 8 bits
inside its Q4_1 matrix products and to bfloat16 in its BF16 ones, so none are bit-equal.
The stated tolerance: after the prompt, the log-probabilities of transformers' ten most likely
next tokens differ by less than 0.4 nats (measured up to 0.25); the shift the adapter causes in
the 50 most likely tokens points the same way (cosine > 0.85) and is about as large (0.7-1.4x) in
both engines, so a dropped or mis-scaled adapter fails; and where two greedy replies part, the
token llama.cpp chose scores within 0.5 nats of transformers' own choice under transformers (the
replies part only at near-ties, never by choosing what transformers finds unlikely).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

import agent.llm as llm_module
from agent.llm import (
    ENV_BACKEND,
    ENV_LLAMA_WEIGHTS,
    LlamaCppChatModel,
    LocalChatModel,
    chat_prompt,
    local_backend,
)
from retrieval.errors import UsageError
from tests.conftest import REPO


@pytest.fixture
def with_llama_cpp(monkeypatch):
    monkeypatch.setattr(llm_module, "llama_cpp_available", lambda: True)


@pytest.fixture
def without_llama_cpp(monkeypatch):
    monkeypatch.setattr(llm_module, "llama_cpp_available", lambda: False)


def _adapter(tmp_path, **config):
    path = tmp_path / "adapter"
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], **config}))
    return str(path)


def test_auto_takes_llama_cpp_for_the_embedded_model_when_installed(with_llama_cpp, tmp_path):
    llm = local_backend("default", adapter=_adapter(tmp_path), max_new_tokens=7)
    assert isinstance(llm, LlamaCppChatModel)
    assert llm.max_new_tokens == 7 and llm.adapter.endswith("adapter")
    assert "llama.cpp" in llm.name


def test_auto_falls_back_to_transformers_without_llama_cpp(without_llama_cpp, caplog):
    with caplog.at_level(logging.INFO, logger="agent.llm"):
        llm = local_backend("default")
    assert isinstance(llm, LocalChatModel)
    assert "llama-cpp-python is not installed" in caplog.text


def test_auto_falls_back_for_an_adapter_llama_cpp_cannot_apply(with_llama_cpp, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="agent.llm"):
        llm = local_backend("default", adapter=_adapter(tmp_path, use_dora=True))
    assert isinstance(llm, LocalChatModel) and "DoRA" in caplog.text


def test_auto_uses_transformers_for_a_hugging_face_model(with_llama_cpp, tmp_path):
    assert isinstance(local_backend("HuggingFaceTB/SmolLM2-360M-Instruct"), LocalChatModel)


def test_explicit_choices_and_the_environment_setting(with_llama_cpp, monkeypatch):
    assert isinstance(local_backend("default", backend="transformers"), LocalChatModel)
    monkeypatch.setenv(ENV_BACKEND, "transformers")
    assert isinstance(local_backend("default"), LocalChatModel)
    assert isinstance(local_backend("default", backend="llama.cpp"), LlamaCppChatModel)
    monkeypatch.setenv(ENV_BACKEND, "vllm")
    with pytest.raises(UsageError, match=f"{ENV_BACKEND} 'vllm'"):
        local_backend("default")


def test_llama_cpp_weights_follow_the_cpu_and_the_environment(monkeypatch):
    monkeypatch.setattr(llm_module, "cpu_has_bf16", lambda: True)
    assert LlamaCppChatModel("default").weights == "bf16"
    monkeypatch.setattr(llm_module, "cpu_has_bf16", lambda: False)
    assert LlamaCppChatModel("default").weights == "q4_1"  # emulated bfloat16 would be slower
    monkeypatch.setenv(ENV_LLAMA_WEIGHTS, "bf16")
    assert LlamaCppChatModel("default").weights == "bf16"
    assert LlamaCppChatModel("out/casewise.gguf").weights == "gguf"  # a file runs as it is
    monkeypatch.setenv(ENV_LLAMA_WEIGHTS, "q2")
    with pytest.raises(UsageError, match=f"{ENV_LLAMA_WEIGHTS} 'q2'"):
        LlamaCppChatModel("default")


def test_the_weights_are_part_of_the_model_name():
    # bench/answers.py caches replies by model name: one set of weights must not replay another's
    names = {LlamaCppChatModel("default", adapter="runs/a", weights=w).name
             for w in ("bf16", "q4_1")}
    assert len(names) == 2 and all(n.startswith("default+runs/a (llama.cpp") for n in names)
    assert LlamaCppChatModel("out/casewise.gguf").name == "out/casewise.gguf (llama.cpp)"


def test_the_merged_gguf_is_cached_per_adapter_content_and_quant(tmp_path, monkeypatch):
    from finetune.export import cached_dense_gguf

    monkeypatch.setenv("CASEWISE_CACHE", str(tmp_path / "cache"))
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"one")
    first = cached_dense_gguf(adapter, build=False)
    assert first.parent == tmp_path / "cache" / "gguf" and not first.exists()
    assert cached_dense_gguf(adapter, build=False) == first
    assert cached_dense_gguf(adapter, "q8_0", build=False) != first
    assert cached_dense_gguf(None, build=False) != first
    (adapter / "adapter_model.safetensors").write_bytes(b"two")  # retrained: merged again
    assert cached_dense_gguf(adapter, build=False) != first


def test_explicit_llama_cpp_that_cannot_run_is_a_usage_error(without_llama_cpp, tmp_path):
    with pytest.raises(UsageError, match="llama-cpp-python is not installed"):
        local_backend("default", backend="llama.cpp")
    with pytest.raises(UsageError, match="cannot run the GGUF file"):
        local_backend(str(tmp_path / "m.gguf"), backend="transformers")


def test_explicit_llama_cpp_for_a_hugging_face_model_is_a_usage_error(with_llama_cpp):
    with pytest.raises(UsageError, match="not a GGUF file"):
        local_backend("meta-llama/Llama-3.1-8B-Instruct", backend="llama.cpp")


def _agent(*args):
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          cwd=REPO)


def test_cli_backend_flag_rejects_bad_values_and_remote_combinations():
    out = _agent("ask", "q", "--backend", "onnx")
    assert out.returncode == 2 and "--backend" in out.stderr
    out = _agent("ask", "q", "--backend", "llama.cpp", "--llm-url", "http://127.0.0.1:9",
                 "--llm-model", "m")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: --backend chooses the local inference engine")


# --- integration: the embedded model through both backends -------------------------------------

PROMPTS = [
    "How do I reset the TV to its factory settings?",
    "The remote does not respond. What should I check?",
    "Can I connect headphones over Bluetooth?",
]
PASSAGE = ("Passage [1] (manual.pdf p.12, Reset): Open Settings > General > Reset, enter your "
           "PIN (0000 by default) and select Reset. The TV restarts with factory settings.")


def _messages(question):
    return [{"role": "system", "content": "Answer from the passages. Cite them."},
            {"role": "user", "content": f"{PASSAGE}\n\nQuestion: {question}"},
            {"role": "assistant", "content": "Reasoning:"}]


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory, embedded_model_path):
    """A random LoRA (r 8, all linear layers) on the embedded model, the same on every run."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_model_path)
    torch.manual_seed(0)  # PEFT draws lora_A from the global generator
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.06)
    path = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(path)
    return str(path)


def _penalised_logprobs(model, ids):
    """transformers' next-token log-probabilities after `ids`, with the repetition penalty."""
    import torch

    from agent.llm import REPETITION_PENALTY

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].clone()
    seen = torch.tensor(sorted(set(ids)))
    picked = logits[seen]
    logits[seen] = torch.where(picked < 0, picked * REPETITION_PENALTY, picked / REPETITION_PENALTY)
    return torch.log_softmax(logits, -1).numpy()


def _logprobs(model: LlamaCppChatModel, ids: list[int]):
    """llama.cpp's next-token log-probabilities after `ids`."""
    import llama_cpp
    import numpy as np

    model._llama.reset()
    model._llama.eval(ids)
    raw = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(model._llama.ctx, -1),
                                shape=(model._llama.n_vocab(),)).astype(np.float64)
    return raw - raw.max() - np.log(np.exp(raw - raw.max()).sum())


@pytest.mark.integration
@pytest.mark.parametrize("weights", ["bf16", "q4_1"])
def test_llama_cpp_and_transformers_agree_on_greedy_replies(random_adapter, weights):
    pytest.importorskip("llama_cpp")
    import numpy as np
    import torch

    fast = LlamaCppChatModel("default", adapter=random_adapter, max_new_tokens=24,
                             weights=weights)
    slow = LocalChatModel("default", adapter=random_adapter, max_new_tokens=24)
    base = LocalChatModel("default", max_new_tokens=24)
    plain_fast = LlamaCppChatModel("default", max_new_tokens=24, weights=weights)
    for model in (fast, slow, base, plain_fast):
        model.load()
    tok = slow._tokenizer
    for question in PROMPTS:
        messages = _messages(question)
        ids = tok(chat_prompt(tok, messages), add_special_tokens=False)["input_ids"]
        # Next-token distribution after the prompt.
        with torch.no_grad():
            ref = torch.log_softmax(slow._model(torch.tensor([ids])).logits[0, -1], -1).numpy()
            plain = torch.log_softmax(base._model(torch.tensor([ids])).logits[0, -1], -1).numpy()
        got = _logprobs(fast, ids)
        top = np.argsort(ref)[-10:]
        assert np.abs(got[top] - ref[top]).max() < 0.4, question
        # The two engines differ by about 0.2-0.3 nats with or without an adapter (Q4_1), so
        # closeness alone cannot show that the adapter is applied. Its effect can: the shift
        # of the log-probabilities it causes points the same way, and is about as large, in
        # both engines (measured: cosine 0.93-0.99, size ratio 0.94-1.12 at this adapter's scale;
        # at a third of it Q4_1's noise hides the shift).
        wide = np.argsort(ref)[-50:]
        shift_fast = got[wide] - _logprobs(plain_fast, ids)[wide]
        shift_slow = ref[wide] - plain[wide]
        size = np.linalg.norm(shift_fast) / np.linalg.norm(shift_slow)
        cosine = shift_fast @ shift_slow / np.linalg.norm(shift_fast) / np.linalg.norm(shift_slow)
        assert cosine > 0.85 and 0.7 < size < 1.4, (question, cosine, size)
        # Greedy replies: equal, or parted at a near-tie.
        a = list(fast._generate(messages, 24))
        with torch.no_grad():
            out = slow._model.generate(**slow._generate_kwargs(slow._inputs(messages), 24))
        b = [t for t in out[0, len(ids):].tolist() if t != tok.eos_token_id]
        assert a and b
        parted = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        if parted is not None:
            lp = _penalised_logprobs(slow._model, ids + b[:parted])
            assert lp[b[parted]] - lp[a[parted]] < 0.5, (question, parted)
        assert "".join(fast.stream(messages)) == fast.complete(messages)


@pytest.mark.integration
def test_llama_cpp_backend_streams_and_batches_the_embedded_model():
    pytest.importorskip("llama_cpp")
    llm = LlamaCppChatModel("default", max_new_tokens=12)
    conversations = [_messages(q) for q in PROMPTS]
    many = llm.complete_many(conversations)
    assert many == [llm.complete(m) for m in conversations]
    assert all(reply.strip() for reply in many)
    stream = llm.stream(conversations[0])
    first = next(stream)
    stream.close()  # stopping early frees the model for the next call
    assert first and llm.complete(conversations[0]).startswith(first)


@pytest.mark.integration
def test_count_tokens_is_the_models_tokenizer_and_the_estimate_is_near_it():
    """`Context.passage_tokens` counts with `count_tokens`; `estimate_tokens` stands in for a
    backend without one, so its characters-per-token must fit this model's tokenizer on prose
    passages (calibrated on the manual's: 3.7-3.8). Digit- and symbol-dense text runs denser
    (PASSAGE: about 2.8), where the estimate undercounts."""
    pytest.importorskip("llama_cpp")
    from finetune.format import estimate_tokens, format_passages, window_passages
    from retrieval.types import Chunk

    llm = LlamaCppChatModel("default", max_new_tokens=4)
    assert llm.count_tokens(PASSAGE) == len(llm._tokenizer(PASSAGE, add_special_tokens=False)
                                            ["input_ids"])
    prose = ("You can connect the television to a wireless network to watch online content. "
             "Make sure that the router is turned on and that the network name and password "
             "are ready before you begin. The television searches for available networks and "
             "shows them in a list, where you select your own network and enter the password. "
             "If the connection fails, move the router closer or restart both devices.")
    chunk = Chunk(id="x", text=prose, source="manual.pdf", page=12, section="Network settings",
                  chunk_index=0, doc_hash="h")
    block = format_passages(window_passages("connect to a wireless network", [chunk], 0))
    assert 0.8 <= estimate_tokens(block) / llm.count_tokens(block) <= 1.25


# Batched decoding (`complete_many`) against one-by-one decoding on the same llama.cpp weights.
# A step that decodes 16 sequences multiplies 16-row matrices where one sequence multiplies one
# row, and llama.cpp rounds those differently, so a long greedy reply may part from the
# one-by-one reply at a near-tie. The stated tolerance: equal, or parted where the one-by-one
# choice leads the batched one by less than BATCH_TIE_NATS under the one-sequence logits
# (bench/eval_speed.py --backend llama.cpp measured the gaps at its partings: docs/speed.md).
# Q4_1 rounds activations to 8 bits inside its matrix products, so its near-ties are wider
# (measured on an AMD EPYC: every reply parted, gaps -0.16 to +0.16; bf16: two partings, 0.03).
# A batch that dropped the adapter parts at tokens 0-6 with gaps up to 1.1-1.2 in both weights,
# so both tolerances still catch it.
BATCH_TIE_NATS = {"bf16": 0.1, "q4_1": 0.25}


@pytest.mark.integration
@pytest.mark.parametrize("weights", ["bf16", "q4_1"])
def test_llama_cpp_batched_replies_equal_one_by_one(random_adapter, weights):
    pytest.importorskip("llama_cpp")
    from bench.eval_speed import parting

    # q4_1 applies the adapter at run time (the batch context must apply it too), bf16 merges it.
    llm = LlamaCppChatModel("default", adapter=random_adapter, max_new_tokens=32,
                            weights=weights)
    conversations = [_messages(q) for q in PROMPTS] + [
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q}]
        for q in PROMPTS[:2]]
    one = [llm.complete(m) for m in conversations]
    for seqs in (16, 2):  # all together; in groups of two (three contexts' worth of groups)
        llm.batch_seqs = seqs
        many = llm.complete_many(conversations)
        assert len(many) == len(conversations) and all(r.strip() for r in many)
        for m, got, ref in zip(conversations, many, one, strict=True):
            if got != ref:
                where = parting(llm, m, got, ref, 32)
                assert where["gap_nats"] < BATCH_TIE_NATS[weights], (m[-1]["content"], where)
    # The context made for the first batch (one sequence per conversation) served the groups.
    assert llm._batch_shape[0] == len(conversations)


@pytest.mark.integration
def test_llama_cpp_batch_leaves_the_single_sequence_cache_alone():
    """After a batch, `complete` on the cached prefix gives exactly the reply it gave before."""
    pytest.importorskip("llama_cpp")
    llm = LlamaCppChatModel("default", max_new_tokens=32, weights="bf16")
    conversations = [_messages(q) for q in PROMPTS]
    # The single-sequence context keeps conversation 0's prompt cached: from here on each
    # `complete` of it evaluates only its last prompt token on the same cached prefix.
    llm.complete(conversations[0])
    before = {llm.complete(conversations[0]) for _ in range(2)}
    assert len(before) == 1
    llm.complete_many(conversations)
    assert {llm.complete(conversations[0]) for _ in range(2)} == before
