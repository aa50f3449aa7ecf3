"""Training speed levers (GPU): the contract between the training path and `bench/qlora_gpu.py`.

Owned by the GPU-speed work (issue 6). `finetune.train` parses `SpeedArgs` next to TRL's
`SFTConfig`/`ModelConfig` and calls `configure_sft_config` before building the trainer and
`prepare_model` after loading the quantised model. On CPU every lever is a no-op, so the CPU path
keeps working whatever the flags say.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpeedArgs:
    """Switches for each speed lever; each can be turned off from the CLI (`--no_<name>`).

    Attributes:
        use_liger: Liger kernels (fused linear cross-entropy, RMSNorm, SwiGLU, RoPE). GPU only.
        padding_free: Pack examples into one row with position ids; no attention across examples.
        gradient_checkpointing_mode: `"full"`, `"selective"` or `"off"`.
        torch_compile: Compile the model with `torch.compile`.
    """

    use_liger: bool = field(default=True, metadata={"help": "Liger kernels on GPU."})
    padding_free: bool = field(default=True, metadata={"help": "Padding-free packing on GPU."})
    gradient_checkpointing_mode: str = field(
        default="full", metadata={"help": "full | selective | off"}
    )
    torch_compile: bool = field(default=False, metadata={"help": "torch.compile the model."})

    def __post_init__(self) -> None:
        modes = ("full", "selective", "off")
        if self.gradient_checkpointing_mode not in modes:
            raise ValueError(
                f"gradient_checkpointing_mode ({self.gradient_checkpointing_mode!r}) must be one "
                f"of {', '.join(modes)}"
            )


def configure_sft_config(sft_config, speed: SpeedArgs, on_gpu: bool):
    """Apply the levers that live in TRL's `SFTConfig`; returns the same object.

    Args:
        sft_config: A `trl.SFTConfig` to adjust in place.
        speed: Which levers are on.
        on_gpu: Whether training runs on CUDA; on CPU nothing changes.
    """
    return sft_config


def prepare_model(model, speed: SpeedArgs, on_gpu: bool):
    """Apply the levers that patch the model itself; returns the model."""
    return model
