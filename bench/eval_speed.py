"""python bench/eval_speed.py [--json] [--n 8] [--batch-sizes 1,4,8] [--home DIR]: batched generation for eval.

What one loaded model gains by answering several evaluation prompts per `generate` call, the
lever `eval.batching` uses through a backend's `complete_many`. On the first `--n` dev questions
of `../shared/data/emanual/qa_dev.jsonl`, with the embedded SmolLM2-135M on CPU:

- the agent's prompts (the question with its top-3 passages from an index of
  `smart_tv_manual.pdf` under `--home`, built on first use, and the prefilled `Reasoning:`),
- for each batch size: the prompts in batches of that size (left-padded, greedy, the agent's
  generation settings), wall seconds, seconds per answer, generated tokens per second, and how
  many replies equal the batch-size-1 replies (padding changes float rounding, so greedy
  decoding may drift on near-ties).

Batch size 1 is what `LocalChatModel.complete` does.

`--backend llama.cpp` measures the default backend instead: on the same dev prompts and on the
no-rag prompts of the same questions (no passages), `LlamaCppChatModel.complete` one prompt after
another (what `complete_many` did before it batched) against `complete_many` with at most N
sequences decoded together (`--batch-sizes`, 1 first), with the KV cache split per sequence and
unified (`--kv`), and for each batched reply that differs from the one-by-one reply, where it
parts and by how much the one-by-one choice led there (log-probability gap, nats). (To time the whole evaluation pipeline
batched, run `python -m eval run ... --backend transformers --batch-size N`: the transformers
backend's `complete_many` does this left-padded batching.) Results go to stdout and
`bench/results/eval_speed.json`; run under `flock /tmp/casewise-cpu.lock` and note `uptime`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "emanual"
RESULTS = REPO / "bench" / "results"


def agent_prompts(home: Path, n: int) -> list[list[dict]]:
    """The generation prompts the agent builds for the first `n` dev questions."""
    from finetune.format import build_messages
    from ingest.pipeline import run
    from retrieval.search import open_searcher
    from retrieval.settings import Settings

    settings = Settings.resolve(home=home)
    if not settings.manifest_path.exists():
        run([DATA / "smart_tv_manual.pdf"], settings, progress=False)
    searcher = open_searcher(settings)
    questions = [json.loads(line)["question"] for line in (DATA / "qa_dev.jsonl").open()][:n]
    prompts = []
    for q in questions:
        messages = build_messages(q, searcher.search(q, k=5)[:3])
        messages.append({"role": "assistant", "content": "Reasoning:"})
        prompts.append(messages)
    return prompts


def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int
             ) -> tuple[list[str], int]:
    """Greedy replies to `prompts` in one left-padded batch, and the tokens generated.

    The prompts either all end with a prefilled assistant turn (continued) or none does.
    """
    import torch

    prefilled = prompts[0][-1]["role"] == "assistant"
    inputs = tokenizer.apply_chat_template(
        prompts, add_generation_prompt=not prefilled, continue_final_message=prefilled,
        padding=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             repetition_penalty=1.1, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    new = out[:, inputs["input_ids"].shape[1]:]
    generated = int((new != tokenizer.pad_token_id).sum())
    return tokenizer.batch_decode(new, skip_special_tokens=True), generated


def measure(prompts, batch_sizes: list[int], max_new_tokens: int) -> dict:
    """Seconds, tokens and agreement with batch size 1, per batch size."""
    from finetune.model import load_causal_lm

    model, tokenizer = load_causal_lm("default")
    tokenizer.padding_side = "left"  # a batch's replies must all start where their prompt ends
    generate(model, tokenizer, prompts[:1], 8)  # warm-up: first-call allocations
    results, reference = {}, None
    for size in batch_sizes:
        start, replies, tokens = time.perf_counter(), [], 0
        for i in range(0, len(prompts), size):
            texts, n = generate(model, tokenizer, prompts[i:i + size], max_new_tokens)
            replies += texts
            tokens += n
        seconds = time.perf_counter() - start
        reference = reference or replies
        results[size] = {
            "seconds": round(seconds, 2), "seconds_per_answer": round(seconds / len(prompts), 2),
            "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "same_as_batch_1": sum(a == b for a, b in zip(replies, reference, strict=True)),
        }
        print(f"batch {size:>2}: {seconds:7.1f} s for {len(prompts)} answers "
              f"({results[size]['seconds_per_answer']:.1f} s each, "
              f"{results[size]['tokens_per_s']:.1f} tokens/s), "
              f"{results[size]['same_as_batch_1']}/{len(prompts)} equal to batch 1", flush=True)
    return results


def no_rag_prompts(n: int) -> list[list[dict]]:
    """The no-rag system's prompts (the shared prompt without passages) of the first `n` dev questions."""
    from finetune.format import build_messages

    questions = [json.loads(line)["question"] for line in (DATA / "qa_dev.jsonl").open()][:n]
    return [build_messages(q, []) for q in questions]


def parting(model, prompt: list[dict], got: str, ref: str, limit: int) -> dict:
    """Where a batched reply parts from the one-by-one reply, and the gap at that token."""
    import llama_cpp
    import numpy as np

    from agent.llm import penalise

    tok = model._tokenizer
    a, b = (tok(t, add_special_tokens=False)["input_ids"] for t in (got, ref))
    k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    ids = model._prompt_ids(prompt, limit) + b[:k]
    model._llama.reset()
    model._llama.eval(ids)
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(model._llama.ctx, -1),
                                   shape=(model._llama.n_vocab(),)).astype(np.float64)
    seen = np.zeros(len(logits), dtype=bool)
    seen[ids] = True
    logits = penalise(logits, seen)
    logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    ta, tb = (x[k] if k < len(x) else model._eos for x in (a, b))
    return {"token": k, "of": len(b), "gap_nats": round(float(logp[tb] - logp[ta]), 4)}


def measure_llama(sets: dict, batch_sizes: list[int], kv_modes: list[str], max_new_tokens: int
                  ) -> dict:
    """Per prompt set: one-by-one `complete`, then `complete_many` per batch size and KV mode."""
    from agent.llm import LlamaCppChatModel

    model = LlamaCppChatModel("default", max_new_tokens=max_new_tokens)
    model.load()
    model.complete(next(iter(sets.values()))[0], max_new_tokens=4)  # warm-up
    results = {}
    for name, prompts in sets.items():
        start = time.perf_counter()
        reference = [model.complete(p) for p in prompts]
        seconds = time.perf_counter() - start
        rows = {"one_by_one": {"seconds": round(seconds, 2),
                               "seconds_per_item": round(seconds / len(prompts), 3)}}
        print(f"{name}: one by one {seconds:.1f} s ({seconds / len(prompts):.2f} s each)",
              flush=True)
        for kv in kv_modes:
            for size in batch_sizes:
                if size == 1:
                    continue
                model.kv_unified, model.batch_seqs = kv == "unified", size
                start = time.perf_counter()
                replies = model.complete_many(prompts)
                seconds = time.perf_counter() - start
                partings = [parting(model, p, got, ref, max_new_tokens)
                            for p, got, ref in zip(prompts, replies, reference, strict=True)
                            if got != ref]
                rows[f"batch_{size}_{kv}"] = {
                    "seconds": round(seconds, 2),
                    "seconds_per_item": round(seconds / len(prompts), 3),
                    "speed_up": round(rows["one_by_one"]["seconds"] / seconds, 2),
                    "same_as_one_by_one": len(prompts) - len(partings), "partings": partings}
                print(f"{name}: batch {size} ({kv} KV) {seconds:.1f} s "
                      f"({seconds / len(prompts):.2f} s each, x{rows[f'batch_{size}_{kv}']['speed_up']}), "
                      f"{len(prompts) - len(partings)}/{len(prompts)} equal; partings {partings}",
                      flush=True)
        results[name] = rows
    return results


def main(argv: list[str] | None = None) -> int:
    """Measure and write `bench/results/eval_speed.json`."""
    parser = argparse.ArgumentParser(
        prog="python bench/eval_speed.py", description=__doc__.split("\n\n")[1],
        epilog="example:\n  flock /tmp/casewise-cpu.lock python bench/eval_speed.py --n 8 "
               "--batch-sizes 1,4,8 --home runs/tv-home",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="dev questions (prompts)")
    parser.add_argument("--batch-sizes", default="1,4,8", help="comma-separated, 1 first")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--home", type=Path, default=REPO / "runs" / "tv-home")
    parser.add_argument("--backend", choices=("transformers", "llama.cpp"),
                        default="transformers")
    parser.add_argument("--kv", default="split", help="llama.cpp: comma-separated KV modes "
                        "of the batch context, split (one stream a sequence) and/or unified")
    parser.add_argument("--sets", default="no-rag,base",
                        help="llama.cpp: comma-separated prompt sets, no-rag and/or base")
    parser.add_argument("--json", action="store_true", help="print the JSON result")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    load = os.getloadavg()
    prompts = agent_prompts(args.home, args.n)
    result = {"n": len(prompts), "max_new_tokens": args.max_new_tokens, "cpus": os.cpu_count(),
              "backend": args.backend, "load_average_before": [round(x, 2) for x in load]}
    if args.backend == "llama.cpp":
        kv_modes = [k.strip() for k in args.kv.split(",") if k.strip()]
        sets = {"no-rag": no_rag_prompts(args.n), "base": prompts}
        chosen = {k.strip(): sets[k.strip()] for k in args.sets.split(",") if k.strip()}
        result["sets"] = measure_llama(chosen, sizes, kv_modes, args.max_new_tokens)
    else:
        result["batches"] = measure(prompts, sizes, args.max_new_tokens)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "eval_speed_llama.json" if args.backend == "llama.cpp" else "eval_speed.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
