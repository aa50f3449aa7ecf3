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

Batch size 1 is what `LocalChatModel.complete` does. (To time the whole evaluation pipeline
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
              "load_average_before": [round(x, 2) for x in load],
              "batches": measure(prompts, sizes, args.max_new_tokens),
              "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "eval_speed.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
