"""QLoRA / LoRA fine-tuning of the reasoning model with TRL's `SFTTrainer`.

    python -m finetune train --config configs/smollm2-cpu.yaml [--num_train_epochs 2 ...]

Configuration is TRL's own: `TrlParser` over `DataArgs` (below), `trl.SFTConfig`,
`trl.ModelConfig` and `finetune.speed.SpeedArgs`; defaults < YAML `--config` < CLI flags, unknown
keys rejected. `model_name_or_path: default` is the embedded SmolLM2 (`finetune.model`).

The data are the chat examples of `python -m finetune data` (JSONL of `messages`). SmolLM2's chat
template has no `{% generation %}` markers, so TRL's `assistant_only_loss` cannot mask it; we turn
each example into the conversational prompt/completion form (prompt = system + user turns,
completion = the assistant turn) and train with `completion_only_loss`, which gives the same
assistant-only loss for single-turn examples with any chat template.

Output directory: the adapter (PEFT format, loadable by `PeftModel.from_pretrained` and vLLM's
LoRA support), the tokenizer, `training_config.yaml` (every resolved setting), `data_stats.json`,
`training_report.json` + `training_curves.png` (loss and eval loss from the log history),
`casewise.json` (base model as requested), and a model card `README.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from finetune.format import FORMAT_VERSION
from finetune.model import load_tokenizer, resolve_base_model
from finetune.speed import SpeedArgs, completion_head_trainer, configure_sft_config, prepare_model
from ingest.loaders import read_jsonl
from retrieval.errors import UsageError

CPU_CONFIG = "configs/smollm2-cpu.yaml"
# The hub id of the model that `default` embeds (for the model card's metadata).
EMBEDDED_UPSTREAM = "HuggingFaceTB/SmolLM2-135M-Instruct"


class TrainConfigError(UsageError):
    """A training config, data file or machine that cannot run the requested training."""


@dataclass
class DataArgs:
    """Data and run settings that TRL's config classes do not have.

    Attributes:
        train_file: JSONL of chat `messages` (output of `python -m finetune data`).
        eval_file: JSONL for evaluation; default `eval.jsonl` next to `train_file` when present.
        max_train_examples: Use only the first N training examples (0: all); for smoke runs.
        max_eval_examples: Use only the first N eval examples (0: all).
        early_stopping_patience: Evaluations without eval-loss improvement before stopping
            (0: no early stopping).
        max_train_minutes: Stop training (after a final evaluation and save) once this much wall
            time has passed; 0 means no limit. The CPU config uses it as a hard budget.
        drop_long_examples: Drop examples longer than `max_length` instead of failing.
        require_gpu: Fail early unless a CUDA GPU is visible (GPU configs set it).
        cpu_threads: Torch threads when training on CPU (0: torch's default). On a shared
            machine 1 thread can be several times faster than 2 busy-waiting OpenMP threads.
        lora_top_layers: Put adapters on the last N decoder layers only (0: all layers). The
            backward pass then stops at the lowest adapted layer: on the 30-layer embedded
            model, 15 layers halve the seconds per step on CPU (docs/finetune.md).
    """

    train_file: str | None = field(default=None, metadata={"help": "train.jsonl from `data`."})
    eval_file: str | None = field(default=None, metadata={"help": "eval.jsonl (default: "
                                                          "next to train_file)."})
    max_train_examples: int = field(default=0, metadata={"help": "First N train examples."})
    max_eval_examples: int = field(default=0, metadata={"help": "First N eval examples."})
    early_stopping_patience: int = field(default=3, metadata={"help": "0 disables."})
    max_train_minutes: float = field(default=0.0, metadata={"help": "Wall-time budget."})
    drop_long_examples: bool = field(default=False, metadata={"help": "Drop, not fail."})
    require_gpu: bool = field(default=False, metadata={"help": "Fail without CUDA."})
    cpu_threads: int = field(default=0, metadata={"help": "Torch threads on CPU (0: default)."})
    lora_top_layers: int = field(default=0, metadata={"help": "Adapt the last N decoder layers "
                                                              "only (0: all)."})


# --------------------------------------------------------------------------- data


def read_examples(path: str | Path, limit: int = 0) -> list[dict]:
    """Read chat examples and turn them into conversational prompt/completion records.

    Returns:
        Records `{"prompt": [...], "completion": [assistant], "line": n}`.

    Raises:
        TrainConfigError: Missing file, malformed line, or no example at all.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(
            f"data file {path} does not exist: build it with `python -m finetune data --out DIR` "
            f"and set train_file (or --train_file)"
        )
    values, problems = read_jsonl(path)
    if problems:  # written by `finetune data`: a broken line means a damaged file, not a typo
        raise TrainConfigError(f"{problems[0]}; rebuild the file with `python -m finetune data`")
    records = []
    for line_no, value in values:
        messages = value.get("messages") if isinstance(value, dict) else None
        if not isinstance(messages, list):
            raise TrainConfigError(
                f"{path}:{line_no}: not a JSON object with 'messages'; rebuild the file "
                f"with `python -m finetune data`"
            )
        if not messages or messages[-1].get("role") != "assistant" or len(messages) < 2:
            raise TrainConfigError(
                f"{path}:{line_no}: the last message must be the assistant's answer after at "
                f"least one prompt message"
            )
        records.append({"prompt": messages[:-1], "completion": messages[-1:], "line": line_no})
        if limit and len(records) >= limit:
            break
    if not records:
        raise TrainConfigError(
            f"data file {path} has no examples: the FAQ history produced nothing; check the "
            f"stats and problems.txt of `python -m finetune data`"
        )
    return records


def example_lengths(records: Sequence[dict], tokenizer) -> list[int]:
    """Token length of each record as the trainer will see it (chat template applied)."""
    lengths = []
    for r in records:
        text = tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False)
        lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return lengths


def check_lengths(
    records: list[dict], lengths: list[int], path: str, max_length: int | None,
    context: int | None, drop: bool,
) -> tuple[list[dict], list[int], int]:
    """Fail (or drop, when asked) on examples longer than `max_length` or the model's context.

    Truncation would cut the assistant's answer (the only part with a loss), so long examples
    are an error by default.

    Returns:
        The kept records, their lengths and how many were dropped.

    Raises:
        TrainConfigError: An example exceeds the model's context, or `max_length` without
            `drop_long_examples`.
    """
    if context:
        for r, n in zip(records, lengths, strict=True):
            if n > context:
                raise TrainConfigError(
                    f"{path}:{r['line']}: example of {n} tokens is longer than the model's "
                    f"context ({context} tokens): rebuild the data with fewer passages (--k) or "
                    f"shorter ones (--max-passage-chars)"
                )
    if not max_length:
        return records, lengths, 0
    too_long = [(r["line"], n) for r, n in zip(records, lengths, strict=True) if n > max_length]
    if too_long and not drop:
        line, n = max(too_long, key=lambda t: t[1])
        raise TrainConfigError(
            f"{path}: {len(too_long)} examples are longer than max_length ({max_length}); the "
            f"longest is line {line} with {n} tokens: raise max_length, set "
            f"drop_long_examples: true, or rebuild the data with fewer/shorter passages"
        )
    kept = [(r, n) for r, n in zip(records, lengths, strict=True) if n <= max_length]
    return [r for r, _ in kept], [n for _, n in kept], len(too_long)


def length_stats(lengths: Sequence[int]) -> dict:
    """Count, total, mean and max of token lengths."""
    n = len(lengths)
    return {"examples": n, "tokens_total": sum(lengths),
            "tokens_mean": round(sum(lengths) / n, 1) if n else 0, "tokens_max": max(lengths,
                                                                                   default=0)}


# --------------------------------------------------------------------------- checks


def check_config(data: DataArgs, sft, on_gpu: bool, has_eval: bool, config_path: str) -> None:
    """Contradictions between settings, each named with its field and the fix.

    Raises:
        TrainConfigError: The first contradiction found.
    """
    if data.require_gpu and not on_gpu:
        raise TrainConfigError(
            f"{config_path} requires a CUDA GPU (require_gpu: true) but none is visible: run it "
            f"on a GPU machine, or use {CPU_CONFIG} on CPU"
        )
    if data.train_file is None:
        raise TrainConfigError("train_file is not set: pass --train_file or set it in the config")
    if data.early_stopping_patience > 0:
        if not has_eval:
            raise TrainConfigError(
                "early_stopping_patience needs eval data but no eval_file was found: set "
                "eval_file, or early_stopping_patience: 0"
            )
        if str(sft.eval_strategy).split(".")[-1].lower() == "no":
            raise TrainConfigError(
                "early_stopping_patience needs eval_strategy: steps (or epoch); it is 'no'"
            )
        if not sft.load_best_model_at_end:
            raise TrainConfigError(
                "early_stopping_patience needs load_best_model_at_end: true (keeps the best "
                "checkpoint)"
            )
    if sft.load_best_model_at_end and (sft.metric_for_best_model or "loss") not in (
        "loss", "eval_loss"
    ):
        raise TrainConfigError(
            f"metric_for_best_model ({sft.metric_for_best_model!r}) must be eval_loss: no other "
            f"metric is computed during training"
        )
    if sft.assistant_only_loss:
        raise TrainConfigError(
            "assistant_only_loss: true needs {% generation %} markers that SmolLM2's chat template "
            "lacks; casewise trains prompt/completion pairs: use completion_only_loss: true"
        )


# --------------------------------------------------------------------------- tracking

TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny")}


def configure_tracking(sft) -> dict:
    """Check and point the offline trackers named in `report_to` at the run's directory.

    TensorBoard writes event files under `<output_dir>/runs/` (transformers' default). MLflow
    logs to a local file store, `<output_dir>/mlruns`, unless `MLFLOW_TRACKING_URI` names
    another store; its telemetry is switched off. MLflow 3 refuses file stores unless
    `MLFLOW_ALLOW_FILE_STORE` is set: a local folder is what a single machine with no server
    needs, so it is set here (only when unset).

    Returns:
        Tracker name -> where it writes (also printed into the training report).

    Raises:
        TrainConfigError: `report_to` names a tracker casewise does not set up offline, or one
            whose package is missing.
    """
    import importlib.util

    # The command line gives one string (`--report_to tensorboard,mlflow`), YAML may give a list.
    wanted = [t.strip() for item in (sft.report_to or []) for t in str(item).split(",")
              if t.strip() not in ("none", "")]
    sft.report_to = wanted
    unknown = [t for t in wanted if t not in TRACKERS]
    if unknown:
        raise TrainConfigError(
            f"report_to {unknown} is not supported offline: use none, tensorboard or mlflow "
            f"(or both)"
        )
    where = {}
    for name in wanted:
        module, package = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise TrainConfigError(
                f"report_to {name} needs the {package} package: pip install 'casewise[tracking]' "
                f"(or report_to: none)"
            )
    out = Path(sft.output_dir).resolve()
    if "tensorboard" in wanted:
        where["tensorboard"] = os.environ.get("TENSORBOARD_LOGGING_DIR") or str(out / "runs")
    if "mlflow" in wanted:
        os.environ.setdefault("MLFLOW_TRACKING_URI", (out / "mlruns").as_uri())
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "casewise")
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
        where["mlflow"] = os.environ["MLFLOW_TRACKING_URI"]
    return where


# --------------------------------------------------------------------------- callbacks


def _time_budget_callback(minutes: float):
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        """Stop after `minutes` of training, evaluating and saving at that step."""

        def __init__(self) -> None:
            self.start = None
            self.stopped_at: int | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() - self.start > minutes * 60:
                control.should_training_stop = True
                if args.eval_strategy != "no":
                    control.should_evaluate = True
                control.should_save = True
                self.stopped_at = state.global_step
            return control

    return TimeBudget()


def _last_step_callback():
    from transformers import TrainerCallback

    class EvaluateLastStep(TrainerCallback):
        """Evaluate and save the last step too, so the end of the schedule is on the curve and
        can be the best checkpoint (the Trainer evaluates only every `eval_steps`)."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps and args.eval_strategy != "no":
                control.should_evaluate = True
                control.should_save = True
            return control

    return EvaluateLastStep()


# --------------------------------------------------------------------------- outputs


def _checkpoint_step(path: str | None) -> int | None:
    """The step number of a `checkpoint-N` directory, or None."""
    if not path:
        return None
    name = Path(path).name
    return int(name.split("-")[-1]) if name.startswith("checkpoint-") else None


def write_report(log_history: list[dict], out: Path, extra: dict) -> dict:
    """`training_report.json` and `training_curves.png` from the trainer's log history.

    The curves are drawn against epochs (steps on the top axis); the best checkpoint (the one
    `load_best_model_at_end` restored and `save_model` wrote) is marked on the eval curve.

    Returns:
        The report: `extra` plus `train_loss` and `eval_loss` series (step, epoch, loss),
        `best_step` / `best_epoch`, and the raw log history.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epoch_of = {h["step"]: h["epoch"] for h in log_history if "epoch" in h and "step" in h}
    train = [{"step": h["step"], "epoch": h.get("epoch"), "loss": h["loss"]}
             for h in log_history if "loss" in h]
    # A step evaluated twice (a time-budget stop, then a resume) is plotted once.
    evals = sorted({h["step"]: h["eval_loss"] for h in log_history if "eval_loss" in h}.items())
    eval_points = [{"step": s, "epoch": epoch_of.get(s), "loss": v} for s, v in evals]
    best_step = _checkpoint_step(extra.get("best_checkpoint"))
    if best_step is None and evals:
        best_step = min(evals, key=lambda sv: sv[1])[0]
    best_loss = dict(evals).get(best_step)
    report = {**extra, "train_loss": train, "eval_loss": eval_points, "best_step": best_step,
              "best_epoch": epoch_of.get(best_step), "log_history": log_history}
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")

    # Epochs on the x axis; a step with no logged epoch (none in practice) falls back to 0.
    per_epoch = max((s / e for s, e in epoch_of.items() if e), default=None)
    to_epoch = (lambda step: step / per_epoch) if per_epoch else (lambda step: 0.0)
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot([to_epoch(h["step"]) for h in train], [h["loss"] for h in train],
                label="train loss", marker=".", alpha=0.7)
    if evals:
        ax.plot([to_epoch(s) for s, _ in evals], [v for _, v in evals], label="eval loss",
                marker="o")
    if best_loss is not None:
        x = to_epoch(best_step)
        ax.axvline(x, color="grey", linestyle="--", linewidth=1)
        ax.plot([x], [best_loss], marker="*", markersize=16, color="crimson", linestyle="none",
                label=f"best checkpoint: step {best_step}, epoch {x:.2f}, eval {best_loss:.3f}")
    ax.set_xlabel("epoch")
    if per_epoch:
        top = ax.secondary_xaxis("top", functions=(lambda e: e * per_epoch,
                                                   lambda st: st / per_epoch))
        top.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(extra.get("title", "training"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=120)
    plt.close(fig)
    return report


def write_adapter_metadata(out: Path, requested: str, quantized: bool, **extra) -> None:
    """`casewise.json`: the base model as requested (e.g. `default`), quantisation, the prompt
    format the adapter was trained on, and `extra` (e.g. what an aligned adapter came from)."""
    meta = {"base_model": requested, "quantized": quantized, "format_version": FORMAT_VERSION,
            **extra}
    (out / "casewise.json").write_text(json.dumps(meta, indent=2) + "\n")


def _yaml_safe(value):
    if isinstance(value, dict):
        return {str(k): _yaml_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_yaml_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def write_model_card(out: Path, info: dict) -> None:
    """A model card (`README.md`) for the adapter."""
    best = info.get("best_eval_loss")
    upstream = (EMBEDDED_UPSTREAM if info["base_model_requested"] == "default"
                else info["base_model"])
    method = ("QLoRA (bitsandbytes NF4, double quantisation)" if info["quantized"]
              else "LoRA on the dense model")
    lines = [
        "---",
        f"base_model: {upstream}",
        "library_name: peft",
        "tags: [casewise, lora, qlora, trl, sft]" if info["quantized"] else
        "tags: [casewise, lora, trl, sft]",
        "---",
        "",
        f"# casewise adapter: {info['run_name']}",
        "",
        "A LoRA adapter that answers support questions from numbered passages in the casewise "
        "format (reasoning quoting a passage, answer, sources; a fixed abstain answer when the "
        "passages do not cover the question; a fixed refusal for harmful requests).",
        "",
        "## Training",
        f"- Base model: `{info['base_model_requested']}` (`{info['base_model']}`)",
        f"- Method: {method}, r={info['lora_r']}, alpha={info['lora_alpha']}, "
        f"dropout={info['lora_dropout']}, "
        f"target modules {info['target_modules']}",
        f"- Data: `{info['train_file']}` ({info['train_examples']} examples, "
        f"{info['train_tokens']} tokens), eval `{info['eval_file']}` ({info['eval_examples']})",
        "- Loss on the assistant answer only (prompt/completion, completion_only_loss)",
        f"- Steps: {info['global_step']}, epochs {info['epochs']:.2f}, wall time "
        f"{info['train_runtime_s']:.0f} s on {info['device']}",
        f"- Best eval loss: {best:.4f}" if best is not None else "- No evaluation was run",
        "",
        "## Use",
        "```python",
        "from finetune.model import load_causal_lm",
        f"model, tokenizer = load_causal_lm({info['base_model_requested']!r}, adapter=<this dir>)",
        "```",
        "or `python -m agent --adapter <this dir>`; with vLLM: "
        "`vllm serve <base> --enable-lora --lora-modules casewise=<this dir>`.",
        "Curves: `training_curves.png`; numbers: `training_report.json`.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


# --------------------------------------------------------------------------- training


def _resume_arg(value, output_dir: str):
    from transformers.trainer_utils import get_last_checkpoint

    if value in (None, "", False, "false", "False"):
        return None
    if value in (True, "true", "True", "auto", "last"):
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise TrainConfigError(
                f"resume_from_checkpoint: {value} but {output_dir} holds no checkpoint-* "
                f"directory: drop the flag to start fresh"
            )
        return last
    if not Path(value).is_dir():
        raise TrainConfigError(f"resume_from_checkpoint {value} is not a checkpoint directory")
    return value


def keep_nf4_differentiable_on_cpu(model) -> int:
    """Stop bitsandbytes from repacking NF4 weights for CPU inference during evaluation.

    bitsandbytes 0.50.2 (`Linear4bit.forward`): on a CPU with AVX512-BF16, the first forward in
    eval mode without grad (every evaluation) converts the weights, for good, to a packed format
    whose kernel (`gemv_4bit`) has no autograd. Training steps after the first evaluation then
    drop the gradient through every quantised layer (a test measured 95 % relative error in the
    LoRA gradients) with only a warning. Turning the conversion off keeps the differentiable
    dequantise-and-matmul path for training and evaluation alike.

    Returns:
        How many `Linear4bit` modules were switched.
    """
    n = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def lora_config(model_args, model, top_layers: int = 0):
    """TRL's LoRA config for `model_args`, restricted to the last `top_layers` decoder layers.

    PEFT accepts `layers_to_transform` only with an explicit module list, so "all-linear" is
    resolved here to the model's linear layer names (the output head excluded, as PEFT does).

    Raises:
        TrainConfigError: `top_layers` is negative or larger than the model's layer count.
    """
    import torch
    from trl import get_peft_config

    config = get_peft_config(model_args)
    n_layers = model.config.num_hidden_layers
    if not 0 <= top_layers <= n_layers:
        raise TrainConfigError(f"lora_top_layers: {top_layers} is outside 0..{n_layers} (the "
                               f"model has {n_layers} decoder layers)")
    if not top_layers or top_layers == n_layers:
        return config
    if config.target_modules == "all-linear":
        config.target_modules = sorted({
            name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")
        })
    config.layers_to_transform = list(range(n_layers - top_layers, n_layers))
    return config


def _load_model(base: str, model_args, on_gpu: bool):
    import torch
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config

    quantization = get_quantization_config(model_args)
    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch,
                                                                               model_args.dtype)
    kwargs = {"dtype": dtype, "attn_implementation": model_args.attn_implementation}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        if on_gpu and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
            from accelerate import PartialState

            # One full quantised copy per process (DDP under `accelerate launch`); under FSDP
            # the shards are placed by FSDP, so no device map.
            kwargs["device_map"] = {"": PartialState().local_process_index}
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        if not on_gpu:
            keep_nf4_differentiable_on_cpu(model)
        # Casts norms to fp32 and makes inputs require grads, as the QLoRA recipe does; the
        # trainer switches checkpointing on from the config.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def train(data: DataArgs, sft, model_args, speed: SpeedArgs, config_path: str = "") -> dict:
    """Run one fine-tuning job and write every output (see module docstring).

    Returns:
        The training report (also written to `training_report.json`).

    Raises:
        TrainConfigError: Bad data, contradictory settings, or no GPU for a GPU config.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoConfig, EarlyStoppingCallback
    from trl import SFTTrainer

    on_gpu = torch.cuda.is_available() and not sft.use_cpu
    if not on_gpu and data.cpu_threads:
        torch.set_num_threads(data.cpu_threads)
    eval_file = data.eval_file
    if eval_file is None and data.train_file:
        candidate = Path(data.train_file).with_name("eval.jsonl")
        eval_file = str(candidate) if candidate.is_file() else None
    check_config(data, sft, on_gpu, eval_file is not None, config_path)
    if not model_args.use_peft:
        raise TrainConfigError("use_peft is false: casewise trains LoRA adapters; set use_peft: "
                               "true")
    requested = model_args.model_name_or_path or "default"
    base = resolve_base_model(requested)
    tokenizer = load_tokenizer(base)
    context = getattr(AutoConfig.from_pretrained(base), "max_position_embeddings", None)

    train_records = read_examples(data.train_file, data.max_train_examples)
    train_records, train_lengths, dropped = check_lengths(
        train_records, example_lengths(train_records, tokenizer), data.train_file,
        sft.max_length, context, data.drop_long_examples,
    )
    if not train_records:
        raise TrainConfigError(f"no training example of {data.train_file} fits max_length "
                               f"({sft.max_length})")
    eval_records, eval_lengths = [], []
    if eval_file:
        eval_records = read_examples(eval_file, data.max_eval_examples)
        eval_records, eval_lengths, dropped_eval = check_lengths(
            eval_records, example_lengths(eval_records, tokenizer), eval_file, sft.max_length,
            context, data.drop_long_examples,
        )
        dropped += dropped_eval
    if data.early_stopping_patience and not eval_records:
        raise TrainConfigError(f"eval file {eval_file} has no example that fits max_length")

    out = Path(sft.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    sft.completion_only_loss = True
    if sft.metric_for_best_model in (None, "loss"):
        sft.metric_for_best_model = "eval_loss"
        sft.greater_is_better = False
    if not model_args.lora_target_modules:
        model_args.lora_target_modules = "all-linear"
    configure_sft_config(sft, speed, on_gpu)
    tracking = configure_tracking(sft)

    model = _load_model(base, model_args, on_gpu)
    model = prepare_model(model, speed, on_gpu)
    if on_gpu and speed.use_padding_free and model.config._attn_implementation == "flex_attention":
        # Measured on an H200: the first flex-attention call took 236 s (cold torch.compile), every
        # later one a fraction of a second; say so before a user thinks the run hung.
        print("note: padding-free packing uses flex attention, compiled on its first call: the "
              "first evaluation or step can take several minutes (--no_use_padding_free avoids "
              "it)", file=sys.stderr)
    strip = lambda recs: [{"prompt": r["prompt"], "completion": r["completion"]}  # noqa: E731
                          for r in recs]
    callbacks = [_last_step_callback()] if eval_records else []
    if data.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(data.early_stopping_patience))
    budget = _time_budget_callback(data.max_train_minutes) if data.max_train_minutes else None
    if budget:
        callbacks.append(budget)
    trainer_class = SFTTrainer
    if not on_gpu and speed.completion_head:
        trainer_class = completion_head_trainer(SFTTrainer)
    trainer = trainer_class(
        model=model,
        args=sft,
        train_dataset=Dataset.from_list(strip(train_records)),
        eval_dataset=Dataset.from_list(strip(eval_records)) if eval_records else None,
        processing_class=tokenizer,
        peft_config=lora_config(model_args, model, data.lora_top_layers),
        callbacks=callbacks,
    )
    if model_args.dtype == "bfloat16" and not (model_args.load_in_4bit or model_args.load_in_8bit):
        # TRL keeps QLoRA adapters in bf16 but lets PEFT upcast them to fp32 on a dense bf16
        # model; every LoRA input is then cast to fp32 and back. Adapters in the base's dtype,
        # as TRL's QLoRA recipe has them, cost 15-20 % less per step on CPU
        # (bench/finetune_cpu.py, docs/finetune.md).
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    resume = _resume_arg(sft.resume_from_checkpoint, sft.output_dir)
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume)
    wall = time.monotonic() - started

    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    quantized = bool(model_args.load_in_4bit or model_args.load_in_8bit)
    write_adapter_metadata(out, requested, quantized, resolved_base_model=base)
    resolved = {"data": asdict(data), "model": asdict(model_args), "speed": asdict(speed),
                "sft": sft.to_dict(), "config_file": config_path}
    import yaml

    (out / "training_config.yaml").write_text(yaml.safe_dump(_yaml_safe(resolved),
                                                             sort_keys=False))
    data_stats = {"train": length_stats(train_lengths), "eval": length_stats(eval_lengths),
                  "dropped_too_long": dropped, "train_file": data.train_file,
                  "eval_file": eval_file}
    built_stats = Path(data.train_file).with_name("stats.json")
    if built_stats.is_file():
        data_stats["builder"] = json.loads(built_stats.read_text())
    (out / "data_stats.json").write_text(json.dumps(data_stats, indent=2) + "\n")

    state = trainer.state
    epochs = state.epoch or 0.0
    # TRL logs the running count of tokens seen; fall back to the epoch fraction.
    seen = [h["num_tokens"] for h in state.log_history if "num_tokens" in h and "loss" in h]
    trained_tokens = max(seen) if seen else sum(train_lengths) * epochs
    info = {
        "run_name": out.name, "base_model": base, "base_model_requested": requested,
        "quantized": quantized, "lora_r": model_args.lora_r, "lora_alpha": model_args.lora_alpha,
        "lora_dropout": model_args.lora_dropout,
        "target_modules": model_args.lora_target_modules,
        "lora_top_layers": data.lora_top_layers, "train_file": data.train_file,
        "eval_file": eval_file, "train_examples": len(train_records),
        "eval_examples": len(eval_records), "train_tokens": sum(train_lengths),
        "global_step": state.global_step, "epochs": epochs,
        "train_runtime_s": result.metrics.get("train_runtime", wall), "wall_time_s": wall,
        "tokens_trained": trained_tokens,
        # After a resume the token counter and the wall time cover different spans.
        "tokens_per_s": trained_tokens / wall if wall and resume is None else None,
        "best_eval_loss": state.best_metric, "best_checkpoint": state.best_model_checkpoint,
        "final_train_loss": result.metrics.get("train_loss"),
        "stopped_by_time_budget": bool(budget and budget.stopped_at is not None),
        "resumed_from": resume,
        "device": "cuda" if on_gpu else "cpu", "title": f"{out.name} ({requested})",
        "tracking": tracking,
    }
    if on_gpu:
        info["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    report = write_report(state.log_history, out, info)
    write_model_card(out, info)
    return report


def _check_gpu_requirement(argv: list[str], config_path: str) -> None:
    # TrainingArguments rejects bf16 without a GPU with a generic message while parsing; say
    # which config needs the GPU before that.
    import torch
    import yaml

    wanted = "--require_gpu" in argv or "--require-gpu" in argv
    if config_path:
        loaded = yaml.safe_load(Path(config_path).read_text()) or {}
        wanted = wanted or (isinstance(loaded, dict) and bool(loaded.get("require_gpu")))
    if wanted and not torch.cuda.is_available():
        raise TrainConfigError(
            f"{config_path or 'command line'} requires a CUDA GPU (require_gpu: true) but none "
            f"is visible: run it on a GPU machine, or use {CPU_CONFIG} on CPU"
        )


EXAMPLES = """examples:
  python -m finetune train --config configs/smollm2-cpu.yaml                 # 2 CPU cores
  python -m finetune train --config configs/smollm2-gpu.yaml --output_dir runs/smollm2-gpu
  python -m finetune train --config configs/llama-3.1-8b-qlora.yaml         # production, GPU
  python -m finetune train --config configs/smollm2-cpu.yaml --num_train_epochs 2 --max_train_minutes 30
"""


def parse(argv: Sequence[str]):
    """Parse `argv` with `TrlParser` into `(DataArgs, SFTConfig, ModelConfig, SpeedArgs, path)`.

    Raises:
        TrainConfigError: Missing config file or keys that no dataclass knows.
    """
    from trl import ModelConfig, SFTConfig, TrlParser

    argv = list(argv)
    config_path = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else ""
    if config_path and not Path(config_path).is_file():
        raise TrainConfigError(f"config file {config_path} does not exist: see configs/*.yaml")
    _check_gpu_requirement(argv, config_path)
    parser = TrlParser((DataArgs, SFTConfig, ModelConfig, SpeedArgs),
                       prog="python -m finetune train", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        data, sft, model_args, speed = parser.parse_args_and_config(args=argv)
    except ValueError as e:
        # TRL reports unknown YAML keys and impossible combinations as ValueError.
        raise TrainConfigError(f"{config_path or 'command line'}: {e}") from e
    return data, sft, model_args, speed, config_path


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m finetune train`."""
    data, sft, model_args, speed, config_path = parse(sys.argv[1:] if argv is None else argv)
    report = train(data, sft, model_args, speed, config_path)
    best = report.get("best_eval_loss")
    print(f"adapter written to {sft.output_dir}: {report['global_step']} steps, "
          f"{report['wall_time_s']:.0f} s, best eval loss "
          f"{best if best is None else round(best, 4)}")
    return 0


def merge_adapter(adapter: str, out: str, base: str | None = None) -> Path:
    """Merge a LoRA adapter into its base model and save the dense result with the tokenizer.

    Args:
        adapter: Adapter directory (output of `train`).
        out: Output directory.
        base: Base model; default the one recorded in the adapter's `casewise.json`, else in
            `adapter_config.json`.

    Raises:
        ModelNotFoundError: The adapter or base model cannot be loaded.
    """
    from finetune.model import check_adapter_dir, load_causal_lm

    adapter_dir = check_adapter_dir(adapter)
    if base is None:
        meta = adapter_dir / "casewise.json"
        if meta.is_file():
            base = json.loads(meta.read_text())["base_model"]
        else:
            base = json.loads((adapter_dir / "adapter_config.json").read_text())[
                "base_model_name_or_path"]
    model, tokenizer = load_causal_lm(base, adapter=str(adapter_dir))
    merged = model.merge_and_unload()
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    return target

