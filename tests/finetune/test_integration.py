"""Integration: a few real QLoRA steps of the embedded SmolLM2 on CPU, then the adapter reloads
through `load_causal_lm` and generates an answer in the shared format."""

from __future__ import annotations

import json

import pytest

from finetune.data import DataConfig, FaqRow, build_dataset, dataset_stats, write_dataset
from finetune.format import parse_answer
from finetune.model import generate_chat, load_causal_lm
from finetune.train import main
from tests.finetune.conftest import KeywordSearcher, manual_chunks


@pytest.mark.integration
@pytest.mark.slow  # 75 s on 2 cores, the longest test by 3x (make test-all): it keeps make test
# under 8 minutes; the tiny random Llama covers training, resume and reload in the default run
def test_embedded_model_trains_reloads_and_answers(embedded_model_path, tmp_path):
    # One short example repeated: a handful of steps are enough to imprint the format.
    row = FaqRow("How do I reset the TV to factory settings?",
                 "Go to Settings, General, Reset, and type the PIN 0000.", 2, page=10)
    ds = build_dataset([row] * 1, KeywordSearcher(manual_chunks()),
                       DataConfig(k=1, p_gold=1.0, refusal_share=0, eval_fraction=0,
                                  max_passage_chars=120))
    data = tmp_path / "data"
    ds.train = ds.train * 8
    ds.eval = ds.train[:2]
    write_dataset(ds, data, dataset_stats(ds))
    out = tmp_path / "run"
    code = main([
        "--model_name_or_path", "default", "--train_file", str(data / "train.jsonl"),
        "--output_dir", str(out), "--use_peft", "--lora_r", "8", "--lora_alpha", "16",
        "--load_in_4bit", "--use_bnb_nested_quant", "--dtype", "float32", "--use_cpu",
        "--max_length", "512", "--per_device_train_batch_size", "2", "--max_steps", "6",
        "--learning_rate", "0.003", "--logging_steps", "1", "--eval_strategy", "steps",
        "--eval_steps", "3", "--save_strategy", "steps", "--save_steps", "3",
        "--load_best_model_at_end", "--report_to", "none", "--gradient_checkpointing",
        "--cpu_threads", "1", "--disable_tqdm", "true", "--seed", "0",
    ])
    assert code == 0
    report = json.loads((out / "training_report.json").read_text())
    losses = [h["loss"] for h in report["train_loss"]]
    assert losses[-1] < losses[0]
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"

    model, tokenizer = load_causal_lm("default", adapter=str(out))
    assert type(model).__name__ == "PeftModelForCausalLM"
    text = generate_chat(model, tokenizer, ds.train[0].messages[:-1], max_new_tokens=60)
    parsed = parse_answer(text)
    # The shared format (v2): a reasoning naming the passage, the quoted sentence numbers and the
    # passage's citation.
    assert text.startswith("Reasoning:") and "Passage [1]" in parsed.reasoning, text
    assert parsed.quote and parsed.quote[0][0] == 1, text
    assert [c.label() for c in parsed.citations] == ["manual.pdf p.10"], text
    assert not parsed.abstained and not parsed.refused
