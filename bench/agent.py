"""python bench/agent.py [--json] [--n 20] [--adapter PATH] [--backends llama.cpp,transformers]

Agent latency on CPU. Runs the embedded model (SmolLM2-135M-Instruct) through the whole agent
over the first `--n` dev questions of `../shared/data/emanual/qa_dev.jsonl`, against an index of
`smart_tv_manual.pdf` (built under `--home` on first use). The agent streams with drafts on
(`Assistant.stream(..., drafts=True)`), so the model's own tokens are seen as they come, before
verification. Measured per configuration (`KEYS` below says what each JSON key measures):

- `first_token_after_retrieval_s_*`: from the end of retrieval (the retrieve node's last search
  returned) to the model's first generated token: grading, prompt building and prompt processing.
  The issue's "first token <= 1 s after retrieval".
- `first_verified_s_*` / `first_verified_after_retrieval_s_*`: from the question (or from the end
  of retrieval) to the first sentence of the final answer the chat CLI shows (verified, quoted,
  abstained): the whole reasoning generation and verification come before it.
- `ttft_s_*` (from the question: guard + FAQ + retrieval + prompt processing) and
  `ttft_after_retrieval_s_*` (from the moment the prompt is handed to the model) to the model's
  first generated token (the prefilled `Reasoning:` label does not count), as before trust's
  verify step; between that change and this one they measured the first verified sentence.
- `tokens_per_s_mean` (generated tokens over the whole generate step, prompt processing
  included) and `decode_tokens_per_s_mean` (after the first token: decoding alone); same
  tokenizer for every backend. `prompt_tokens_mean`: the prompt's length.
- whole-answer seconds (p50/p95), peak resident memory, and as quality hints the abstain rate
  and how often a citation hits the gold page.

Configurations: `base`, and with an adapter (`--adapter`, default `runs/smollm2-faq` when it
exists) `adapter`, each on every backend of `--backends` (`agent.llm.local_backend`). The first
backend's figures are stored under `base` / `adapter`, the others under `base/<backend>`;
`ratios` compares the first backend with each other one measured in the same run (speed-up of
tokens/s and of time to first token). Each configuration runs in its own process so that peak
memory is its own.

Results go to stdout and `bench/results/agent.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "emanual"
RESULTS = REPO / "bench" / "results"
DEFAULT_ADAPTER = REPO / "runs" / "smollm2-faq"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# What each per-configuration key measures (written into the JSON as `keys`).
KEYS = {
    "first_token_after_retrieval_s": "end of retrieval -> the model's first generated token",
    "first_verified_s": "question -> first sentence of the final (verified) answer shown",
    "first_verified_after_retrieval_s": "end of retrieval -> first sentence of the final answer",
    "ttft_s": "question -> the model's first generated token (prefilled label excluded)",
    "ttft_after_retrieval_s": "prompt handed to the model -> its first generated token",
    "tokens_per_s_mean": "generated tokens / whole generate step (prompt processing included)",
    "decode_tokens_per_s_mean": "(generated tokens - 1) / time from first to last token",
    "prompt_tokens_mean": "tokens of the reasoning prompt (chat template applied)",
    "answer_s": "question -> final answer (whole agent run)",
}


class _TimedSearcher:
    """The agent's searcher, noting when its last search returned (the end of retrieval)."""

    def __init__(self, searcher, clock) -> None:
        self._searcher = searcher
        self._clock = clock
        self.done_at: float | None = None

    def search(self, *args, **kwargs):
        hits = self._searcher.search(*args, **kwargs)
        self.done_at = self._clock()
        return hits

    def __getattr__(self, name):
        return getattr(self._searcher, name)


def measure_question(assistant, question: str, count_tokens, clock=time.perf_counter) -> dict:
    """Ask one question through the whole agent and time its stages from the drafts stream.

    Args:
        assistant: An `agent.api.Assistant`; its searcher is wrapped for this call to note
            the end of retrieval.
        question: The question.
        count_tokens: Text -> number of tokens (the model's tokenizer), for the draft.
        clock: Seconds, monotonic.

    Returns:
        One row: the per-question figures of `KEYS` (`None` where an event did not happen,
        e.g. no model call for a refused question) and the answer's quality hints.
    """
    from dataclasses import replace

    context = assistant.context
    timed = _TimedSearcher(context.searcher, clock)
    assistant.context = replace(context, searcher=timed)
    prefix = context.answer_prefix
    pieces: list[str] = []
    handed = first = last = shown = None
    start = clock()
    try:
        stream = assistant.stream(question, drafts=True)
        while True:
            try:
                kind, text = next(stream)
            except StopIteration as done:
                answer = done.value
                break
            now = clock()
            if kind == "answer":
                shown = shown if shown is not None else now
            elif not pieces and handed is None and prefix and text == prefix:
                handed = now  # the graph writes the label just before it hands the prompt over
            else:
                first = first if first is not None else now
                last = now
                pieces.append(text)
    finally:
        assistant.context = context
    retrieved = timed.done_at

    def since(t0, t1):
        return round(t1 - t0, 3) if t0 is not None and t1 is not None else None

    tokens = count_tokens("".join(pieces)) if pieces else 0
    generate = answer.timings.get("generate", 0.0)
    return {
        "retrieve_ms": round(1000 * answer.timings.get("retrieve", 0.0), 1),
        "first_token_after_retrieval_s": since(retrieved, first),
        "first_verified_s": since(start, shown),
        "first_verified_after_retrieval_s": since(retrieved, shown),
        "ttft_s": since(start, first),
        "ttft_after_retrieval_s": since(handed, first),
        "tokens": tokens,
        "tokens_per_s": round(tokens / generate, 2) if generate and tokens else None,
        "decode_tokens_per_s": (round((tokens - 1) / (last - first), 2)
                                if tokens > 1 and last > first else None),
        "total_s": answer.timings["total"],
        "mode": answer.mode,
        "abstained": answer.abstained,
        "citations": answer.citations,
    }


def summarize(rows: list[dict]) -> dict:
    """p50/p95 (and means for rates) of the per-question rows, under the `KEYS` names."""
    out: dict = {}

    def values(key):
        return [r[key] for r in rows if r.get(key) is not None]

    out["retrieve_ms_p50"] = round(statistics.median(values("retrieve_ms")), 1)
    out["retrieve_ms_p95"] = round(percentile(values("retrieve_ms"), 0.95), 1)
    for key in ("first_token_after_retrieval_s", "first_verified_s",
                "first_verified_after_retrieval_s", "ttft_s", "ttft_after_retrieval_s"):
        found = values(key)
        out[f"{key}_p50"] = round(statistics.median(found), 3) if found else None
        out[f"{key}_p95"] = round(percentile(found, 0.95), 3) if found else None
    for key in ("tokens_per_s", "decode_tokens_per_s", "prompt_tokens"):
        found = values(key)
        out[f"{key}_mean"] = round(statistics.mean(found), 2) if found else None
    totals = values("total_s")
    out["answer_s_p50"] = round(statistics.median(totals), 2)
    out["answer_s_p95"] = round(percentile(totals, 0.95), 2)
    out["abstain_rate"] = round(sum(r["abstained"] for r in rows) / len(rows), 3)
    out["gold_page_cited_rate"] = round(sum(r["cites_gold_page"] for r in rows) / len(rows), 3)
    return out


def run_config(home: Path, n: int, adapter: str | None, max_new_tokens: int,
               backend: str, passage_words: int | None = None,
               passage_tokens: int | None = None) -> dict:
    """Measure one configuration in this process (`passage_words`, `passage_tokens`: the
    agent's `Context.passage_words` and `Context.passage_tokens`, `None` its default)."""
    from agent.api import Assistant
    from agent.llm import chat_prompt, local_backend
    from ingest.pipeline import run
    from retrieval.settings import Settings

    settings = Settings.resolve(home=home)
    if not settings.manifest_path.exists():
        run([DATA / "smart_tv_manual.pdf"], settings, progress=False)
    llm = local_backend("default", adapter=adapter, max_new_tokens=max_new_tokens,
                        backend=backend)
    load_start = time.perf_counter()
    llm.load()
    load_s = time.perf_counter() - load_start
    extra = {} if passage_words is None else {"passage_words": passage_words}
    if passage_tokens is not None:
        extra["passage_tokens"] = passage_tokens
    assistant = Assistant.from_settings(settings, llm, max_new_tokens=max_new_tokens, **extra)
    questions = [json.loads(line) for line in (DATA / "qa_dev.jsonl").open() if line.strip()][:n]
    assistant.ask("warm-up: how do I turn on the TV?")  # first-call costs out of the figures

    def count(text: str) -> int:
        return len(llm._tokenizer(text, add_special_tokens=False).input_ids)

    # The prompt each question's reasoning call sends, recorded on the way to the backend.
    prompts: list[list[dict]] = []
    stream = llm.stream

    def recording_stream(messages, **kwargs):
        prompts.append(messages)
        return stream(messages, **kwargs)

    llm.stream = recording_stream
    rows = []
    for q in questions:
        prompts.clear()
        row = measure_question(assistant, q["question"], count)
        row["prompt_tokens"] = (count(chat_prompt(llm._tokenizer, prompts[0]))
                                if prompts else None)
        row["cites_gold_page"] = any(c.page == q["page"] for c in row.pop("citations"))
        rows.append({"id": q["id"], **row})
    return {
        "backend": backend,
        "backend_name": llm.name,
        "llama_weights": getattr(llm, "weights", None),  # CASEWISE_LLAMA_WEIGHTS: bf16 / q4_1
        "adapter": adapter,
        "passage_words": assistant.context.passage_words,
        "passage_tokens": assistant.context.passage_tokens,
        "questions": len(rows),
        "model_load_s": round(load_s, 2),
        **summarize(rows),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rows": rows,
    }


def ratios(results: dict, backends: list[str]) -> dict:
    """Speed-ups of the first backend over each other one, per configuration, in one run."""
    out = {}
    for config in ("base", "adapter"):
        fast = results.get(config)
        for other in backends[1:]:
            slow = results.get(f"{config}/{other}")
            if not (fast and slow and fast.get("tokens_per_s_mean") and slow["tokens_per_s_mean"]):
                continue
            out[f"{config}: {backends[0]} vs {other}"] = {
                "tokens_per_s": round(fast["tokens_per_s_mean"] / slow["tokens_per_s_mean"], 2),
                "ttft_s_p50": round(slow["ttft_s_p50"] / fast["ttft_s_p50"], 2),
                "answer_s_p50": round(slow["answer_s_p50"] / fast["answer_s_p50"], 2),
                "peak_rss_mb": round(fast["peak_rss_mb"] / slow["peak_rss_mb"], 2),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--n", type=int, default=20, help="dev questions (default 20)")
    parser.add_argument("--home", type=Path, default=REPO / "runs" / "bench" / "emanual-pdf",
                        help="index of smart_tv_manual.pdf (built when missing)")
    parser.add_argument("--adapter", default=None,
                        help=f"LoRA adapter to measure too (default {DEFAULT_ADAPTER} if present)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--configs", default="base,adapter",
                        help="which to run (adapter is skipped when there is none); results are "
                        "merged into an existing bench/results/agent.json")
    parser.add_argument("--backends", default="llama.cpp,transformers",
                        help="local backends to measure, the first one stored as the headline "
                        "figures (default llama.cpp,transformers)")
    parser.add_argument("--passage-words", default=None, metavar="N[,N...]",
                        help="words of each passage the prompt shows (the agent's "
                        "Context.passage_words; 0 = whole passages), one or more values each "
                        "measured in its own process; results are stored under "
                        "'<config>@<N>w' (default: the agent's default, stored under '<config>')")
    parser.add_argument("--passage-tokens", default=None, metavar="N[,N...]",
                        help="token budget of the prompt's passages (the agent's "
                        "Context.passage_tokens; 0 = none), one or more values each measured "
                        "in its own process; results are stored under '<config>@<N>t' "
                        "(default: the agent's default)")
    parser.add_argument("--one", choices=["base", "adapter"], help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    values = {}
    for flag, given, zero in (("--passage-words", args.passage_words, "whole passages"),
                              ("--passage-tokens", args.passage_tokens, "no budget")):
        try:
            values[flag] = [int(w) for w in given.split(",")] if given is not None else [None]
        except ValueError:
            print(f"error: {flag} {given!r}: not a list of integers", file=sys.stderr)
            return 2
        if any(w is not None and w < 0 for w in values[flag]):
            print(f"error: {flag} must be 0 ({zero}) or more", file=sys.stderr)
            return 2
    word_values, token_values = values["--passage-words"], values["--passage-tokens"]
    if not DATA.exists():
        print(f"error: {DATA} not found: this benchmark needs ../shared/data", file=sys.stderr)
        return 1
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one:
        result = run_config(args.home, args.n, args.adapter if args.one == "adapter" else None,
                            args.max_new_tokens, args.backend, word_values[0],
                            token_values[0])
        print(json.dumps(result))
        return 0

    adapter = args.adapter or (str(DEFAULT_ADAPTER) if (DEFAULT_ADAPTER / "adapter_config.json")
                               .is_file() else None)
    wanted = args.configs.split(",")
    backends = args.backends.split(",")
    configs = [c for c in ("base", "adapter") if c in wanted and (c == "base" or adapter)]
    previous = RESULTS / "agent.json"
    results = json.loads(previous.read_text())["configs"] if previous.exists() else {}
    runs = [(config, words, budget) for config in configs for words in word_values
            for budget in token_values]
    for config, words, budget in runs:
        for i, backend in enumerate(backends):
            cmd = [sys.executable, __file__, "--one", config, "--n", str(args.n), "--home",
                   str(args.home), "--max-new-tokens", str(args.max_new_tokens),
                   "--backend", backend]
            if words is not None:
                cmd += ["--passage-words", str(words)]
            if budget is not None:
                cmd += ["--passage-tokens", str(budget)]
            if adapter:
                cmd += ["--adapter", adapter]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            load = os.getloadavg()
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            name = config + ("" if words is None else f"@{words}w") + \
                ("" if budget is None else f"@{budget}t")
            key = name if i == 0 else f"{name}/{backend}"
            results[key] = json.loads(out.stdout.strip().splitlines()[-1])
            results[key]["load_average_before"] = [round(x, 2) for x in load]
    import torch

    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": args.threads or torch.get_num_threads(),
                    "load_average": os.getloadavg()},
        "model": "SmolLM2-135M-Instruct (embedded; llama.cpp: bfloat16 GGUF with the adapter "
                 "merged, or with CASEWISE_LLAMA_WEIGHTS=q4_1 the shipped Q4_1 GGUF with the "
                 "adapter as GGUF LoRA; transformers: dequantised float32), CPU",
        "max_new_tokens": args.max_new_tokens,
        "backends": backends,
        "configs": results,
        "keys": KEYS,
        "ratios": ratios(results, backends),
        "note": "each config measured in its own process, one after another, in this run; "
                "load_average_before says how busy the machine was",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "agent.json").write_text(json.dumps(report, indent=1) + "\n")
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for name, r in results.items():
            print(f"{name}: retrieve {r['retrieve_ms_p50']} ms p50, first token "
                  f"{r.get('first_token_after_retrieval_s_p50')} s after retrieval p50, first "
                  f"verified sentence {r.get('first_verified_s_p50')} s p50, "
                  f"decode {r.get('decode_tokens_per_s_mean')} tok/s, "
                  f"{r['tokens_per_s_mean']} tok/s, answer {r['answer_s_p50']} s p50 / "
                  f"{r['answer_s_p95']} s p95, peak RSS {r['peak_rss_mb']} MB, abstain "
                  f"{r['abstain_rate']}, gold page cited {r['gold_page_cited_rate']}")
        for name, r in report["ratios"].items():
            print(f"{name}: {r['tokens_per_s']}x tokens/s, {r['ttft_s_p50']}x faster first "
                  f"token, {r['answer_s_p50']}x faster answer, {r['peak_rss_mb']}x peak memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
