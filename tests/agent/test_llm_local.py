"""The local backends: which one `local_backend` picks, its fallback, and that both agree.

Agreement (integration): llama.cpp runs the embedded Q4_1 GGUF with the adapter as GGUF LoRA;
transformers runs the same weights dequantised to float32 with the PEFT adapter. llama.cpp
rounds activations to 8 bits inside its quantised matrix products, so the two are not bit-equal.
The stated tolerance: after the prompt, the log-probabilities of transformers' ten most likely
next tokens differ by less than 0.25 nats; and where two greedy replies part, the token
llama.cpp chose scores within 0.5 nats of transformers' own choice under transformers (the
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
    """A mild random LoRA (r 8, all linear layers) on the embedded model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_model_path)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.004)
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


@pytest.mark.integration
def test_llama_cpp_and_transformers_agree_on_greedy_replies(random_adapter):
    pytest.importorskip("llama_cpp")
    import llama_cpp
    import numpy as np
    import torch

    fast = LlamaCppChatModel("default", adapter=random_adapter, max_new_tokens=24)
    slow = LocalChatModel("default", adapter=random_adapter, max_new_tokens=24)
    fast.load()
    slow.load()
    tok = slow._tokenizer
    for question in PROMPTS:
        messages = _messages(question)
        ids = tok(chat_prompt(tok, messages), add_special_tokens=False)["input_ids"]
        # Next-token distribution after the prompt.
        with torch.no_grad():
            ref = torch.log_softmax(slow._model(torch.tensor([ids])).logits[0, -1], -1).numpy()
        fast._llama.reset()
        fast._llama.eval(ids)
        raw = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(fast._llama.ctx, -1),
                                    shape=(ref.shape[0],)).astype(np.float64)
        got = raw - raw.max() - np.log(np.exp(raw - raw.max()).sum())
        top = np.argsort(ref)[-10:]
        assert np.abs(got[top] - ref[top]).max() < 0.25, question
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
