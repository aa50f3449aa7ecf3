"""python -m bench.qlora_gpu [--batches 2 8] [--steps 4] [--json PATH] [--smoke]

QLoRA training speed on one GPU: a Llama-3.1-8B-shaped model (the published architecture as a
`LlamaConfig`, random weights), NF4 double-quant, LoRA r=16 on every linear layer, sequence
length 2048, trained through

(a) the plain baseline: transformers + peft + bitsandbytes, sdpa, `prepare_model_for_kbit_training`
    (non-reentrant gradient checkpointing, fp32 norms/embeddings/head), bf16 autocast as the HF
    Trainer does with `bf16=True`, fused AdamW on the LoRA parameters; and
(b) casewise's path: the same model through `finetune.speed` (the functions `finetune.train`
    calls) and TRL's QLoRA recipe as `SFTTrainer` applies it (bf16 base and adapters, TRL's fused
    chunked LM head), one lever at a time (the ablation), in the same process and run.

Every configuration runs the same batches from the same LoRA initialisation, so the losses of the
first steps are comparable: the correctness guard checks them against the baseline's. A second
guard runs packed (padding-free) and unpacked forwards of the same examples through the 8B model.
A micro-benchmark times the NF4 matmul shapes of one layer (dequantise + cuBLAS vs bf16 alone):
the ceiling for any fused NF4 dequantise-matmul kernel at training batch sizes.

Prints a table and writes JSON to `bench/results/qlora_gpu.json` (and `--json PATH`).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from finetune.speed import (  # noqa: E402
    SpeedArgs,
    enable_checkpointing,
    per_example_losses,
    prepare_model,
)

SEQ = 2048
DEVICE = "cuda"
# `--cpu-dry-run`: the same code on a tiny model, to check it without a GPU.
TINY = dict(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
LORA_R = 16
LR = 1e-4
LOSS_RTOL = 2e-3  # the fast path's loss within 0.2% of the baseline's for the guarded steps
PACK_ATOL = 2e-2  # per-example loss, packed vs unpacked, bf16 forwards of different shapes
GUARD_STEPS = 3
RESULTS = REPO / "bench" / "results" / "qlora_gpu.json"

# Published Llama-3.1-8B architecture (meta-llama/Llama-3.1-8B config.json).
LLAMA31_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
    rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False, bos_token_id=128000,
    eos_token_id=128001, attention_bias=False, mlp_bias=False,
    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
)


@dataclass
class Recipe:
    """One configuration of the ablation."""

    name: str
    batch: int
    baseline: bool = False  # plain HF recipe: fp32 upcast + autocast + full logits
    fused_head: bool = True  # TRL's chunked LM head (SFTTrainer always adds it)
    speed: SpeedArgs = field(default_factory=lambda: SpeedArgs(use_liger=False))
    micro_batch: int = 0  # 0: the whole batch in one micro-batch
    lever: str = ""


def versions() -> dict:
    """Versions of everything that matters for the figures."""
    import bitsandbytes
    import peft
    import torch
    import transformers
    import trl

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "transformers": transformers.__version__,
           "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__,
           "trl": trl.__version__}
    try:
        from importlib.metadata import version

        out["liger_kernel"] = version("liger-kernel")
    except Exception:  # noqa: BLE001 - absent is a valid answer here
        out["liger_kernel"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = p.name
        out["gpu_mem_gib"] = round(p.total_memory / 2**30, 1)
    return out


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _mem(kind: str = "allocated") -> float:
    import torch

    if DEVICE != "cuda":
        return 0.0
    fn = torch.cuda.max_memory_allocated if kind == "allocated" else torch.cuda.max_memory_reserved
    return fn() / 2**30


def _free() -> None:
    import torch

    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def save_model(out: Path, tokenizer_dir: Path, n_layers: int | None = None) -> None:
    """Write the random bf16 8B-shaped model plus a chat tokenizer, for `python -m finetune train`.

    The tokenizer (any chat tokenizer, e.g. the embedded SmolLM2's: 49k ids, all below the
    8B vocab) only has to turn the training examples into ids; speed does not depend on it.
    """
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(LLAMA31_8B)
    if n_layers:
        cfg["num_hidden_layers"] = n_layers
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEVICE):
            model = LlamaForCausalLM(LlamaConfig(**cfg))
    finally:
        torch.set_default_dtype(old)
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, out / f.name)


def build_model(n_layers: int | None = None, seed: int = 0, tiny: bool = False):
    """The 8B architecture with random bf16 weights on the GPU, decoder linears quantised to NF4.

    Initialising on the GPU and quantising layer by layer takes seconds, where writing and
    loading an 8B checkpoint through `from_pretrained` would take minutes.
    """
    import bitsandbytes as bnb
    import torch
    from torch import nn
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(LLAMA31_8B, **(TINY if tiny else {}))
    if n_layers:
        cfg["num_hidden_layers"] = n_layers
    config = LlamaConfig(**cfg)
    config._attn_implementation = "sdpa"
    config.use_cache = False
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEVICE):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(old)
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, lin in list(parent.named_children()):
                if not isinstance(lin, nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False,
                                      compute_dtype=torch.bfloat16, compress_statistics=True,
                                      quant_type="nf4", device="meta")
                q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False,
                                             compress_statistics=True, quant_type="nf4",
                                             module=q)._quantize(lin.weight.device)
                setattr(parent, name, q)
    # What transformers' bitsandbytes quantizer sets, so peft picks its 4-bit LoRA layers.
    model.is_loaded_in_4bit = True
    model.config.use_cache = False
    model.requires_grad_(False)
    _free()
    _sync()
    return model


def make_batches(n: int, batch: int, vocab: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, SEQ), generator=g) for _ in range(n)]


def _attach(base, recipe: Recipe):
    """Prepare `base` for `recipe` and wrap it with LoRA; returns (peft model, optimizer)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if recipe.baseline:
        prepare_model_for_kbit_training(
            base, use_gradient_checkpointing=recipe.speed.gradient_checkpointing_mode != "off",
            gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        # keep_bf16 undoes a previous row's fp32 upcast, as it does after finetune.train's load.
        prepare_model(base, recipe.speed, on_gpu=True)
        enable_checkpointing(base, recipe.speed)
        if recipe.fused_head:
            from trl.trainer.utils import add_fused_lm_head

            add_fused_lm_head(base)
    torch.manual_seed(1234)  # identical LoRA init in every configuration
    lora = LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    if not recipe.baseline:
        # SFTTrainer keeps QLoRA adapters in bf16 (QLoRA paper, section 3).
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, fused=DEVICE == "cuda")
    return model, opt


def _detach(model, base) -> None:
    """Remove LoRA, hooks and patches that later configurations must not inherit."""
    model.unload()
    base.gradient_checkpointing_disable()
    base.disable_input_require_grads()
    # TRL's fused head and selective-checkpointing wrapper are instance attributes.
    for attr in ("forward", "gradient_checkpointing_enable", "peft_config"):
        base.__dict__.pop(attr, None)
    for layer in base.model.layers:
        layer._compiled_call_impl = None
    base.set_attn_implementation("sdpa")
    base.requires_grad_(False)


def _step(model, ids, recipe: Recipe) -> float:
    import torch

    micro = recipe.micro_batch or ids.shape[0]
    total = 0.0
    chunks = ids.split(micro)
    for chunk in chunks:
        chunk = chunk.to(DEVICE, non_blocking=True)
        if recipe.baseline:
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                loss = model(input_ids=chunk, labels=chunk, use_cache=False).loss
        else:
            kw = {"fused_lm_head": True} if recipe.fused_head else {}
            loss = model(input_ids=chunk, labels=chunk, use_cache=False, **kw).loss
        (loss / len(chunks)).backward()
        total += loss.detach().float()
    return total / len(chunks)


def run_recipe(base, recipe: Recipe, batches, warmup: int, steps: int) -> dict:
    """Train `steps` timed steps after `warmup`; tokens/s, peak memory and the first losses."""
    import torch

    _free()
    out = {**{k: v for k, v in asdict(recipe).items() if k != "speed"},
           "speed": asdict(recipe.speed)}
    model = None
    try:
        model, opt = _attach(base, recipe)
        losses, times = [], []
        for i in range(warmup + steps):
            _sync()
            t0 = time.perf_counter()
            loss = _step(model, batches[i % len(batches)], recipe)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss)
            _sync()
            times.append(time.perf_counter() - t0)
        timed = times[warmup:]
        tokens = recipe.batch * SEQ
        out.update(
            status="ok", step_s=sum(timed) / len(timed), step_s_all=[round(t, 3) for t in times],
            tokens_per_s=tokens * len(timed) / sum(timed),
            peak_gib=_mem(), reserved_gib=_mem("reserved"),
            losses=[float(x) for x in losses],
        )
    except torch.cuda.OutOfMemoryError:
        out.update(status="OOM", peak_gib=_mem())
    except Exception as e:  # noqa: BLE001 - one failing lever must not lose the others' figures
        out.update(status=f"error: {type(e).__name__}: {e}"[:400],
                   traceback=traceback.format_exc()[-2000:])
    finally:
        if model is not None:
            _detach(model, base)
        del model
        _free()
    return out


def packing_guard(base, vocab: int) -> dict:
    """Per-example loss of packed vs unpacked examples through the fast-path model."""
    import torch

    base.eval()
    g = torch.Generator().manual_seed(7)
    lengths = (300, 1100, 48, 600)
    seqs = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]
    unpacked = per_example_losses(base, seqs, padding_free=False)
    packed = per_example_losses(base, seqs, padding_free=True)
    base.train()
    diff = max(abs(a - b) for a, b in zip(packed, unpacked))
    return {"lengths": list(lengths), "unpacked": unpacked, "packed": packed,
            "max_abs_diff": diff, "atol": PACK_ATOL, "pass": diff <= PACK_ATOL}


def nf4_matmul_bench(tokens: int) -> list[dict]:
    """Time one layer's NF4 matmuls at training shape: dequantise+cuBLAS vs bf16 cuBLAS alone."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bf
    import torch
    from triton.testing import do_bench

    rows = []
    h, f, kv = 4096, 14336, 1024
    for name, (n, k) in {"q/o_proj": (h, h), "k/v_proj": (kv, h), "gate/up_proj": (f, h),
                         "down_proj": (h, f)}.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
        q, state = bf.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
        t_bf16 = do_bench(lambda: x @ w.t(), warmup=25, rep=100, return_mode="median")
        t_deq = do_bench(lambda: bf.dequantize_4bit(q, state), warmup=25, rep=100,
                         return_mode="median")
        t_nf4 = do_bench(lambda: bnb.matmul_4bit(x, q.t(), quant_state=state), warmup=25,
                         rep=100, return_mode="median")
        rows.append({"shape": name, "M": tokens, "N": n, "K": k, "bf16_ms": t_bf16,
                     "dequant_ms": t_deq, "nf4_matmul_ms": t_nf4,
                     "tflops_bf16": 2 * tokens * n * k / t_bf16 / 1e9,
                     "dequant_share": t_deq / t_nf4})
        del w, x, q, state
    return rows


def recipes(batches: list[int], smoke: bool) -> list[Recipe]:
    """The ablation, ordered so process-wide patches (Liger, RoPE) come after the runs without.

    Rows are full 2048-token sequences, so there is no padding to remove: padding-free packing is
    measured on variable-length data by the SFTTrainer runs, and here only its attention choice.
    """

    def s(**kw):
        return SpeedArgs(**{"use_padding_free": False, **kw})

    out = []
    small, big = min(batches), max(batches)
    for b in batches:
        out.append(Recipe("baseline", b, baseline=True, fused_head=False, lever="baseline"))
    for b in batches:
        out.append(Recipe("bf16 (TRL QLoRA dtypes)", b, fused_head=False,
                          speed=s(use_liger=False), lever="no fp32 upcast, bf16 adapters"))
        out.append(Recipe("+ TRL fused LM head", b, speed=s(use_liger=False),
                          lever="fused chunked LM head"))
    for b in batches:
        out.append(Recipe("+ Liger", b, speed=s(), lever="Liger RMSNorm/SwiGLU/RoPE"))
        if b == small:
            out.append(Recipe("+ flex attention", b, speed=s(use_padding_free=True),
                              lever="flex attention (the padding-free default) on full rows"))
            out.append(Recipe("+ selective ckpt (SAC)", b,
                              speed=s(gradient_checkpointing_mode="selective"),
                              lever="save attention outputs"))
        for k in (8, 12, 16, 24) if b == big else (8, 16, 24):
            out.append(Recipe(f"+ last {k} layers un-ckpt", b, speed=s(uncheckpointed_layers=k),
                              lever=f"{k} of 32 layers keep activations"))
        if b == small:
            out.append(Recipe("+ no checkpointing", b, speed=s(gradient_checkpointing_mode="off"),
                              lever="no checkpointing"))
    if big > 2:
        out.append(Recipe("+ micro-batch 4 (x2 accum)", big, speed=s(), micro_batch=4,
                          lever="micro-batch 4 at the same batch, on the best checkpointing"))
    if DEVICE == "cuda":
        out.append(Recipe("+ torch.compile layers", small, speed=s(use_compile=True),
                          lever="torch.compile per layer"))
        for b, k in ((small, 16), (big, 12)):
            out.append(Recipe(f"+ compile + last {k} un-ckpt", b,
                              speed=s(use_compile=True, uncheckpointed_layers=k),
                              lever="compile and un-checkpointed layers"))
    else:  # the dry run: no Triton, so no Liger
        for r in out:
            r.speed.use_liger = False
    return out


def trainer_run(base, speed: SpeedArgs, batch: int, steps: int, vocab: int) -> dict:
    """A short run through TRL's `SFTTrainer` with `finetune.speed`'s settings (issue 3's GPU run).

    Variable-length examples (256-2048 tokens at SEQ 2048) packed padding-free into rows of 2048, as
    `python -m finetune train` does on a GPU; tokens/s counts the real tokens the trainer saw.
    """
    import tempfile

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from finetune.speed import configure_sft_config

    class Timer(TrainerCallback):
        def __init__(self):
            self.t, self.tokens, self.t0, self.seen0 = [], [], 0.0, 0

        def on_step_begin(self, args, state, control, **kw):
            _sync()
            self.t0, self.seen0 = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kw):
            _sync()
            self.t.append(time.perf_counter() - self.t0)
            self.tokens.append(state.num_input_tokens_seen - self.seen0)

    g = torch.Generator().manual_seed(11)
    lengths = torch.randint(SEQ // 8, SEQ + 1, (batch * (steps + 2) * 3,), generator=g).tolist()
    ds = Dataset.from_dict({"input_ids": [torch.randint(3, vocab, (n,), generator=g).tolist()
                                          for n in lengths]})
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<unk>": 2},
                                                    unk_token="<unk>")),
        pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    out = {"batch": batch, "steps": steps, "speed": asdict(speed)}
    trainer = None
    _free()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sft = SFTConfig(output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps,
                            learning_rate=LR, lr_scheduler_type="constant", logging_steps=1,
                            report_to="none", save_strategy="no", bf16=DEVICE == "cuda",
                            use_cpu=DEVICE == "cpu", max_length=SEQ,
                            optim="adamw_torch_fused", include_num_input_tokens_seen="non_padding",
                            dataloader_num_workers=0)
            configure_sft_config(sft, speed, on_gpu=DEVICE == "cuda")
            prepare_model(base, speed, on_gpu=DEVICE == "cuda")
            lora = LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, lora_dropout=0.0,
                              target_modules="all-linear", task_type="CAUSAL_LM")
            timer = Timer()
            trainer = SFTTrainer(model=base, args=sft, train_dataset=ds, processing_class=tok,
                                 peft_config=lora, callbacks=[timer])
            trainer.train()
            t, n = timer.t[2:] or timer.t, timer.tokens[2:] or timer.tokens
            out.update(status="ok", step_s_all=[round(x, 3) for x in timer.t],
                       tokens_per_step=timer.tokens, tokens_per_s=sum(n) / sum(t),
                       peak_gib=_mem(), reserved_gib=_mem("reserved"),
                       losses=[h["loss"] for h in trainer.state.log_history if "loss" in h],
                       sft_config={k: getattr(sft, k) for k in (
                           "packing", "packing_strategy", "padding_free",
                           "activation_checkpointing", "activation_checkpointing_kwargs",
                           "per_device_train_batch_size") if hasattr(sft, k)})
    except Exception as e:  # noqa: BLE001 - report, keep the ablation's figures
        out.update(status=f"error: {type(e).__name__}: {e}"[:400],
                   traceback=traceback.format_exc()[-2000:])
    finally:
        if trainer is not None:
            trainer.model.unload()
            for attr in ("forward", "gradient_checkpointing_enable", "peft_config"):
                base.__dict__.pop(attr, None)
        del trainer
        _free()
    return out


def summarise(results: list[dict], batches: list[int]) -> dict:
    """Per batch: the baseline, the fastest fast-path configuration within its peak memory."""
    summary = {}
    for b in batches:
        rows = [r for r in results if r["batch"] == b and r.get("status") == "ok"]
        base = next((r for r in rows if r["baseline"]), None)
        if base is None:
            continue
        fits = [r for r in rows if not r["baseline"] and r["peak_gib"] <= base["peak_gib"]]
        best = max(fits, key=lambda r: r["tokens_per_s"], default=None)
        guard = []
        for r in rows:
            if r["baseline"] or r["micro_batch"]:
                continue
            n = min(GUARD_STEPS, len(r["losses"]), len(base["losses"]))
            diffs = [abs(a - c) / abs(c) for a, c in zip(r["losses"][:n], base["losses"][:n])]
            guard.append({"name": r["name"], "max_rel_diff": max(diffs),
                          "pass": max(diffs) <= LOSS_RTOL})
        summary[str(b)] = {
            "baseline_tokens_per_s": base["tokens_per_s"], "baseline_peak_gib": base["peak_gib"],
            "best": best and best["name"], "best_tokens_per_s": best and best["tokens_per_s"],
            "best_peak_gib": best and best["peak_gib"],
            "speedup": best and best["tokens_per_s"] / base["tokens_per_s"],
            "loss_guard": guard, "loss_rtol": LOSS_RTOL,
        }
    return summary


def table(results: list[dict]) -> str:
    """A plain-text table of every configuration."""
    base = {r["batch"]: r for r in results if r["baseline"] and r.get("status") == "ok"}
    lines = [f"{'config':32} {'batch':>5} {'tok/s':>8} {'x base':>7} {'peak GiB':>9} "
             f"{'s/step':>7}  loss[0:3]"]
    for r in results:
        if r.get("status") != "ok":
            lines.append(f"{r['name']:32} {r['batch']:>5} {r.get('status', '')[:60]}")
            continue
        b = base.get(r["batch"])
        ratio = r["tokens_per_s"] / b["tokens_per_s"] if b else math.nan
        name = r["name"] + (f" (mb {r['micro_batch']})" if r["micro_batch"] else "")
        lines.append(f"{name:32} {r['batch']:>5} {r['tokens_per_s']:>8.0f} {ratio:>6.2f}x "
                     f"{r['peak_gib']:>9.1f} {r['step_s']:>7.2f}  "
                     + " ".join(f"{x:.4f}" for x in r["losses"][:3]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the ablation, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--layers", type=int, default=None, help="fewer decoder layers (smoke)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these config names")
    parser.add_argument("--smoke", action="store_true",
                        help="4 layers, batch 2, 1+1 steps: checks every code path quickly")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--trainer-steps", type=int, default=5,
                        help="then a short SFTTrainer run with finetune.speed (0: skip)")
    parser.add_argument("--save-model", type=Path, default=None, metavar="DIR",
                        help="only write the random bf16 model and --tokenizer's files to DIR")
    parser.add_argument("--tokenizer", type=Path, default=None, metavar="DIR",
                        help="a chat tokenizer directory for --save-model")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="tiny model on CPU: checks the code, measures nothing")
    args = parser.parse_args(argv)

    import torch

    global DEVICE, SEQ
    if args.cpu_dry_run:
        DEVICE, SEQ = "cpu", 64
        args.layers, args.steps, args.warmup = 2, 1, 1
        args.batches, args.trainer_steps = [2, 4], 3
    elif not torch.cuda.is_available():
        print("qlora_gpu: no CUDA device: run this on an H100/H200", file=sys.stderr)
        return 2
    if args.save_model:
        if args.tokenizer is None or not (args.tokenizer / "tokenizer_config.json").is_file():
            print(f"qlora_gpu: --save-model needs --tokenizer DIR with tokenizer_config.json "
                  f"(got {args.tokenizer})", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        save_model(args.save_model, args.tokenizer, args.layers)
        print(f"saved to {args.save_model} in {time.perf_counter() - t0:.0f}s", flush=True)
        return 0
    if args.smoke:
        args.layers, args.batches, args.steps, args.warmup = args.layers or 4, [2], 1, 1
        args.trainer_steps = min(args.trainer_steps, 3)
    info = {"command": " ".join([sys.executable.split("/")[-1], "-m", "bench.qlora_gpu",
                                 *(argv if argv is not None else sys.argv[1:])]),
            "versions": versions(), "seq_len": SEQ, "lora_r": LORA_R, "lr": LR,
            "layers": args.layers or LLAMA31_8B["num_hidden_layers"],
            "warmup": args.warmup, "steps": args.steps}
    print(json.dumps(info["versions"]), flush=True)

    t0 = time.perf_counter()
    base = build_model(args.layers, tiny=args.cpu_dry_run)
    info["build_s"] = time.perf_counter() - t0
    info["model_gib"] = torch.cuda.memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0
    print(f"built in {info['build_s']:.1f}s, {info['model_gib']:.2f} GiB", flush=True)

    info["nf4_matmul"] = [] if args.cpu_dry_run else [
        row for b in args.batches for row in nf4_matmul_bench(b * SEQ)]
    for row in info["nf4_matmul"]:
        print(f"nf4 {row['shape']:13} M={row['M']} bf16 {row['bf16_ms']:.3f} ms, dequant "
              f"{row['dequant_ms']:.3f} ms, nf4 matmul {row['nf4_matmul_ms']:.3f} ms", flush=True)

    vocab = base.config.vocab_size
    data = {b: make_batches(args.warmup + args.steps, b, vocab, seed=b) for b in args.batches}
    results = []
    path = args.json or RESULTS
    if args.cpu_dry_run:
        path = args.json or Path("/tmp/qlora_gpu_dry.json")
    for recipe in recipes(args.batches, args.smoke):
        if args.only and recipe.name not in args.only and not recipe.baseline:
            continue
        if recipe.micro_batch:
            # The micro-batch lever on top of the best checkpointing choice measured so far.
            best = summarise(results, [recipe.batch]).get(str(recipe.batch), {}).get("best")
            recipe.speed.uncheckpointed_layers = next(
                (r["speed"]["uncheckpointed_layers"] for r in results
                 if r["name"] == best and r["batch"] == recipe.batch), 0)
        r = run_recipe(base, recipe, data[recipe.batch], args.warmup, args.steps)
        results.append(r)
        print(table([x for x in results if x["batch"] == r["batch"]]).splitlines()[-1],
              flush=True)
        if recipe.name == "+ Liger" and "packing" not in info:
            info["packing"] = packing_guard(base, vocab)
            print(f"packing guard: {info['packing']['max_abs_diff']:.4g}", flush=True)
        _write(info, results, args, path)
    info["summary"] = summarise(results, args.batches)
    _write(info, results, args, path)
    if args.trainer_steps:
        best = info["summary"].get(str(max(args.batches)), {}).get("best") or ""
        keep = next((r["speed"]["uncheckpointed_layers"] for r in results
                     if r["name"] == best and r["batch"] == max(args.batches)), 0)
        liger = DEVICE == "cuda"
        runs = {"padding-free, flex attention (casewise default)": SpeedArgs(use_liger=liger),
                "padding-free, flex attention, best un-ckpt": SpeedArgs(
                    use_liger=liger, uncheckpointed_layers=keep),
                "padding-free, sdpa (dense mask)": SpeedArgs(
                    use_liger=liger, padding_free_attention="sdpa"),
                "padded batches, sdpa": SpeedArgs(use_liger=liger, use_padding_free=False)}
        info["trainer"] = {}
        for name, speed in runs.items():
            if name.endswith("best un-ckpt") and not keep:
                continue
            base.set_attn_implementation("sdpa")
            t = trainer_run(base, speed, max(args.batches), args.trainer_steps, vocab)
            info["trainer"][name] = t
            print(f"SFTTrainer {name}: {t.get('status')} {t.get('tokens_per_s', 0):.0f} "
                  f"real tok/s, {t.get('peak_gib', 0):.1f} GiB", flush=True)
            _write(info, results, args, path)
    print()
    print(table(results))
    print(json.dumps(info["summary"], indent=1))
    return 0


def _write(info: dict, results: list[dict], args, path: Path) -> None:
    doc = {**info, "results": results}
    for p in {path} if args.cpu_dry_run else {path, RESULTS}:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(doc, indent=1, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
