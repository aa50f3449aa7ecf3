"""python bench/llama_levers.py [--n 8] [--adapter DIR] [--variants bf16,q8_0,...] [--rounds 2]

llama.cpp settings measured on the same prompts, in one process: the time to the first token
(the agent's `LlamaCppChatModel._generate`: tokenise, evaluate the prompt tokens not in the KV
cache, pick the first token) and the decode rate of the next tokens, for each variant of weights
and context options. The prompts are the reasoning prompts the agent builds for the first `--n`
e-manual dev questions (`../shared/data/emanual/qa_dev.jsonl`, index of `smart_tv_manual.pdf`
under `--home`, built on first use), recorded once with a model that writes nothing (grading and
prompt building are model-free, so every variant sees the same prompts).

A variant is `WEIGHTS[+OPTION...]`:

- `WEIGHTS`: `bf16`, `f16`, `q8_0` (the embedded model with `--adapter` merged, built by
  `finetune.export.cached_dense_gguf`, cached), `q4_0` or `iq4_nl` (quantised here from the f16
  file, cached beside it), or `q4_1` (the shipped Q4_1 file, the adapter applied as GGUF LoRA at
  run time);
- options: `fa` (flash attention), `kv=f32|f16|bf16|q8_0` (KV cache type, K and V), `tb=N`
  (`n_threads_batch`), `t=N` (`n_threads`), `ub=N` (`n_ubatch`).

Each variant is loaded once and warmed with one prompt (the shared system prefix then sits in its
KV cache, as in the agent), then every prompt goes through every variant in turn, the order
rotated per prompt, `--rounds` times. Results go to stdout and `bench/results/llama_levers.json`
(per-run rows, the load average before and after each round).

Examples:
    python bench/llama_levers.py --n 8 --variants bf16,q8_0,bf16+kv=f32
    python bench/llama_levers.py --adapter /work/adapters/smollm2-gpu --variants bf16,q8_0
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import doc_parser  # noqa: E402
from bench.agent import percentile  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "emanual"
RESULTS = REPO / "bench" / "results"
KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8, "bf16": 30}  # ggml_type values


class _Recorder:
    """A backend that writes nothing and keeps the messages of every call."""

    name = "recorder"

    def __init__(self) -> None:
        self.prompts: list[list[dict]] = []

    def stream(self, messages, *, max_new_tokens=256):
        self.prompts.append(messages)
        return iter(())

    def complete(self, messages, *, max_new_tokens=256):
        self.prompts.append(messages)
        return ""


def record_prompts(home: Path, n: int) -> list[list[dict]]:
    """The reasoning prompt of each of the first `n` dev questions that reaches the model."""
    from agent.api import Assistant
    from ingest.pipeline import run
    from retrieval.settings import Settings

    settings = Settings.resolve(home=home)
    if not settings.manifest_path.exists():
        run([DATA / "smart_tv_manual.pdf"], settings, progress=False)
    recorder = _Recorder()
    assistant = Assistant.from_settings(settings, recorder)
    questions = [json.loads(line) for line in (DATA / "qa_dev.jsonl").open() if line.strip()]
    prompts = []
    try:
        for q in questions:
            if len(prompts) == n:
                break
            recorder.prompts.clear()
            assistant.ask(q["question"])
            if recorder.prompts:
                prompts.append(recorder.prompts[0])
    finally:
        assistant.close()
    return prompts


def parse_variant(spec: str) -> tuple[str, dict]:
    """`q8_0+kv=f32+tb=1` -> ("q8_0", {"type_k": 0, "type_v": 0, "n_threads_batch": 1})."""
    weights, *options = spec.split("+")
    if weights not in ("bf16", "f16", "q8_0", "q4_0", "iq4_nl", "q4_1"):
        raise SystemExit(f"error: variant {spec!r}: unknown weights {weights!r}")
    kwargs: dict = {}
    for option in options:
        key, _, value = option.partition("=")
        if key == "fa":
            kwargs["flash_attn"] = True
        elif key == "kv" and value in KV_TYPES:
            kwargs["type_k"] = kwargs["type_v"] = KV_TYPES[value]
        elif key in ("tb", "t", "ub") and value.isdigit():
            kwargs[{"tb": "n_threads_batch", "t": "n_threads", "ub": "n_ubatch"}[key]] = int(value)
        else:
            raise SystemExit(f"error: variant {spec!r}: unknown option {option!r}")
    return weights, kwargs


def weights_file(weights: str, adapter: str | None) -> tuple[Path, str | None]:
    """The GGUF file of `weights` (built once, cached) and the GGUF LoRA to apply, if any."""
    from finetune.export import cached_dense_gguf
    from finetune.model import check_adapter_dir, embedded_gguf_path

    adapter_dir = check_adapter_dir(adapter) if adapter else None
    if weights == "q4_1":
        if adapter_dir is None:
            return embedded_gguf_path(), None
        from agent.llm import LlamaCppChatModel
        from finetune.model import resolve_base_model

        base = embedded_gguf_path()
        return base, str(LlamaCppChatModel._lora(adapter_dir, resolve_base_model("default"), base))
    if weights not in ("q4_0", "iq4_nl"):
        return cached_dense_gguf(adapter_dir, weights), None
    # 4-bit blocks of 32 that llama.cpp repacks for its AVX2 kernels; not a weights choice of the
    # agent (with the adapter they change its replies: docs/speed.md, eighth pass), so quantised
    # here from the cached f16 file
    import llama_cpp

    f16 = cached_dense_gguf(adapter_dir, "f16")
    target = f16.with_name(f"{f16.stem}-{weights}.gguf")
    if not target.is_file():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = {"q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
                        "iq4_nl": llama_cpp.LLAMA_FTYPE_MOSTLY_IQ4_NL}[weights]
        params.nthread = os.cpu_count() or 1
        tmp = target.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), params):
            raise SystemExit(f"error: could not quantise {f16} to {weights}")
        os.replace(tmp, target)
    return target, None


def load_variant(spec: str, adapter: str | None):
    """A `LlamaCppChatModel` whose llama.cpp model is the variant's file and settings."""
    import llama_cpp

    from agent.llm import LlamaCppChatModel
    from finetune.model import load_tokenizer, resolve_base_model

    weights, kwargs = parse_variant(spec)
    gguf, lora = weights_file(weights, adapter)
    model = LlamaCppChatModel("default", adapter=adapter,
                              weights="q4_1" if weights == "q4_1" else "bf16")
    model.load = lambda: None  # loaded here, with the variant's file and settings
    threads = model.threads
    params = {"n_ctx": model.n_ctx, "n_batch": 512, "n_threads": threads,
              "n_threads_batch": threads, **kwargs}
    model._llama = llama_cpp.Llama(model_path=str(gguf), lora_path=lora, verbose=False, **params)
    model._tokenizer = load_tokenizer(resolve_base_model("default"))
    model._eos = model._tokenizer.eos_token_id
    size_mb = round(gguf.stat().st_size / 2**20, 1)
    return model, {"file": str(gguf), "lora": lora, "size_mb": size_mb, **params}


def time_prompt(model, messages: list[dict], decode_tokens: int) -> dict:
    """First-token seconds (prompt tokens not cached included) and the decode rate after it."""
    llm = model._llama
    cached = list(llm.input_ids[:llm.n_tokens])
    start = time.perf_counter()
    tokens = model._generate(messages, decode_tokens + 1)
    first = last = None
    count = 0
    ids_out = []
    try:
        for token in tokens:
            ids_out.append(token)
            count += 1
            last = time.perf_counter()
            first = first or last
    finally:
        tokens.close()
    from agent.llm import common_prefix_len

    ids = model._prompt_ids(messages, 1)
    return {"first_token_s": round(first - start, 4) if first else None,
            "prompt_tokens": len(ids), "new_tokens": len(ids) - common_prefix_len([cached, ids]),
            "decode_tokens_per_s": round((count - 1) / (last - first), 2)
            if count > 1 and last > first else None,
            "generated": count, "tokens": ids_out}


def agreement(rows: list[dict], reference: list[dict]) -> float:
    """Mean share of the greedy tokens (up to the first difference) equal to the reference's."""
    shares = []
    for row, ref in zip(rows, reference, strict=True):
        same = next((i for i, (a, b) in enumerate(zip(row["tokens"], ref["tokens"]))
                     if a != b), min(len(row["tokens"]), len(ref["tokens"])))
        shares.append(same / max(1, len(ref["tokens"])))
    return round(statistics.mean(shares), 3)


def summary(rows: list[dict]) -> dict:
    """Mean / p50 / max first token, mean decode rate, ms per new prompt token."""
    firsts = [r["first_token_s"] for r in rows if r["first_token_s"] is not None]
    rates = [r["decode_tokens_per_s"] for r in rows if r["decode_tokens_per_s"]]
    return {
        "runs": len(rows),
        "first_token_mean_s": round(statistics.mean(firsts), 3),
        "first_token_p50_s": round(statistics.median(firsts), 3),
        "first_token_p95_s": round(percentile(firsts, 0.95), 3),
        "first_token_max_s": round(max(firsts), 3),
        "ms_per_new_token": round(1000 * sum(firsts) / sum(r["new_tokens"] for r in rows), 2),
        "decode_tokens_per_s_mean": round(statistics.mean(rates), 1) if rates else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = doc_parser(__doc__, "python bench/llama_levers.py")
    parser.add_argument("--n", type=int, default=8, help="dev questions (default 8)")
    parser.add_argument("--adapter", default=None, metavar="DIR", help="LoRA adapter to merge")
    parser.add_argument("--variants", default="bf16,q8_0", help="comma-separated (see above)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--home", type=Path, default=REPO / "runs" / "bench" / "emanual-pdf")
    parser.add_argument("--out", type=Path, default=RESULTS / "llama_levers.json")
    args = parser.parse_args(argv)
    if not DATA.exists():
        print(f"error: {DATA} not found: this benchmark needs ../shared/data", file=sys.stderr)
        return 1
    specs = args.variants.split(",")
    for spec in specs:
        parse_variant(spec)
    prompts = record_prompts(args.home, args.n)
    models, settings = {}, {}
    for spec in specs:
        t0 = time.perf_counter()
        models[spec], settings[spec] = load_variant(spec, args.adapter)
        settings[spec]["load_s"] = round(time.perf_counter() - t0, 2)
        time_prompt(models[spec], prompts[-1], 1)  # warm-up: the system prefix into the cache
    rows: dict[str, list[dict]] = {spec: [] for spec in specs}
    loads = []
    for r in range(args.rounds):
        before = os.getloadavg()[0]
        for i, messages in enumerate(prompts):
            shift = (i + r) % len(specs)
            for spec in specs[shift:] + specs[:shift]:
                row = time_prompt(models[spec], messages, args.decode_tokens)
                rows[spec].append({"round": r, "prompt": i, **row})
        loads.append({"round": r, "load_before": before, "load_after": os.getloadavg()[0],
                      "utc": time.strftime("%H:%M:%S", time.gmtime())})
    result = {
        # the greedy tokens each variant shares with the first one's, from the start
        "variants": {spec: {"settings": settings[spec], **summary(rows[spec]),
                            "same_tokens_as_first": agreement(rows[spec], rows[specs[0]]),
                            "rows": rows[spec]} for spec in specs},
        "adapter": args.adapter, "prompts": len(prompts), "rounds": loads,
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": len(os.sched_getaffinity(0))},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'variant':24} {'mean':>6} {'p50':>6} {'p95':>6} {'max':>6} {'ms/tok':>7} "
          f"{'tok/s':>6} {'same':>5}")
    for spec in specs:
        s = result["variants"][spec]
        print(f"{spec:24} {s['first_token_mean_s']:6.3f} {s['first_token_p50_s']:6.3f} "
              f"{s['first_token_p95_s']:6.3f} {s['first_token_max_s']:6.3f} "
              f"{s['ms_per_new_token']:7.2f} {s['decode_tokens_per_s_mean']:6.1f} "
              f"{s['same_tokens_as_first']:5.2f}")
    spans = ", ".join(f"{x['load_before']:.2f}->{x['load_after']:.2f}" for x in loads)
    print(f"load average per round {spans}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
