"""python -m bench.finetune_cpu [--modes nf4 bf16 fp32] [--threads 1 2] [--steps 3] [--json PATH]

Seconds per optimizer step of LoRA fine-tuning of the embedded SmolLM2-135M on this CPU, for the
precisions the CPU config can choose between:

- `nf4`: QLoRA as `finetune.train` loads it (bitsandbytes NF4, double quantisation, bf16
  compute, `prepare_model_for_kbit_training`, the CPU repacking switched off);
- `bf16`: LoRA on the dense model held in bfloat16 (oneDNN/AMX matmuls where the CPU has them);
- `fp32`: LoRA on the dense float32 model;

each with 1 and 2 torch threads, one configuration per process (thread pools cannot be resized
reliably inside one) and one process at a time. A step is one example (batch 1, no padding) of
the real training data, forward + backward on the answer tokens (the prompt is masked, as
`completion_only_loss` does) + AdamW on the LoRA weights; the examples are the training file's
first ones near its mean length. The machine's load average is recorded beside every figure.

Run it under the team's CPU lock, e.g.
`flock /tmp/casewise-cpu.lock python -m bench.finetune_cpu --train-file runs/data/emanual-k3/train.jsonl`.
Results: stdout and `bench/results/finetune_cpu.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results" / "finetune_cpu.json"
MODES = ("nf4", "bf16", "fp32")


def load_avg() -> str:
    """The three load averages, as `uptime` prints them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def pick_examples(train_file: str, n: int, tokenizer) -> list[dict]:
    """`n` training examples closest to the file's mean token length, tokenised with masks."""
    from finetune.train import example_lengths, read_examples

    records = read_examples(train_file)
    lengths = example_lengths(records, tokenizer)
    mean = sum(lengths) / len(lengths)
    order = sorted(range(len(records)), key=lambda i: abs(lengths[i] - mean))[:n]
    out = []
    for i in order:
        r = records[i]
        prompt = tokenizer.apply_chat_template(r["prompt"], tokenize=False,
                                               add_generation_prompt=True)
        full = tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        labels = [-100] * len(p_ids) + ids[len(p_ids):]
        out.append({"input_ids": ids, "labels": labels})
    return out


def build_model(mode: str, base: str, dropout: float = 0.05, bf16_adapters: bool = False):
    """The model with LoRA r=16 on every linear layer, set up the way `SFTTrainer` does it.

    `finetune.train`'s loader, TRL's fused LM head (added before PEFT, as `SFTTrainer` does; on
    CPU it scores every position in chunks), PEFT, and for NF4 the adapters cast to bf16 (TRL's
    QLoRA recipe). `bf16_adapters` does the same cast for the dense bf16 model.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from trl import ModelConfig
    from trl.trainer.utils import add_fused_lm_head

    from finetune.train import _load_model

    args = ModelConfig(model_name_or_path=base, dtype={"fp32": "float32"}.get(mode, "bfloat16"),
                       load_in_4bit=mode == "nf4", bnb_4bit_quant_type="nf4",
                       use_bnb_nested_quant=mode == "nf4", use_peft=True)
    model = _load_model(base, args, on_gpu=False)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if mode == "nf4" or bf16_adapters:
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    return model


def measure(mode: str, threads: int, steps: int, train_file: str, dropout: float = 0.05,
            bf16_adapters: bool = False) -> dict:
    """Time `steps` optimizer steps (after one warm-up step) in this process."""
    import torch

    from finetune.model import load_tokenizer, resolve_base_model

    torch.set_num_threads(threads)
    base = resolve_base_model("default")
    tokenizer = load_tokenizer(base)
    examples = pick_examples(train_file, steps + 1, tokenizer)
    started = time.perf_counter()
    model = build_model(mode, base, dropout, bf16_adapters)
    load_s = time.perf_counter() - started
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-4)
    times, losses, load_before = [], [], load_avg()
    for i, ex in enumerate(examples):
        batch = {k: torch.tensor([v]) for k, v in ex.items()}
        t0 = time.perf_counter()
        loss = model(**batch, fused_lm_head=True).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if i:  # the first step pays one-off costs (oneDNN kernel selection, allocations)
            times.append(dt)
    tokens = [len(ex["input_ids"]) for ex in examples[1:]]
    return {"mode": mode, "threads": threads, "lora_dropout": dropout,
            "adapters": "bf16" if mode == "nf4" or bf16_adapters else
            {"fp32": "fp32"}.get(mode, "fp32 (PEFT's upcast)"), "steps": len(times), "load_s": round(load_s, 1),
            "s_per_step": round(sum(times) / len(times), 2),
            "step_s": [round(t, 2) for t in times], "tokens_per_step": tokens,
            "tokens_per_s": round(sum(tokens) / sum(times), 1),
            "losses": [round(x, 4) for x in losses], "load_avg_before": load_before,
            "load_avg_after": load_avg()}


def main(argv: list[str] | None = None) -> int:
    """Run every (mode, threads) pair in its own process, print a table, write JSON."""
    p = argparse.ArgumentParser(prog="python -m bench.finetune_cpu",
                                description=__doc__.split("\n\n")[1])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--train-file", default="runs/data/emanual-k3/train.jsonl")
    p.add_argument("--json", default=str(RESULTS))
    p.add_argument("--lora-dropout", type=float, nargs="+", default=[0.05],
                   help="LoRA dropout values to measure (its mask costs a random draw per "
                        "activation on CPU)")
    p.add_argument("--bf16-adapters", action="store_true",
                   help="also measure the dense bf16 model with bf16 adapters")
    p.add_argument("--one", nargs=2, metavar=("MODE", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.steps, args.train_file,
                                 args.lora_dropout[0], args.bf16_adapters)))
        return 0
    variants = [(m, t, d, False) for m in args.modes for d in args.lora_dropout
                for t in args.threads]
    if args.bf16_adapters:
        variants += [("bf16", t, d, True) for d in args.lora_dropout for t in args.threads]
    rows = []
    for mode, threads, dropout, bf16_adapters in variants:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(
            [sys.executable, "-m", "bench.finetune_cpu", "--one", mode, str(threads),
             "--steps", str(args.steps), "--train-file", args.train_file,
             "--lora-dropout", str(dropout)] + (["--bf16-adapters"] if bf16_adapters else []),
            cwd=REPO, env=env, capture_output=True, text=True,
        )
        if proc.returncode:
            print(proc.stderr[-2000:], file=sys.stderr)
            rows.append({"mode": mode, "threads": threads, "error": proc.stderr[-500:]})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{mode:5s} {threads} thread(s) dropout {dropout} adapters {row['adapters']}: "
              f"{row['s_per_step']:6.2f} s/step "
              f"({row['tokens_per_s']:.0f} tokens/s, steps {row['step_s']}), load "
              f"{row['load_avg_before']} -> {row['load_avg_after']}", flush=True)
    import torch

    out = {"machine": {"cpu": platform.processor() or platform.machine(),
                       "cores": os.cpu_count(), "torch": torch.__version__,
                       "python": platform.python_version()},
           "train_file": args.train_file, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
