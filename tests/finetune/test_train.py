"""Training mechanics on tiny random models: LoRA/QLoRA gradients, the SFT run and its outputs,
resume, merge, and the clear errors of `python -m finetune train`."""

from __future__ import annotations

import json

import pytest
import torch

from finetune.data import DataConfig, build_dataset, dataset_stats, write_dataset
from finetune.train import TrainConfigError, main, merge_adapter, parse
from tests.finetune.conftest import KeywordSearcher, faq_rows_records, manual_chunks


@pytest.fixture
def data_dir(tmp_path):
    from finetune.data import FaqRow

    rows = [FaqRow(r["question"], r["answer"], i + 2, page=int(r["page"]))
            for i, r in enumerate(faq_rows_records())]
    ds = build_dataset(rows, KeywordSearcher(manual_chunks()),
                       DataConfig(k=2, eval_fraction=0.2, seed=0, max_passage_chars=200))
    out = tmp_path / "data"
    write_dataset(ds, out, dataset_stats(ds))
    return out


def train_argv(model_dir, data_dir, out, *extra):
    return [
        "--model_name_or_path", str(model_dir), "--train_file", str(data_dir / "train.jsonl"),
        "--output_dir", str(out), "--use_peft", "--lora_r", "8", "--lora_alpha", "16",
        "--use_cpu", "--max_length", "1024", "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "4", "--max_steps", "6", "--learning_rate", "0.005",
        "--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", "3",
        "--save_strategy", "steps", "--save_steps", "3", "--load_best_model_at_end",
        "--report_to", "none", "--gradient_checkpointing", "--disable_tqdm", "true",
        "--dataloader_num_workers", "0", "--seed", "0", *extra,
    ]


def memorisable_batch(vocab: int):
    torch.manual_seed(1)
    ids = torch.randint(0, vocab, (2, 24))
    return {"input_ids": ids, "labels": ids.clone()}


def test_lora_changes_adapter_not_base_and_loss_falls(tiny_llama):
    from peft import LoraConfig, get_peft_model

    # The random head (std 0.02) behind RMSNorm bounds the logits so that no adapter could
    # memorise anything; a larger head makes the batch learnable through the frozen base.
    tiny_llama.lm_head.weight.data *= 20
    base = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    model = get_peft_model(tiny_llama, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert lora_before and all("lora_" in n for n in lora_before)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = memorisable_batch(tiny_llama.config.vocab_size)
    losses = []
    for _ in range(30):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < 0.3 * losses[0]
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, lora_before[n]) or "lora_A" in n
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters()
               if "lora_B" in n)
    merged_free = model.get_base_model().state_dict()
    for k, v in base.items():
        key = next(m for m in merged_free if m.replace(".base_layer", "") == k)
        assert torch.equal(merged_free[key], v), k


@pytest.mark.parametrize("evaluate_first", [False, True])
def test_qlora_gradients_match_dense_reference(tiny_llama, tmp_path, evaluate_first):
    """LoRA gradients through NF4 (double-quantised) weights equal those through the same
    weights dequantised into a dense model: the quantised matmul path is differentiable and
    exact up to float error. `evaluate_first`: an eval-mode forward without grad (what every
    evaluation does) must not break it (bitsandbytes repacks NF4 weights for CPU inference
    there unless `keep_nf4_differentiable_on_cpu` turned that off)."""
    import bitsandbytes.functional as bnbf
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from finetune.train import keep_nf4_differentiable_on_cpu

    path = tmp_path / "base"
    tiny_llama.save_pretrained(path)
    q = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, quantization_config=(
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                           bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)))
    assert keep_nf4_differentiable_on_cpu(q) == 2 * 7  # q, k, v, o, gate, up, down per layer
    dense = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for mod, dmod in zip(q.modules(), dense.modules(), strict=True):
        if type(mod).__name__ == "Linear4bit":
            assert mod.weight.quant_state.nested  # double quantisation
            dmod.weight.data = bnbf.dequantize_4bit(mod.weight.data, mod.weight.quant_state).float()
    cfg = dict(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    torch.manual_seed(3)
    pq = get_peft_model(q, LoraConfig(**cfg))
    torch.manual_seed(3)
    pd = get_peft_model(dense, LoraConfig(**cfg))
    # lora_B starts at zero (no gradient for lora_A then): give both the same non-zero B.
    torch.manual_seed(4)
    for (n, p), (_, d) in zip(pq.named_parameters(), pd.named_parameters(), strict=True):
        if "lora_B" in n:
            p.data = torch.randn_like(p) * 0.05
            d.data = p.data.clone()
    batch = memorisable_batch(tiny_llama.config.vocab_size)
    if evaluate_first:
        pq.eval()
        with torch.no_grad():
            pq(input_ids=batch["input_ids"])
        pq.train()
    pq(**batch).loss.backward()
    pd(**batch).loss.backward()
    grads_q = {n: p.grad for n, p in pq.named_parameters() if p.requires_grad}
    grads_d = {n: p.grad for n, p in pd.named_parameters() if p.requires_grad}
    assert grads_q.keys() == grads_d.keys() and len(grads_q) == 2 * 14
    for n in grads_q:
        rel = (grads_q[n] - grads_d[n]).norm() / grads_d[n].norm().clamp_min(1e-12)
        assert rel < 1e-2, (n, rel.item())


def test_sft_run_writes_adapter_and_report(tiny_model_dir, data_dir, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    assert main(train_argv(tiny_model_dir, data_dir, out)) == 0
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
                 "training_config.yaml", "data_stats.json", "training_report.json",
                 "training_curves.png", "README.md", "casewise.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "training_report.json").read_text())
    assert report["global_step"] == 6
    assert len(report["eval_loss"]) == 2 and report["best_eval_loss"] is not None
    assert report["train_loss"][-1]["loss"] < report["train_loss"][0]["loss"]
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["train"]["examples"] > 0 and "builder" in stats
    assert "LoRA" in (out / "README.md").read_text()
    # The adapter reloads onto the untouched base and changes its output.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = base(ids).logits.clone()
        tuned = PeftModel.from_pretrained(base, out)(ids).logits
    assert not torch.allclose(before, tuned)
    assert "adapter written to" in capsys.readouterr().out


def test_lora_top_layers_adapts_only_the_last_layers(tiny_llama):
    from peft import get_peft_model
    from trl import ModelConfig

    from finetune.train import lora_config

    args = ModelConfig(use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules="all-linear")
    config = lora_config(args, tiny_llama, top_layers=1)
    assert config.layers_to_transform == [1]
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                          "up_proj", "down_proj"}
    model = get_peft_model(tiny_llama, config)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 7 and all(".layers.1." in n for n in trainable)
    # Every adapter of the adapted layer learns.
    batch = memorisable_batch(tiny_llama.config.vocab_size)
    model(**batch).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    # 0 and the layer count mean every layer (PEFT's own "all-linear" expansion).
    assert lora_config(args, tiny_llama, 0).layers_to_transform is None
    with pytest.raises(TrainConfigError, match="lora_top_layers: 3 is outside 0..2"):
        lora_config(args, tiny_llama, 3)


def test_resume_and_merge(tiny_model_dir, data_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from finetune.model import load_causal_lm

    out = tmp_path / "run"
    assert main(train_argv(tiny_model_dir, data_dir, out, "--max_steps", "3")) == 0
    assert (out / "checkpoint-3").is_dir()
    assert main(train_argv(tiny_model_dir, data_dir, out, "--resume_from_checkpoint", "auto")) == 0
    report = json.loads((out / "training_report.json").read_text())
    assert report["global_step"] == 6
    assert report["resumed_from"].endswith("checkpoint-3")
    assert [h["step"] for h in report["train_loss"]] == [1, 2, 3, 4, 5, 6]

    merged_dir = merge_adapter(str(out), str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    peft_model, _ = load_causal_lm(str(tiny_model_dir), adapter=str(out))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft_model(ids).logits, atol=1e-4)


def test_resume_without_checkpoint_is_clear(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(TrainConfigError, match="holds no checkpoint"):
        main(train_argv(tiny_model_dir, data_dir, tmp_path / "fresh",
                        "--resume_from_checkpoint", "auto"))


def test_empty_dataset(tiny_model_dir, data_dir, tmp_path):
    (data_dir / "train.jsonl").write_text("\n")
    with pytest.raises(TrainConfigError, match="has no examples"):
        main(train_argv(tiny_model_dir, data_dir, tmp_path / "o"))


def test_malformed_line(tiny_model_dir, data_dir, tmp_path):
    (data_dir / "train.jsonl").write_text('{"messages": []}\n')
    with pytest.raises(TrainConfigError, match=r"train.jsonl:1: the last message"):
        main(train_argv(tiny_model_dir, data_dir, tmp_path / "o"))


def test_sequence_longer_than_context(tiny_model_dir, data_dir, tmp_path):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    cfg["max_position_embeddings"] = 64
    (tiny_model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TrainConfigError, match=r"longer than the model's context \(64 tokens\)"):
        main(train_argv(tiny_model_dir, data_dir, tmp_path / "o"))


def test_sequence_longer_than_max_length(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(TrainConfigError, match=r"longer than max_length \(32\)"):
        main(train_argv(tiny_model_dir, data_dir, tmp_path / "o", "--max_length", "32"))


def test_gpu_config_without_gpu(monkeypatch, capsys):
    from finetune.cli import main as cli_main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = cli_main(["train", "--config", "configs/llama-3.1-8b-qlora.yaml"])
    assert code == 2
    assert "requires a CUDA GPU" in capsys.readouterr().err


def test_unknown_config_key(tmp_path, capsys):
    from finetune.cli import main as cli_main

    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: default\nuse_cpu: true\nlearning_rat: 0.1\n")
    assert cli_main(["train", "--config", str(bad)]) == 2
    assert "learning_rat" in capsys.readouterr().err


def test_early_stopping_needs_best_model(tiny_model_dir, data_dir, tmp_path):
    argv = [a for a in train_argv(tiny_model_dir, data_dir, tmp_path / "o")
            if a != "--load_best_model_at_end"]
    with pytest.raises(TrainConfigError, match="load_best_model_at_end"):
        main(argv)


def test_shipped_cpu_config_trains_a_whole_epoch_densely():
    data, sft, model_args, speed, _ = parse(["--config", "configs/smollm2-cpu.yaml"])
    # Measured fastest on CPU (bench/finetune_cpu.py): dense bf16 LoRA, no dropout masks.
    assert not model_args.load_in_4bit and model_args.dtype == "bfloat16"
    assert model_args.lora_dropout == 0.0
    # At least one epoch: no step cap below it, evaluated before training and to the end.
    assert sft.num_train_epochs >= 1 and sft.max_steps == -1
    assert sft.eval_on_start and sft.completion_only_loss and sft.load_best_model_at_end
    assert data.early_stopping_patience > 0 and data.max_eval_examples == 0
    # Trains on data built the way the agent prompts.
    assert data.train_file == "runs/data/emanual/train.jsonl"
    # Adapters on the upper half of the 30 layers: half the seconds per step (docs/finetune.md).
    assert data.lora_top_layers == 15


@pytest.mark.parametrize("name", ["configs/smollm2-gpu.yaml", "configs/llama-3.1-8b-qlora.yaml"])
def test_gpu_configs_keep_qlora(name):
    import yaml

    cfg = yaml.safe_load(open(name))
    # QLoRA (NF4 + double quantisation) stays the default on GPUs, as the design card says.
    assert cfg["load_in_4bit"] and cfg["use_bnb_nested_quant"] and cfg["bnb_4bit_quant_type"] == "nf4"
    assert cfg["require_gpu"] and cfg["early_stopping_patience"] > 0
    assert cfg["load_best_model_at_end"] and cfg["eval_strategy"] == "steps"


@pytest.mark.slow  # two processes, about a minute: the multi-GPU launch path, dry-run on CPU
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_multi_process_launch_dry_run_on_cpu(tiny_model_dir, data_dir, tmp_path, launcher):
    """The data-parallel launch, dry-run on CPU (gloo instead of NCCL).

    `accelerate launch --config_file configs/accelerate-multi-gpu.yaml --cpu` runs the config
    as written (one process: accelerate's CPU launcher starts one); `torchrun --nproc_per_node 2`
    runs two data-parallel ranks, the launch `accelerate` does on GPUs: each rank trains on its
    shard of every batch and rank 0 writes the adapter and the report.
    """
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "run"
    if launcher == "accelerate":
        prefix = ["-m", "accelerate.commands.launch", "--config_file",
                  str(REPO / "configs" / "accelerate-multi-gpu.yaml"), "--cpu",
                  "--num_processes", "1", "--mixed_precision", "no"]
        processes = 1
    else:
        prefix = ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
        processes = 2
    cmd = [sys.executable, *prefix, "-m", "finetune", "train",
           *train_argv(tiny_model_dir, data_dir, out, "--gradient_checkpointing", "false")]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "training_report.json").read_text())
    assert report["global_step"] == 6 and (out / "adapter_model.safetensors").is_file()
    # Each optimizer step consumes per_device_train_batch_size (2) x processes examples.
    steps_per_epoch = -(-report["train_examples"] // (2 * processes))
    assert report["epochs"] == pytest.approx(6 / steps_per_epoch, rel=1e-3)
