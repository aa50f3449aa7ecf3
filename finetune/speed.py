"""Training speed levers (GPU): the contract between the training path and `bench/qlora_gpu.py`.

Owned by the GPU-speed work (issue 6). `finetune.train` parses `SpeedArgs` next to TRL's
`SFTConfig`/`ModelConfig` and calls `configure_sft_config` before building the trainer and
`prepare_model` after loading the quantised model (before PEFT wraps it). On CPU every lever is a
no-op, so the CPU path keeps working whatever the flags say.

The levers, each on by default on a GPU and each switched off by its `--no_<name>` flag:

- `keep_bf16`: a 4/8-bit model's norms, embeddings and LM head stay in bf16. peft's
  `prepare_model_for_kbit_training` upcasts them to fp32, which makes the residual stream fp32
  and casts every LoRA input: 1.36x slower and 4-7 GiB more on the 8B benchmark. TRL's QLoRA
  recipe (and `SFTTrainer`'s bf16 adapters) keep bf16; `prepare_model` casts them back.

- `use_liger`: Liger's Triton kernels for RMSNorm, SwiGLU and RoPE, patched into the model
  instance. The LM head is not Liger's fused linear cross-entropy: TRL's `SFTTrainer` always adds
  its own fused, chunked LM head (`trl.trainer.utils.add_fused_lm_head`), which likewise never
  materialises the `(batch, seq, vocab)` logits, and refuses Liger's.
- `use_padding_free`: TRL's best-fit-decreasing packing, padding-free: several examples share one
  row, each restarts its `position_ids` at 0, and transformers turns those position ids into a
  block-diagonal causal mask (sdpa) or varlen boundaries (flash attention), so packed examples
  never attend to each other. TRL's collator flattens the whole batch into one row; with sdpa
  that row gets a dense (tokens x tokens) mask and no kernel can skip the masked blocks, so
  without flash-attn the model is switched to `padding_free_attention` (default flex attention,
  whose block mask skips them).
- `gradient_checkpointing_mode`: `full` (non-reentrant, every decoder layer), `selective` (TRL's
  selective activation checkpointing: attention outputs are saved, the rest recomputed) or `off`.
- `checkpoint_every_n_layers`: checkpoint only every n-th decoder layer (transformers'
  `every_n_layers`), trading spare memory back for the recompute; 1 checkpoints them all.
- `uncheckpointed_layers`: leave the last k decoder layers un-checkpointed (their activations are
  kept), for finer steps than `every_n_layers`: spend the memory the fused LM head frees.
- `micro_batch_size`: a different micro-batch at the same effective batch (gradient accumulation
  is rescaled); 0 keeps the config's.
- `use_compile`: `torch.compile` of each decoder layer (the layers share one compiled graph, so
  compiling costs one layer's time, not 32). Off by default: see `docs/gpu.md` for its figures.

One lever is for the CPU:

- `completion_head`: score only the answer positions with the LM head. TRL's fused LM head
  scores only the positions that carry a label on Triton devices, but every position elsewhere
  (fixed tile shapes, for compilers), and on CPU it multiplies in fp32. casewise's prompts are
  ~90 % passages whose labels are masked (`completion_only_loss`), so on CPU the head's
  (tokens x 49,152) product was most of an example's time: `CompletionHeadTrainer` computes the
  same loss (sum of the answer tokens' negative log-likelihood over TRL's token count) from the
  answer positions only, in the model's dtype, and logs the same `entropy` and
  `mean_token_accuracy`. On GPUs TRL's own path is kept.

The field names avoid `SFTConfig`'s own (`padding_free`, `torch_compile`): `TrlParser` builds one
argparse parser for all dataclasses and rejects a flag defined twice.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from retrieval.errors import UsageError, at_least

CHECKPOINT_MODES = ("full", "selective", "off")
PACKED_ATTENTION = ("flex_attention", "sdpa", "keep")
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


class SpeedConfigError(UsageError):
    """A speed setting with an impossible value."""


@dataclass
class SpeedArgs:
    """Switches for each speed lever; each can be turned off from the CLI (`--no_<name>`).

    Attributes:
        keep_bf16: Undo the fp32 upcast of a 4/8-bit model's norms, embeddings and head. GPU only.
        use_liger: Liger kernels (RMSNorm, SwiGLU, RoPE). GPU only.
        use_padding_free: Padding-free packing with position ids; no attention across examples.
        padding_free_attention: Attention used for packed rows where flash-attn is absent.
        gradient_checkpointing_mode: `"full"`, `"selective"` or `"off"`.
        checkpoint_every_n_layers: Checkpoint only every n-th decoder layer; 1 checkpoints all.
        uncheckpointed_layers: Leave the last k decoder layers un-checkpointed.
        micro_batch_size: Micro-batch per device at the same effective batch; 0 keeps the config's.
        use_compile: Compile each decoder layer with `torch.compile`.
        completion_head: On CPU, apply the LM head to the labelled (answer) positions only.
    """

    keep_bf16: bool = field(
        default=True, metadata={"help": "Keep a quantised model's non-quantised weights in bf16."}
    )
    use_liger: bool = field(default=True, metadata={"help": "Liger kernels on GPU."})
    use_padding_free: bool = field(
        default=True, metadata={"help": "Padding-free packing (position ids) on GPU."}
    )
    padding_free_attention: str = field(
        default="flex_attention",
        metadata={"help": "Attention for packed rows when flash-attn is absent: flex_attention, "
                          "sdpa or keep (the model's own)."},
    )
    gradient_checkpointing_mode: str = field(
        default="full", metadata={"help": "full | selective | off (GPU only)."}
    )
    checkpoint_every_n_layers: int = field(
        default=1, metadata={"help": "Checkpoint every n-th decoder layer only (1: all of them)."}
    )
    uncheckpointed_layers: int = field(
        default=0, metadata={"help": "Leave the last k decoder layers un-checkpointed."}
    )
    micro_batch_size: int = field(
        default=0,
        metadata={"help": "Micro-batch per GPU at the same effective batch; 0 keeps the config's."},
    )
    use_compile: bool = field(
        default=False, metadata={"help": "torch.compile each decoder layer on GPU."}
    )
    completion_head: bool = field(
        default=True, metadata={"help": "On CPU, apply the LM head to the answer positions only."}
    )

    def __post_init__(self) -> None:
        if self.gradient_checkpointing_mode not in CHECKPOINT_MODES:
            raise SpeedConfigError(
                f"gradient_checkpointing_mode ({self.gradient_checkpointing_mode!r}) must be one "
                f"of {', '.join(CHECKPOINT_MODES)}"
            )
        if self.padding_free_attention not in PACKED_ATTENTION:
            raise SpeedConfigError(
                f"padding_free_attention ({self.padding_free_attention!r}) must be one of "
                f"{', '.join(PACKED_ATTENTION)}"
            )
        at_least("checkpoint_every_n_layers", self.checkpoint_every_n_layers,
                 unit="(1 checkpoints every layer; use gradient_checkpointing_mode off for none)",
                 error=SpeedConfigError)
        if self.uncheckpointed_layers < 0:
            raise SpeedConfigError(
                f"uncheckpointed_layers ({self.uncheckpointed_layers}) must be 0 or positive"
            )
        if self.micro_batch_size < 0:
            raise SpeedConfigError(
                f"micro_batch_size ({self.micro_batch_size}) must be 0 (keep the config's) or positive"
            )


def configure_sft_config(sft_config, speed: SpeedArgs, on_gpu: bool):
    """Apply the levers that live in TRL's `SFTConfig`; returns the same object.

    Args:
        sft_config: A `trl.SFTConfig` to adjust in place.
        speed: Which levers are on.
        on_gpu: Whether training runs on CUDA; on CPU nothing changes.

    Returns:
        The same `sft_config`.
    """
    if not on_gpu:
        return sft_config
    if speed.use_padding_free:
        # Packing with "bfd" is TRL's padding-free mode: it needs no max_length-free dataset and
        # keeps each example whole (bfd truncates only examples longer than max_length).
        sft_config.packing = True
        sft_config.packing_strategy = "bfd"
        sft_config.padding_free = True
    _set_checkpointing(sft_config, checkpointing_kwargs(speed))
    if speed.micro_batch_size:
        effective = sft_config.per_device_train_batch_size * sft_config.gradient_accumulation_steps
        sft_config.per_device_train_batch_size = speed.micro_batch_size
        sft_config.gradient_accumulation_steps = max(1, effective // speed.micro_batch_size)
    # Liger and compilation are applied to the model instance by `prepare_model`; TRL's own
    # `use_liger_kernel`/`torch_compile` would apply them a second time (whole-model compile).
    return sft_config


def checkpointing_kwargs(speed: SpeedArgs) -> dict | None:
    """The trainer's `activation_checkpointing_kwargs` for `speed`, or None for no checkpointing."""
    if speed.gradient_checkpointing_mode == "off":
        return None
    kwargs = {"use_reentrant": False}
    if speed.gradient_checkpointing_mode == "selective":
        kwargs["selective"] = True  # TRL's key for selective activation checkpointing
    if speed.checkpoint_every_n_layers > 1:
        kwargs["every_n_layers"] = speed.checkpoint_every_n_layers
    return kwargs


def _set_checkpointing(sft_config, kwargs: dict | None) -> None:
    # transformers 5.2x renamed `gradient_checkpointing*` to `activation_checkpointing*` and mirrors
    # the two only in `__post_init__`; TRL reads the old names, the Trainer the new ones.
    enabled = kwargs is not None
    for flag, key in (("gradient_checkpointing", "gradient_checkpointing_kwargs"),
                      ("activation_checkpointing", "activation_checkpointing_kwargs")):
        if hasattr(sft_config, flag):
            setattr(sft_config, flag, enabled)
            setattr(sft_config, key, dict(kwargs) if enabled else None)


def apply_liger(model) -> None:
    """Patch Liger's RMSNorm, SwiGLU and RoPE kernels into `model` (not its LM head).

    Uses Liger's public per-architecture API, `apply_liger_kernel_to_llama(model=...)`: every
    model casewise trains (SmolLM2, Llama 3.x) is a Llama.

    Raises:
        SpeedConfigError: liger-kernel is not installed, or the model is not a Llama.
    """
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
    except ImportError as e:
        raise SpeedConfigError(
            "use_liger is on but liger-kernel is not installed: `pip install liger-kernel==0.8.5` "
            "or pass --no_use_liger"
        ) from e
    model_type = model.config.model_type
    if model_type != "llama":
        raise SpeedConfigError(
            f"use_liger supports Llama-architecture models (SmolLM2, Llama 3.x); this one is "
            f"{model_type!r}: pass --no_use_liger"
        )
    apply_liger_kernel_to_llama(
        model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
        fused_linear_cross_entropy=False,
    )


def decoder_layers(model):
    """The decoder layers of a causal LM (or of the model a PEFT wrapper holds)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model.layers


def prepare_model(model, speed: SpeedArgs, on_gpu: bool):
    """Apply the levers that patch the model itself; returns the model.

    Call it on the quantised base model before PEFT wraps it. Checkpointing is only prepared here
    (selective mode wraps `gradient_checkpointing_enable`); the trainer, or the caller, enables it.

    Args:
        model: A transformers causal LM.
        speed: Which levers are on.
        on_gpu: Whether training runs on CUDA; on CPU the model is returned untouched.

    Returns:
        The same model, patched.
    """
    if not on_gpu:
        return model
    # transformers builds the block-diagonal mask from packed position ids only when no KV cache
    # exists; training never needs one, and with checkpointing off the config would create it.
    model.config.use_cache = False
    if speed.keep_bf16 and (getattr(model, "is_loaded_in_4bit", False)
                            or getattr(model, "is_loaded_in_8bit", False)):
        _cast_float32_to_bf16(model)
    current = model.config._attn_implementation or ""
    if (speed.use_padding_free and speed.padding_free_attention != "keep"
            and current not in VARLEN_ATTENTION and not current.startswith("kernels")):
        model.set_attn_implementation(speed.padding_free_attention)
    if speed.use_liger:
        apply_liger(model)
    if speed.gradient_checkpointing_mode == "selective":
        from trl.models.selective_activation_checkpointing import (
            enable_selective_activation_checkpointing,
        )

        enable_selective_activation_checkpointing(model)
    if speed.uncheckpointed_layers and speed.gradient_checkpointing_mode != "off":
        _keep_last_layers(model, speed.uncheckpointed_layers)
    if speed.use_compile:
        for layer in decoder_layers(model):
            layer.compile()
    return model


def _cast_float32_to_bf16(model) -> None:
    import torch

    for param in model.parameters():
        # Quantised weights (Params4bit/Int8Params) are not floating point; skip them by dtype.
        if param.dtype == torch.float32:
            param.data = param.data.to(torch.bfloat16)


def _keep_last_layers(model, k: int) -> None:
    """Wrap `gradient_checkpointing_enable` so the last `k` layers stay un-checkpointed.

    transformers sets every layer's flag when checkpointing is enabled (by the Trainer, from the
    config), so the flags are adjusted after each enable; the same instance-wrapper approach TRL
    uses for selective checkpointing, and transformers calls such a wrapper first.
    """
    if getattr(model.gradient_checkpointing_enable, "_keeps_last", None) == k:
        return
    inner = model.gradient_checkpointing_enable

    def gradient_checkpointing_enable(gradient_checkpointing_kwargs=None, **kwargs):
        out = inner(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs, **kwargs)
        for layer in list(decoder_layers(model))[-k:]:
            layer.gradient_checkpointing = False
        return out

    gradient_checkpointing_enable._keeps_last = k
    model.gradient_checkpointing_enable = gradient_checkpointing_enable


def enable_checkpointing(model, speed: SpeedArgs) -> None:
    """Turn activation checkpointing on or off as `speed` says, as the Trainer does from the config.

    Used by the benchmark's own loop on the base model (before PEFT); `SFTTrainer` does the same
    from `configure_sft_config`'s settings.
    """
    kwargs = checkpointing_kwargs(speed)
    if kwargs is None:
        model.gradient_checkpointing_disable()
        return
    every = kwargs.pop("every_n_layers", 1)
    if kwargs.pop("selective", False):
        from trl.models.selective_activation_checkpointing import (
            enable_selective_activation_checkpointing,
        )

        enable_selective_activation_checkpointing(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs, every_n_layers=every)
    model.enable_input_require_grads()


def per_example_losses(model, sequences, *, padding_free: bool) -> list[float]:
    """Mean next-token loss of each sequence, computed packed (one row) or padded (one row each).

    The correctness check for padding-free packing: both ways must give the same loss per example,
    which holds only if packed examples do not attend to each other. Batches are built by TRL's
    own `DataCollatorForLanguageModeling`, the collator `SFTTrainer` uses.

    Args:
        model: A causal LM (eval mode recommended, so dropout does not differ between the passes).
        sequences: Token id lists, each at least two tokens long.
        padding_free: Pack all sequences into one row with restarting position ids.

    Returns:
        One float per sequence.
    """
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)
    batch = collator([{"input_ids": list(s)} for s in sequences])
    device = next(model.parameters()).device
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids")
              if k in batch}
    with torch.no_grad():
        # A KV cache (use_cache) hides packed position ids from the mask builder: keep it off.
        logits = model(**inputs, use_cache=False).logits.float()
    labels = batch["labels"].to(device)
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = labels[:, 1:]
    nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    losses = []
    if padding_free:
        # Token t of the row belongs to the example whose span holds it; targets at each
        # example's first token are -100 (the collator masks position 0).
        start = 0
        for s in sequences:
            span = slice(start, start + len(s) - 1)
            losses.append(nll[0, span].mean().item())
            start += len(s)
    else:
        for i, s in enumerate(sequences):
            losses.append(nll[i, : len(s) - 1].mean().item())
    return losses


def completion_head_loss(model, inputs: dict, num_items_in_batch=None):
    """The causal-LM loss of `inputs` with the LM head applied to the labelled positions only.

    Args:
        model: A causal LM, or the PEFT model wrapping one (its LoRA layers run in place).
        inputs: The collator's batch (`input_ids`, `attention_mask`, `labels`, ...).
        num_items_in_batch: Labelled tokens of the whole accumulated batch (the Trainer's count);
            the loss is normalised by it, as TRL's SFT loss is, or by this batch's count.

    Returns:
        `(loss, stats)`: the loss and a dict of `entropy_sum`, `correct`, `tokens` (labelled
        positions of this batch) for the trainer's metrics.
    """
    import torch
    import torch.nn.functional as F

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {k: v for k, v in inputs.items() if k not in ("labels", "num_items_in_batch")}
    kwargs["use_cache"] = False
    hidden = inner.model(**kwargs).last_hidden_state[:, :-1]
    labels = inputs["labels"][:, 1:]
    mask = labels != -100
    logp = torch.log_softmax(inner.get_output_embeddings()(hidden[mask]).float(), dim=-1)
    targets = labels[mask]
    nll = F.nll_loss(logp, targets, reduction="sum")
    count = mask.sum() if num_items_in_batch is None else num_items_in_batch
    loss = nll / torch.as_tensor(count, device=nll.device).clamp(min=1)
    with torch.no_grad():  # the metrics reuse the loss's log-probabilities
        stats = {"entropy_sum": float(-(logp.exp() * logp).sum()),
                 "correct": int((logp.argmax(-1) == targets).sum()), "tokens": int(mask.sum())}
    return loss, stats


@functools.cache
def completion_head_trainer(base):
    """`base` (TRL's `SFTTrainer`) with `compute_loss` from `completion_head_loss`.

    The subclass keeps TRL's bookkeeping: the `entropy`, `mean_token_accuracy` and `num_tokens`
    metrics (the training report reads `num_tokens`). Packed (padding-free) batches, other
    loss types and multi-process runs go to TRL's own `compute_loss`.
    """

    class CompletionHeadTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # Several processes (DDP on CPU): the model is wrapped, and its gradients are synced
            # through the wrapper's forward, which calling the backbone directly would skip.
            if (return_outputs or "attention_mask" not in inputs
                    or self.accelerator.num_processes > 1
                    or getattr(self.args, "loss_type", "nll") != "nll"
                    or self.label_smoother is not None):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            loss, stats = completion_head_loss(model, inputs, num_items_in_batch)
            tokens = max(stats["tokens"], 1)
            self._metrics[mode]["entropy"].append(stats["entropy_sum"] / tokens)
            self._metrics[mode]["mean_token_accuracy"].append(stats["correct"] / tokens)
            if mode == "train":
                self._total_train_tokens += int(inputs["attention_mask"].sum())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    return CompletionHeadTrainer
