"""GGUF files for llama.cpp and Ollama: a merged model export, and LoRA adapters as GGUF LoRA.

    python -m finetune export --gguf out/casewise.gguf --adapter runs/smollm2-faq --quant q4_k_m

- `export_gguf` merges a PEFT LoRA adapter into its base model (or takes the base alone) and
  writes one GGUF file that llama.cpp (`llama-cli`, `llama-server`, llama-cpp-python) and Ollama
  load, plus an Ollama `Modelfile` beside it carrying the chat template, the stop tokens and the
  greedy decoding the agent uses. `f16` is written directly with the `gguf` package; `q8_0` and
  `q4_k_m` are then quantised by llama.cpp's own quantiser (`llama_model_quantize` through
  llama-cpp-python), so the k-quant mixes are exactly llama.cpp's.
- `cached_gguf_lora` converts a PEFT adapter into a GGUF LoRA file (what llama.cpp's
  `convert_lora_to_gguf.py` writes) once per adapter content, for the agent's llama.cpp backend,
  which applies it at run time on top of the embedded GGUF.

Only the Llama architecture is supported (the embedded SmolLM2, Llama 3.x): its q/k projections
need the rotary-layout permutation that llama.cpp's converter applies, reproduced here. Other
architectures get a `UsageError` pointing at llama.cpp's `convert_hf_to_gguf.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.errors import CasewiseError, UsageError

QUANTS = ("q4_k_m", "q8_0", "bf16", "f16")
DEFAULT_QUANT = "q4_k_m"
# PEFT target module -> the base tensor llama.cpp applies a LoRA pair to.
_LORA_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
# llama.cpp's tokenizer pre-processing is chosen by name; its converter detects the name from a
# hash of how the tokenizer splits a fixed text (`chktxt` in llama.cpp's conversion/base.py).
# The hashes of the tokenizers casewise ships or documents; others get llama.cpp's default.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
    "sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
}


class ExportError(CasewiseError):
    """Writing or quantising the GGUF file failed."""


@dataclass
class ExportResult:
    """What `export_gguf` wrote.

    Attributes:
        gguf: The model file.
        modelfile: The Ollama Modelfile beside it.
        quant: Quantisation of `gguf`.
        size_mb: Size of `gguf` in MiB.
        notes: Things the user should know (fallback pre-tokenizer, ...).
    """

    gguf: Path
    modelfile: Path
    quant: str
    size_mb: float
    notes: list[str]


# --- Llama layout -------------------------------------------------------------------------------


def _llama_config(config: dict, source: str) -> dict:
    """The hyperparameters llama.cpp needs, after checking the model is a Llama."""
    if config.get("model_type") != "llama":
        raise UsageError(
            f"{source}: GGUF export supports Llama-architecture models (SmolLM2, Llama 3.x), "
            f"not model_type {config.get('model_type')!r}; use llama.cpp's convert_hf_to_gguf.py"
        )
    n_head = int(config["num_attention_heads"])
    return {
        "n_layer": int(config["num_hidden_layers"]),
        "n_head": n_head,
        "n_head_kv": int(config.get("num_key_value_heads") or n_head),
        "hidden": int(config["hidden_size"]),
        "head_dim": int(config.get("head_dim") or config["hidden_size"] // n_head),
    }


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout of a q/k projection (rows) -> the interleaved layout llama.cpp uses."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _tensor_name_map(n_layer: int):
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)


def _gguf_name(name_map, hf_name: str) -> str:
    name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise ExportError(f"no GGUF name for tensor {hf_name} (not a Llama tensor?)")
    return name


# --- LoRA adapters --------------------------------------------------------------------------------


def lora_unsupported_reason(adapter: str | Path) -> str | None:
    """Why llama.cpp cannot apply this PEFT adapter as a GGUF LoRA, or `None` when it can.

    Args:
        adapter: PEFT adapter directory.
    """
    config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        return f"peft_type {config.get('peft_type')} is not LoRA"
    if config.get("use_dora"):
        return "DoRA adapters are not supported by llama.cpp"
    if config.get("modules_to_save"):
        return f"modules_to_save {config['modules_to_save']} (fully trained modules) are not LoRA"
    if config.get("alpha_pattern"):
        return "alpha_pattern (per-module alpha) cannot be expressed in one GGUF LoRA alpha"
    targets = config.get("target_modules")
    if isinstance(targets, str) and targets != "all-linear":
        return f"target_modules is a pattern ({targets!r})"
    # PEFT saves `all-linear` expanded, as full module names ("model.layers.0.mlp.up_proj").
    names = {t.rsplit(".", 1)[-1] for t in targets} if isinstance(targets, list) else set()
    extra = names - _LORA_MODULES
    if extra:
        return f"target modules {sorted(extra)} are not attention/MLP projections"
    return None


def adapter_to_gguf_lora(adapter: str | Path, out: str | Path, base_config: dict) -> Path:
    """Write a PEFT LoRA adapter as a GGUF LoRA file (llama.cpp's `--lora` format).

    Args:
        adapter: PEFT adapter directory (`adapter_config.json`, `adapter_model.safetensors`).
        out: The `.gguf` file to write.
        base_config: The base model's `config.json` as a dict (layer and head counts).

    Returns:
        `out` as a `Path`.

    Raises:
        UsageError: The adapter cannot be applied by llama.cpp (see `lora_unsupported_reason`).
    """
    import gguf
    # torch, not numpy: numpy has no bfloat16, the dtype the shipped adapter is stored in
    from safetensors.torch import load_file

    adapter = Path(adapter)
    reason = lora_unsupported_reason(adapter)
    if reason:
        raise UsageError(f"adapter {adapter} cannot be converted to GGUF LoRA: {reason}")
    hp = _llama_config(base_config, str(adapter))
    config = json.loads((adapter / "adapter_config.json").read_text())
    r = int(config["r"])
    alpha = float(config["lora_alpha"])
    if config.get("use_rslora"):
        alpha *= math.sqrt(r)  # PEFT scales by alpha/sqrt(r), llama.cpp by alpha/r
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    name_map = _tensor_name_map(hp["n_layer"])
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for key in sorted(weights):
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        a = weights[key].float().numpy()
        b = weights[key.replace(".lora_A.", ".lora_B.")].float().numpy()
        if module.endswith("q_proj"):
            b = _permute(b, hp["n_head"])
        elif module.endswith("k_proj"):
            b = _permute(b, hp["n_head_kv"])
        name = _gguf_name(name_map, module + ".weight")
        # lora_a is (r, in) and lora_b (out, r), as PEFT stores them; GGUF reverses the dims.
        writer.add_tensor(name + ".lora_a", np.ascontiguousarray(a))
        writer.add_tensor(name + ".lora_b", np.ascontiguousarray(b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)


def cached_gguf_lora(adapter: str | Path, base_config: dict) -> Path:
    """The GGUF LoRA version of `adapter`, converted once per adapter content and cached.

    The cache key hashes the adapter's weights and config, so retraining into the same directory
    converts again. Files live under `<cache_root>/lora/`.

    Raises:
        UsageError: The adapter cannot be applied by llama.cpp.
    """
    from finetune.model import cache_root

    adapter = Path(adapter)
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update((adapter / name).read_bytes())
    target = cache_root() / "lora" / f"{digest.hexdigest()[:24]}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".gguf", dir=target.parent)
    os.close(fd)
    try:
        adapter_to_gguf_lora(adapter, tmp, base_config)
        os.replace(tmp, target)  # atomic: a killed conversion never leaves a half file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def cached_dense_gguf(adapter: str | Path | None, quant: str = "bf16", *,
                      build: bool = True) -> Path:
    """The embedded model, with `adapter` merged in, as a dense GGUF file; built once, cached.

    Prompt processing on CPU is matrix products over the whole prompt: llama.cpp's bfloat16
    kernels (AVX-512 BF16) do them about twice as fast as its Q4_1 ones, and a merged adapter
    costs nothing per token where a run-time GGUF LoRA adds its own products (docs/speed.md).
    The key hashes the embedded GGUF (path, size, time) and the adapter's weights and config, so
    a retrained adapter is merged again. Files live under `<cache_root>/gguf/`.

    Args:
        adapter: PEFT adapter directory trained on the embedded model, or `None`.
        quant: One of `QUANTS`.
        build: Build the file when it is not cached yet (`False`: only say where it would be).

    Returns:
        The cached `.gguf` file.

    Raises:
        UsageError: The adapter is not a PEFT adapter of a Llama-architecture model.
        ExportError: Writing or quantising failed.
    """
    from finetune.model import cache_root, embedded_gguf_path

    embedded = embedded_gguf_path()
    stat = embedded.stat()
    digest = hashlib.sha256(f"{embedded}|{stat.st_size}|{stat.st_mtime_ns}|{quant}".encode())
    if adapter is not None:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            digest.update((Path(adapter) / name).read_bytes())
    target = cache_root() / "gguf" / f"{digest.hexdigest()[:24]}.gguf"
    if build and not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        what = "the embedded model" + (f" with the adapter {adapter}" if adapter else "")
        print(f"casewise: converting {what} to a {quant} GGUF for llama.cpp, once (cached as "
              f"{target})", file=sys.stderr, flush=True)
        # export_gguf writes through a temporary file and renames: never half a file.
        export_gguf(target, adapter=str(adapter) if adapter else None, base="default",
                    quant=quant)
        (target.parent / "Modelfile").unlink(missing_ok=True)
    return target


# --- whole-model export ---------------------------------------------------------------------------


def _pre_tokenizer(tokenizer) -> str | None:
    chkhsh = hashlib.sha256(str(tokenizer.encode(_CHKTXT)).encode()).hexdigest()
    return _PRE_TOKENIZERS.get(chkhsh)


def _add_tokenizer(writer, tokenizer, model_dir: str, vocab_size: int, notes: list[str]) -> None:
    """The BPE vocabulary, merges, special tokens and chat template, as llama.cpp reads them."""
    import gguf

    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if added[i].special
                         else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    pre = _pre_tokenizer(tokenizer)
    if pre is None:
        pre = "default"
        notes.append("tokenizer not recognised: llama.cpp will use its default pre-tokenizer "
                     "(convert with llama.cpp's convert_hf_to_gguf.py for an exact match)")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True)
    special.add_to_gguf(writer)
    if not special.chat_template and tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _write_f16(model, tokenizer, model_dir: str, out: Path, name: str, notes: list[str]) -> None:
    """Write the dense model as GGUF: 2-D weights float16, norms (1-D) float32."""
    import gguf

    config = model.config.to_dict()
    hp = _llama_config(config, name)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(hp["hidden"])
    writer.add_block_count(hp["n_layer"])
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(hp["n_head"])
    writer.add_head_count_kv(hp["n_head_kv"])
    writer.add_rope_dimension_count(hp["head_dim"])
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta") or config.get("rope_theta") or 1e4))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    _add_tokenizer(writer, tokenizer, model_dir, int(config["vocab_size"]), notes)
    if (rope.get("rope_type") or rope.get("type")) == "llama3":
        writer.add_tensor("rope_freqs.weight", _llama3_rope_factors(rope, hp["head_dim"]))
    name_map = _tensor_name_map(hp["n_layer"])
    tied = bool(config.get("tie_word_embeddings"))
    for key, tensor in model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        data = tensor.detach().float().cpu().numpy()
        if key.endswith("q_proj.weight"):
            data = _permute(data, hp["n_head"])
        elif key.endswith("k_proj.weight"):
            data = _permute(data, hp["n_head_kv"])
        data = data.astype(np.float16) if data.ndim == 2 else data.astype(np.float32)
        writer.add_tensor(_gguf_name(name_map, key), np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """Llama 3.1's rope frequency factors (the `rope_freqs` tensor llama.cpp's converter adds)."""
    base = float(rope.get("rope_theta", 10000.0))
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old = float(rope.get("original_max_position_embeddings", 8192))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _quantize(src: Path, dst: Path, quant: str) -> None:
    try:
        import llama_cpp
    except ImportError:
        raise UsageError(
            f"--quant {quant} needs llama-cpp-python (built by `make setup`); --quant f16 works "
            "without it"
        ) from None
    ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
             "bf16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
             "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[quant]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    # llama.cpp logs every tensor it converts (hundreds of lines) through llama-cpp-python's
    # logger; keep its errors only.
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        failed = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    finally:
        log.setLevel(level)
    if failed:
        raise ExportError(f"llama.cpp could not quantise {src} to {quant}")


def modelfile_text(gguf_name: str, tokenizer, max_new_tokens: int = 256) -> str:
    """An Ollama Modelfile for the exported file: chat template, stop tokens, greedy decoding.

    Ollama's templates are Go templates, not Jinja; the ChatML layout of SmolLM2 (and any model
    whose template uses `<|im_start|>`) is written out in Go template form, and Llama 3's header
    layout likewise. Other templates fall back to Ollama reading the GGUF's own Jinja template.
    """
    template = tokenizer.chat_template or ""
    eos = tokenizer.eos_token
    lines = [f"FROM ./{gguf_name}", ""]
    if "<|im_start|>" in template:
        lines += [
            'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}',
            '{{ .Content }}<|im_end|>',
            '{{ end }}<|im_start|>assistant',
            '"""',
        ]
        stops = ["<|im_end|>", "<|im_start|>"]
    elif "<|start_header_id|>" in template:
        lines += [
            'TEMPLATE """{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>',
            '',
            '{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>',
            '',
            '"""',
        ]
        stops = ["<|eot_id|>", "<|start_header_id|>"]
    else:
        stops = [eos] if eos else []
    if eos and eos not in stops:
        stops.append(eos)
    lines.append("")
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    # The agent decodes greedily with a mild repetition penalty (agent.llm); match it.
    lines += ["PARAMETER temperature 0", "PARAMETER repeat_penalty 1.1",
              f"PARAMETER num_predict {max_new_tokens}"]
    return "\n".join(lines) + "\n"


def export_gguf(out: str | Path, adapter: str | None = None, base: str | None = None,
                quant: str = DEFAULT_QUANT) -> ExportResult:
    """Merge `adapter` into its base (or take the base alone) and write GGUF + Ollama Modelfile.

    Args:
        out: The `.gguf` file to write; `Modelfile` goes into the same directory.
        adapter: PEFT adapter directory, or `None` to export the base model.
        base: Base model; default the adapter's recorded base, else `"default"` (embedded).
        quant: `q4_k_m` (default, smallest), `q8_0` or `f16`.

    Returns:
        What was written.

    Raises:
        UsageError: Bad quant, output path, adapter, or a non-Llama model.
        ExportError: Writing or quantising failed.
    """
    from finetune.model import load_causal_lm, resolve_base_model

    if quant not in QUANTS:
        raise UsageError(f"--quant {quant!r}: choose one of {', '.join(QUANTS)}")
    out = Path(out)
    if out.suffix != ".gguf":
        raise UsageError(f"--gguf {out}: the output file must end in .gguf")
    if out.is_dir():
        raise UsageError(f"--gguf {out} is a directory: give a file name ending in .gguf")
    if base is None:
        base = _recorded_base(adapter) if adapter else "default"
    model_dir = resolve_base_model(base)
    model, tokenizer = load_causal_lm(base, adapter=adapter)
    if adapter is not None:
        model = model.merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    name = Path(adapter).name if adapter else Path(model_dir).name
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        f16 = Path(tmp) / "model-f16.gguf"
        _write_f16(model, tokenizer, model_dir, f16, name, notes)
        final = Path(tmp) / "model.gguf"
        if quant == "f16":
            final = f16
        else:
            _quantize(f16, final, quant)
        os.replace(final, out)
    modelfile = out.parent / "Modelfile"
    modelfile.write_text(modelfile_text(out.name, tokenizer))
    return ExportResult(out, modelfile, quant, round(out.stat().st_size / 2**20, 1), notes)


def _recorded_base(adapter: str) -> str:
    """The base an adapter was trained on: `casewise.json`, else PEFT's record."""
    from finetune.model import check_adapter_dir

    path = check_adapter_dir(adapter)
    meta = path / "casewise.json"
    if meta.is_file():
        return json.loads(meta.read_text())["base_model"]
    return json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]

