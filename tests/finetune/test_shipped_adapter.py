"""The adapter shipped in the repo (`adapters/smollm2-gpu/`) loads offline through both local
backends and is recorded as prompt format v2, so a fresh clone can run `--adapter
adapters/smollm2-gpu` (docs/finetune.md). Nothing here skips on the adapter: it is in the repo."""

from __future__ import annotations

import json

import pytest

from finetune.format import FORMAT_VERSION, adapter_format_warning
from tests.conftest import REPO

SHIPPED = REPO / "adapters" / "smollm2-gpu"


def test_shipped_adapter_is_complete_and_names_format_v2():
    for name in ("adapter_model.safetensors", "adapter_config.json", "casewise.json",
                 "training_report.json", "training_config.yaml", "data_stats.json"):
        assert (SHIPPED / name).is_file(), name
    meta = json.loads((SHIPPED / "casewise.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION == 2
    assert meta["base_model"] == "default"
    assert adapter_format_warning(SHIPPED) is None
    # trained on whole passages (`--passage-words 0`), as the docs say the shipped adapter is
    stats = json.loads((SHIPPED / "data_stats.json").read_text())
    assert stats["builder"]["config"]["passage_words"] == 0
    assert stats["builder"]["config"]["k"] == 3
    # the folder stays small enough for the repo
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) <= 12 * 2**20


def test_shipped_adapter_weights_are_bf16_and_trained():
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(SHIPPED / "adapter_model.safetensors"))
    assert weights and {w.dtype for w in weights.values()} == {torch.bfloat16}
    config = json.loads((SHIPPED / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16
    # PEFT initialises lora_B to zero: a trained adapter has moved every one of them
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and all(w.abs().max() > 0 for w in lora_b)


@pytest.mark.integration
def test_shipped_adapter_loads_with_transformers_and_peft_offline(monkeypatch):
    import torch

    from finetune.model import load_causal_lm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    model, tokenizer = load_causal_lm("default", adapter=str(SHIPPED))
    ids = tokenizer("Reset the TV", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        with_adapter = model(ids).logits[0, -1]
        with model.disable_adapter():
            without = model(ids).logits[0, -1]
    assert torch.isfinite(with_adapter).all()
    assert (with_adapter - without).abs().max() > 1e-3  # the adapter is applied


@pytest.mark.integration
def test_shipped_adapter_loads_in_llama_cpp_as_gguf_lora():
    pytest.importorskip("llama_cpp")  # the optional fast backend (Makefile: not fatal)
    from agent.llm import LlamaCppChatModel

    # Q4_1 base + the adapter converted to GGUF LoRA (the agent's other llama.cpp path, bf16
    # with the adapter merged, is what bench/answers.py measured; docs/finetune.md)
    llm = LlamaCppChatModel("default", adapter=str(SHIPPED), max_new_tokens=4, weights="q4_1")
    llm.load()
    assert llm._llama is not None
    reply = llm.complete([{"role": "user", "content": "How do I reset the TV?"}], max_new_tokens=4)
    assert isinstance(reply, str) and reply.strip()
