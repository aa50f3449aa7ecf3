"""CPU tests of the speed levers: flag parsing, CPU no-op, GPU config mapping, packing correctness."""

from __future__ import annotations

import pytest

from finetune.speed import (
    SpeedArgs,
    SpeedConfigError,
    configure_sft_config,
    per_example_losses,
    prepare_model,
)
from retrieval.errors import CasewiseError


def _parse(argv):
    from trl import ModelConfig, SFTConfig, TrlParser

    parser = TrlParser((SFTConfig, ModelConfig, SpeedArgs))
    return parser.parse_args_and_config(argv)


def _sft(**kw):
    from trl import SFTConfig

    return SFTConfig(output_dir="unused", report_to="none", use_cpu=True, **kw)


def test_defaults_turn_every_lever_but_compile_on():
    speed = SpeedArgs()
    assert speed.keep_bf16 and speed.use_liger and speed.use_padding_free
    assert speed.gradient_checkpointing_mode == "full"
    assert speed.micro_batch_size == 0 and not speed.use_compile


def test_no_flags_switch_levers_off_next_to_trl_configs():
    sft, _, speed = _parse([
        "--output_dir", "out", "--use_cpu", "--no_use_liger", "--no_use_padding_free",
        "--gradient_checkpointing_mode", "selective", "--micro_batch_size", "4", "--use_compile",
        "--checkpoint_every_n_layers", "2",
    ])
    assert not speed.use_liger and not speed.use_padding_free
    assert speed.gradient_checkpointing_mode == "selective"
    assert speed.micro_batch_size == 4 and speed.use_compile
    assert speed.checkpoint_every_n_layers == 2
    assert sft.output_dir == "out"


def test_yaml_config_sets_levers(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("output_dir: out\nuse_cpu: true\nuse_liger: false\ngradient_checkpointing_mode: 'off'\n")
    _, _, speed = _parse(["--config", str(cfg)])
    assert not speed.use_liger and speed.gradient_checkpointing_mode == "off"
    assert speed.use_padding_free


@pytest.mark.parametrize("kw", [{"gradient_checkpointing_mode": "some"}, {"micro_batch_size": -1},
                                {"checkpoint_every_n_layers": 0}, {"uncheckpointed_layers": -2},
                                {"padding_free_attention": "eager2"}])
def test_bad_values_are_user_errors_naming_the_field(kw):
    with pytest.raises(CasewiseError) as err:
        SpeedArgs(**kw)
    assert next(iter(kw)) in str(err.value)
    assert isinstance(err.value, SpeedConfigError)


def test_cpu_leaves_config_and_model_untouched(tiny_llama):
    sft = _sft(per_device_train_batch_size=2, gradient_accumulation_steps=4)
    before = sft.to_dict()
    speed = SpeedArgs(micro_batch_size=8, gradient_checkpointing_mode="off", use_compile=True)
    assert configure_sft_config(sft, speed, on_gpu=False) is sft
    assert sft.to_dict() == before
    forwards = {name: m.forward for name, m in tiny_llama.named_modules()}
    assert prepare_model(tiny_llama, speed, on_gpu=False) is tiny_llama
    assert {name: m.forward for name, m in tiny_llama.named_modules()} == forwards


def test_gpu_config_mapping():
    sft = _sft(per_device_train_batch_size=2, gradient_accumulation_steps=4)
    configure_sft_config(sft, SpeedArgs(gradient_checkpointing_mode="selective",
                                        checkpoint_every_n_layers=2, micro_batch_size=8),
                         on_gpu=True)
    assert sft.padding_free and sft.packing and sft.packing_strategy == "bfd"
    assert sft.gradient_checkpointing
    want = {"use_reentrant": False, "selective": True, "every_n_layers": 2}
    assert sft.gradient_checkpointing_kwargs == want == sft.activation_checkpointing_kwargs
    assert sft.activation_checkpointing
    assert (sft.per_device_train_batch_size, sft.gradient_accumulation_steps) == (8, 1)
    assert not sft.use_liger_kernel and not sft.torch_compile


def test_gpu_levers_off_leave_packing_and_disable_checkpointing():
    sft = _sft(gradient_checkpointing_kwargs={"selective": True})
    configure_sft_config(sft, SpeedArgs(use_padding_free=False, gradient_checkpointing_mode="off"),
                         on_gpu=True)
    assert not sft.padding_free and not sft.packing
    assert not sft.gradient_checkpointing and not sft.activation_checkpointing
    sft = _sft(gradient_checkpointing_kwargs={"selective": True})
    configure_sft_config(sft, SpeedArgs(), on_gpu=True)
    assert sft.activation_checkpointing_kwargs == {"use_reentrant": False}


def test_a_checkpoint_interval_below_one_says_how_to_turn_checkpointing_off():
    with pytest.raises(SpeedConfigError, match=r"^checkpoint_every_n_layers \(0\) must be at "
                       r"least 1 \(1 checkpoints every layer; use gradient_checkpointing_mode off"):
        SpeedArgs(checkpoint_every_n_layers=0)


def test_prepare_model_on_gpu_without_liger_says_how_to_fix(tiny_llama, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "liger_kernel", None)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)
    with pytest.raises(SpeedConfigError, match="--no_use_liger"):
        prepare_model(tiny_llama, SpeedArgs(), on_gpu=True)


def test_quantised_models_keep_bf16_on_gpu_only(tiny_llama):
    import torch

    keep = SpeedArgs(use_liger=False, padding_free_attention="keep")
    prepare_model(tiny_llama, keep, on_gpu=True)  # not quantised: full precision stays
    assert {p.dtype for p in tiny_llama.parameters()} == {torch.float32}
    tiny_llama.is_loaded_in_4bit = True  # what transformers' bitsandbytes loader sets
    prepare_model(tiny_llama, keep, on_gpu=False)
    assert {p.dtype for p in tiny_llama.parameters()} == {torch.float32}
    prepare_model(tiny_llama, SpeedArgs(use_liger=False, keep_bf16=False,
                                        padding_free_attention="keep"), on_gpu=True)
    assert {p.dtype for p in tiny_llama.parameters()} == {torch.float32}
    prepare_model(tiny_llama, keep, on_gpu=True)
    assert {p.dtype for p in tiny_llama.parameters()} == {torch.bfloat16}


def test_padding_free_switches_sdpa_to_the_packed_attention(tiny_llama):
    prepare_model(tiny_llama, SpeedArgs(use_liger=False, padding_free_attention="sdpa"),
                  on_gpu=True)
    assert tiny_llama.config._attn_implementation == "sdpa"
    tiny_llama.set_attn_implementation("eager")
    prepare_model(tiny_llama, SpeedArgs(use_liger=False, use_padding_free=False), on_gpu=True)
    assert tiny_llama.config._attn_implementation == "eager"


def test_selective_mode_wraps_checkpointing(tiny_llama):
    prepare_model(tiny_llama, SpeedArgs(use_liger=False, gradient_checkpointing_mode="selective",
                                        padding_free_attention="keep"), on_gpu=True)
    assert getattr(tiny_llama.gradient_checkpointing_enable, "_is_sac_wrapped", False)


def test_padding_free_packing_gives_the_same_per_example_loss(tiny_llama):
    import torch

    tiny_llama.eval()
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(1, 512, (n,), generator=g).tolist() for n in (17, 5, 30, 9)]
    unpacked = per_example_losses(tiny_llama, seqs, padding_free=False)
    packed = per_example_losses(tiny_llama, seqs, padding_free=True)
    assert packed == pytest.approx(unpacked, abs=1e-4)
    # The check is honest: the same row with continuous positions (examples see each other)
    # changes every example's loss but the first.
    row = torch.tensor([sum(seqs, [])])
    with torch.no_grad():
        logp = torch.log_softmax(tiny_llama(input_ids=row).logits[0, :-1].float(), dim=-1)
    nll = -logp.gather(-1, row[0, 1:].unsqueeze(-1)).squeeze(-1)
    starts = [0, 17, 22, 52]
    leaky = [nll[a:a + len(s) - 1].mean().item() for a, s in zip(starts, seqs)]
    assert leaky[0] == pytest.approx(unpacked[0], abs=1e-4)
    assert all(abs(x - y) > 1e-3 for x, y in zip(leaky[1:], unpacked[1:]))


def test_uncheckpointed_layers_survive_the_trainer_enabling_checkpointing(tiny_llama):
    from finetune.speed import enable_checkpointing

    speed = SpeedArgs(use_liger=False, uncheckpointed_layers=1, padding_free_attention="keep")
    prepare_model(tiny_llama, speed, on_gpu=True)
    # What the Trainer calls from `activation_checkpointing_kwargs`.
    tiny_llama.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert [layer.gradient_checkpointing for layer in tiny_llama.model.layers] == [True, False]
    enable_checkpointing(tiny_llama, speed)
    assert [layer.gradient_checkpointing for layer in tiny_llama.model.layers] == [True, False]


def _bench(*args):
    import subprocess
    import sys

    from tests.conftest import REPO

    return subprocess.run([sys.executable, "-m", "bench.qlora_gpu", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""})


def test_bench_help():
    proc = _bench("--help")
    assert proc.returncode == 0 and "--batches" in proc.stdout


def test_bench_without_a_gpu_says_so_and_exits_non_zero():
    proc = _bench("--steps", "1")
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr


def test_completion_head_loss_equals_the_full_logits_loss(tiny_llama):
    import torch

    from finetune.speed import completion_head_loss

    torch.manual_seed(0)
    ids = torch.randint(0, tiny_llama.config.vocab_size, (2, 20))
    labels = ids.clone()
    labels[:, :12] = -100  # the prompt
    labels[1, 18:] = -100  # padding of the shorter row
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    reference = tiny_llama(**inputs).loss  # transformers' shifted mean over labelled tokens
    loss, stats = completion_head_loss(tiny_llama, inputs)
    assert torch.allclose(loss, reference, atol=1e-5)
    assert stats["tokens"] == 8 + 6  # shifted: positions 12..19 of row 0, 12..17 of row 1
    # Normalised by the accumulated batch's count, as TRL's SFT loss is.
    half, _ = completion_head_loss(tiny_llama, inputs, num_items_in_batch=28)
    assert torch.allclose(half, reference * 14 / 28, atol=1e-5)
    # Gradients flow into the model from the answer positions.
    loss.backward()
    assert tiny_llama.lm_head.weight.grad is not None


def test_completion_head_trainer_matches_trl_eval_loss(tiny_model_dir, tmp_path, monkeypatch):
    """The CPU trainer's evaluation loss equals TRL's own (the fused, every-position head)."""
    import json

    import finetune.speed
    from finetune.train import main

    calls = []
    real = finetune.speed.completion_head_loss
    monkeypatch.setattr(finetune.speed, "completion_head_loss",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))

    rows = [{"messages": [{"role": "user", "content": f"Question {i} about the remote?"},
                          {"role": "assistant", "content": f"Answer {i}: press Home."}]}
            for i in range(6)]
    data = tmp_path / "d"
    data.mkdir()
    for name in ("train.jsonl", "eval.jsonl"):
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    losses = {}
    for flag in ([], ["--no_completion_head"]):
        out = tmp_path / ("default" if not flag else "trl")
        assert main(["--model_name_or_path", str(tiny_model_dir), "--train_file",
                     str(data / "train.jsonl"), "--output_dir", str(out), "--use_peft",
                     "--use_cpu", "--max_steps", "1", "--eval_strategy", "steps",
                     "--eval_steps", "1", "--eval_on_start", "true", "--report_to", "none",
                     "--save_strategy", "no", "--early_stopping_patience", "0",
                     "--per_device_eval_batch_size", "2", "--disable_tqdm", "true",
                     "--seed", "0", *flag]) == 0
        report = json.loads((out / "training_report.json").read_text())
        losses[out.name] = [e["loss"] for e in report["eval_loss"]]
        if not flag:  # the default CPU run computed every loss with the completion head
            assert len(calls) >= 3 and report["tokens_per_s"]
            calls.clear()
    assert not calls  # --no_completion_head: TRL's own loss
    assert losses["default"][0] == pytest.approx(losses["trl"][0], rel=1e-3)
