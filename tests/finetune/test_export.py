"""GGUF export and GGUF LoRA conversion, checked by loading the files in llama.cpp.

The tiny random Llama (2 layers, 64 dims, with the embedded tokenizer's vocabulary) makes the
layout checks fast: llama.cpp's logits for a token sequence must equal transformers' within
float16 rounding, which fails for a wrong tensor name, a missing q/k permutation or a wrong LoRA
scale. The embedded model's round trip (export, load, answer in the shared format) is an
integration test.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from finetune.export import (
    QUANTS,
    adapter_to_gguf_lora,
    cached_gguf_lora,
    export_gguf,
    lora_unsupported_reason,
    modelfile_text,
)
from retrieval.errors import UsageError
from tests.conftest import REPO

TOKENS = [1, 504, 3458, 314, 253, 1345, 30, 2, 17, 2003, 4711, 355, 42, 9, 871, 290]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, embedded_model_path):
    """A saved tiny random Llama (untied, GQA) carrying the embedded model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, rms_norm_eps=1e-5,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # random norms: a layout error in them shows up too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(embedded_model_path).save_pretrained(path)
    return path


def _make_adapter(base_dir, out, seed=1, scale=0.3, **extra):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **extra)
    peft_model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_adapter(tiny_dir, tmp_path_factory):
    return _make_adapter(tiny_dir, tmp_path_factory.mktemp("tiny-adapter"))


def _hf_logits(model_dir, adapter=None):
    import torch

    from finetune.model import load_causal_lm

    model, _ = load_causal_lm(str(model_dir), adapter=str(adapter) if adapter else None)
    with torch.no_grad():
        return model(torch.tensor([TOKENS])).logits[0].numpy()


def _llama_cpp_logits(gguf, lora=None):
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(gguf), lora_path=str(lora) if lora else None,
                          n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    llm.eval(TOKENS)
    return np.array(llm.scores[: len(TOKENS)])


def test_lora_support_check_names_what_llama_cpp_cannot_apply(tmp_path):
    def reason(**config):
        (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))
        return lora_unsupported_reason(tmp_path)

    assert reason(target_modules=["q_proj", "v_proj"]) is None
    assert reason(target_modules="all-linear") is None
    assert "DoRA" in reason(target_modules=["q_proj"], use_dora=True)
    assert "modules_to_save" in reason(target_modules=["q_proj"], modules_to_save=["lm_head"])
    assert "embed_tokens" in reason(target_modules=["q_proj", "embed_tokens"])


def test_f16_export_of_a_merged_adapter_computes_what_transformers_computes(
        tiny_dir, tiny_adapter, tmp_path):
    pytest.importorskip("llama_cpp")
    result = export_gguf(tmp_path / "tiny.gguf", adapter=str(tiny_adapter), base=str(tiny_dir),
                         quant="f16")
    assert result.gguf.is_file() and result.quant == "f16"
    expected = _hf_logits(tiny_dir, tiny_adapter)
    got = _llama_cpp_logits(result.gguf)
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.9
    # Without the adapter merged the logits differ clearly: the test can see an adapter.
    assert np.abs(_hf_logits(tiny_dir) - expected).max() > 0.1 * np.abs(expected).max()


def test_gguf_lora_applied_at_run_time_matches_the_peft_adapter(tiny_dir, tiny_adapter, tmp_path):
    pytest.importorskip("llama_cpp")
    base = export_gguf(tmp_path / "base.gguf", base=str(tiny_dir), quant="f16").gguf
    config = json.loads((tiny_dir / "config.json").read_text())
    lora = adapter_to_gguf_lora(tiny_adapter, tmp_path / "lora.gguf", config)
    expected = _hf_logits(tiny_dir, tiny_adapter)
    got = _llama_cpp_logits(base, lora)
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()


def test_bf16_stored_adapter_converts_to_the_same_gguf_lora(tiny_dir, tiny_adapter, tmp_path):
    import shutil

    import gguf
    import torch
    from safetensors.torch import load_file, save_file

    bf16 = shutil.copytree(tiny_adapter, tmp_path / "bf16")
    weights = load_file(str(bf16 / "adapter_model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()},
              str(bf16 / "adapter_model.safetensors"))
    config = json.loads((tiny_dir / "config.json").read_text())

    def tensors(adapter, name):
        reader = gguf.GGUFReader(str(adapter_to_gguf_lora(adapter, tmp_path / name, config)))
        return {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}

    expected, got = tensors(tiny_adapter, "fp32.gguf"), tensors(bf16, "bf16.gguf")
    assert got.keys() == expected.keys() and len(got) == 2 * 7 * 2  # a and b, 7 modules, 2 layers
    for name, values in expected.items():  # equal up to bf16 rounding (8 bits of mantissa)
        np.testing.assert_allclose(got[name], values, rtol=1e-2, atol=1e-2 * np.abs(values).max())


def test_rslora_scale_is_carried_into_the_gguf_alpha(tiny_dir, tmp_path):
    import gguf

    adapter = _make_adapter(tiny_dir, tmp_path / "rs", use_rslora=True)
    config = json.loads((tiny_dir / "config.json").read_text())
    path = adapter_to_gguf_lora(adapter, tmp_path / "rs.gguf", config)
    alpha = gguf.GGUFReader(str(path)).fields["adapter.lora.alpha"].contents()
    assert alpha == pytest.approx(8 * 2.0)  # alpha * sqrt(r): llama.cpp divides by r


def test_cached_lora_is_converted_once_and_again_after_retraining(tiny_dir, tmp_path):
    config = json.loads((tiny_dir / "config.json").read_text())
    adapter = _make_adapter(tiny_dir, tmp_path / "a", seed=1)
    first = cached_gguf_lora(adapter, config)
    mtime = first.stat().st_mtime_ns
    assert cached_gguf_lora(adapter, config) == first and first.stat().st_mtime_ns == mtime
    _make_adapter(tiny_dir, tmp_path / "a", seed=2)  # retrained into the same directory
    assert cached_gguf_lora(adapter, config) != first


def test_q8_0_export_loads_and_stays_close(tiny_dir, tmp_path):
    pytest.importorskip("llama_cpp")
    result = export_gguf(tmp_path / "q8.gguf", base=str(tiny_dir), quant="q8_0")
    f16 = export_gguf(tmp_path / "f16" / "f16.gguf", base=str(tiny_dir), quant="f16")
    assert result.gguf.stat().st_size < 0.7 * f16.gguf.stat().st_size
    expected = _hf_logits(tiny_dir)
    got = _llama_cpp_logits(result.gguf)
    assert np.abs(got - expected).max() < 0.1 * np.abs(expected).max()


def test_modelfile_carries_template_stops_and_greedy_decoding(embedded_model_path):
    from finetune.model import load_tokenizer

    text = modelfile_text("casewise.gguf", load_tokenizer(embedded_model_path))
    assert text.startswith("FROM ./casewise.gguf\n")
    assert "<|im_start|>{{ .Role }}" in text and "<|im_start|>assistant" in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert "PARAMETER temperature 0" in text and "PARAMETER repeat_penalty 1.1" in text


def test_bad_export_arguments_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="must end in .gguf"):
        export_gguf(tmp_path / "model.bin", quant="f16")
    with pytest.raises(UsageError, match="--quant"):
        export_gguf(tmp_path / "model.gguf", quant="q3")
    assert "q4_k_m" in QUANTS


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "finetune", *args], capture_output=True,
                          text=True, cwd=REPO)


def test_export_cli_help_has_examples():
    out = _cli("export", "--help")
    assert out.returncode == 0
    assert "python -m finetune export --gguf" in out.stdout and "ollama create" in out.stdout


def test_export_cli_bad_input_exits_2_with_one_line(tmp_path):
    out = _cli("export", "--gguf", str(tmp_path / "m.gguf"), "--adapter", str(tmp_path / "none"))
    assert out.returncode == 2
    assert out.stderr.startswith("error: adapter path") and "Traceback" not in out.stderr
    out = _cli("export", "--gguf", str(tmp_path / "m.gguf"), "--quant", "q3")
    assert out.returncode == 2


@pytest.mark.integration
def test_embedded_model_with_adapter_exports_loads_in_llama_cpp_and_answers(
        embedded_model_path, tmp_path):
    """The whole path a user takes: adapter -> q4_k_m GGUF -> llama.cpp -> shared format."""
    pytest.importorskip("llama_cpp")
    from agent.llm import LlamaCppChatModel
    from finetune.format import build_messages, parse_answer
    from retrieval.types import Chunk, Hit

    # A small random update: the exported model must stay a working chat model (the tiny-model
    # tests check with large updates that the adapter really is applied).
    adapter = _make_adapter(embedded_model_path, tmp_path / "adapter", seed=3, scale=0.02)
    out = _cli("export", "--gguf", str(tmp_path / "out" / "casewise.gguf"), "--adapter",
               str(adapter), "--quant", "q4_k_m")
    assert out.returncode == 0, out.stderr
    gguf = tmp_path / "out" / "casewise.gguf"
    assert 40 < gguf.stat().st_size / 2**20 < 200  # 4-5 bit weights, not f16 (270 MB)
    assert (tmp_path / "out" / "Modelfile").read_text().startswith("FROM ./casewise.gguf")
    chunk = Chunk(id="c1", text="To reset the TV, open Settings > Support > Self Diagnosis and "
                  "choose Reset. Enter your PIN (0000 by default).", source="manual.pdf", page=12,
                  section="Reset", chunk_index=0, doc_hash="h", type="doc")
    messages = build_messages("How do I reset the TV?", [Hit(chunk=chunk, score=1.0,
                                                                similarity=0.9)])
    messages.append({"role": "assistant", "content": "Reasoning:"})
    llm = LlamaCppChatModel(str(gguf), max_new_tokens=96)
    reply = "Reasoning:" + llm.complete(messages)
    parsed = parse_answer(reply)
    assert parsed.reasoning.strip()
    assert len(reply.split()) > 5
