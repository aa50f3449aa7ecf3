"""python bench/agent.py [--json] [--n 20] [--adapter PATH] [--backends llama.cpp,transformers]

Agent latency on CPU. Runs the embedded model (SmolLM2-135M-Instruct) through the whole agent
over the first `--n` dev questions of `../shared/data/emanual/qa_dev.jsonl`, against an index of
`smart_tv_manual.pdf` (built under `--home` on first use). Measured per configuration: retrieval
ms, time to first generated token from the question (`ttft_s_*`: guard + FAQ + retrieval +
prompt processing; the prefilled `Reasoning:` label does not count) and from the moment the
prompt is handed to the model (`ttft_after_retrieval_s_*`), generated tokens per second (same
tokenizer for every backend; `tokens_per_s_*` over the whole generate step, prompt processing
included, `decode_tokens_per_s_mean` after the first token), whole-answer seconds (p50/p95),
peak resident memory, and as quality hints the abstain rate and how often a citation hits the
gold page.

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


def run_config(home: Path, n: int, adapter: str | None, max_new_tokens: int,
               backend: str) -> dict:
    """Measure one configuration in this process."""
    from agent.api import Assistant
    from agent.llm import local_backend
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
    assistant = Assistant.from_settings(settings, llm, max_new_tokens=max_new_tokens)
    questions = [json.loads(line) for line in (DATA / "qa_dev.jsonl").open() if line.strip()][:n]
    assistant.ask("warm-up: how do I turn on the TV?")  # first-call costs out of the figures
    rows = []
    for q in questions:
        start = time.perf_counter()
        first = handed = None
        stream = assistant.stream(q["question"])
        pieces = []
        prefix = assistant.context.answer_prefix
        while True:
            try:
                piece = next(stream)
            except StopIteration as done:
                answer = done.value
                break
            if not pieces and prefix and piece == prefix:
                # The graph writes the label just before it hands the prompt to the model.
                handed = time.perf_counter() - start
                continue  # the prefilled label is not a generated token
            first = first if first is not None else time.perf_counter() - start
            pieces.append(piece)
        tokens = len(llm._tokenizer("".join(pieces)).input_ids) if pieces else 0
        generate = answer.timings.get("generate", 0.0)
        rows.append({
            "id": q["id"],
            "retrieve_ms": round(1000 * answer.timings.get("retrieve", 0.0), 1),
            "ttft_s": round(first, 3) if first is not None else None,
            "ttft_after_retrieval_s": (round(first - handed, 3)
                                       if first is not None and handed is not None else None),
            "tokens": tokens,
            "tokens_per_s": round(tokens / generate, 2) if generate and tokens else None,
            # After the first token: decoding alone, without the prompt processing.
            "decode_tokens_per_s": (round((tokens - 1) / (generate - (first - handed)), 2)
                                    if tokens > 1 and first is not None and handed is not None
                                    and generate > first - handed else None),
            "total_s": answer.timings["total"],
            "abstained": answer.abstained,
            "cites_gold_page": any(c.page == q["page"] for c in answer.citations),
        })
    totals = [r["total_s"] for r in rows]
    ttfts = [r["ttft_s"] for r in rows if r["ttft_s"] is not None]
    after = [r["ttft_after_retrieval_s"] for r in rows if r["ttft_after_retrieval_s"] is not None]
    speeds = [r["tokens_per_s"] for r in rows if r["tokens_per_s"]]
    decode = [r["decode_tokens_per_s"] for r in rows if r["decode_tokens_per_s"]]
    return {
        "backend": backend,
        "backend_name": llm.name,
        "adapter": adapter,
        "questions": len(rows),
        "model_load_s": round(load_s, 2),
        "retrieve_ms_p50": round(statistics.median(r["retrieve_ms"] for r in rows), 1),
        "retrieve_ms_p95": round(percentile([r["retrieve_ms"] for r in rows], 0.95), 1),
        "ttft_s_p50": round(statistics.median(ttfts), 3) if ttfts else None,
        "ttft_s_p95": round(percentile(ttfts, 0.95), 3) if ttfts else None,
        "ttft_after_retrieval_s_p50": round(statistics.median(after), 3) if after else None,
        "ttft_after_retrieval_s_p95": round(percentile(after, 0.95), 3) if after else None,
        "tokens_per_s_mean": round(statistics.mean(speeds), 2) if speeds else None,
        "decode_tokens_per_s_mean": round(statistics.mean(decode), 2) if decode else None,
        "answer_s_p50": round(statistics.median(totals), 2),
        "answer_s_p95": round(percentile(totals, 0.95), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "abstain_rate": round(sum(r["abstained"] for r in rows) / len(rows), 3),
        "gold_page_cited_rate": round(sum(r["cites_gold_page"] for r in rows) / len(rows), 3),
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
    parser.add_argument("--one", choices=["base", "adapter"], help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not DATA.exists():
        print(f"error: {DATA} not found: this benchmark needs ../shared/data", file=sys.stderr)
        return 1
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one:
        result = run_config(args.home, args.n, args.adapter if args.one == "adapter" else None,
                            args.max_new_tokens, args.backend)
        print(json.dumps(result))
        return 0

    adapter = args.adapter or (str(DEFAULT_ADAPTER) if (DEFAULT_ADAPTER / "adapter_config.json")
                               .is_file() else None)
    wanted = args.configs.split(",")
    backends = args.backends.split(",")
    configs = [c for c in ("base", "adapter") if c in wanted and (c == "base" or adapter)]
    previous = RESULTS / "agent.json"
    results = json.loads(previous.read_text())["configs"] if previous.exists() else {}
    for config in configs:
        for i, backend in enumerate(backends):
            cmd = [sys.executable, __file__, "--one", config, "--n", str(args.n), "--home",
                   str(args.home), "--max-new-tokens", str(args.max_new_tokens),
                   "--backend", backend]
            if adapter:
                cmd += ["--adapter", adapter]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            load = os.getloadavg()
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            key = config if i == 0 else f"{config}/{backend}"
            results[key] = json.loads(out.stdout.strip().splitlines()[-1])
            results[key]["load_average_before"] = [round(x, 2) for x in load]
    import torch

    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": args.threads or torch.get_num_threads(),
                    "load_average": os.getloadavg()},
        "model": "SmolLM2-135M-Instruct (embedded: Q4_1 GGUF in llama.cpp, dequantised float32 "
                 "in transformers), CPU",
        "max_new_tokens": args.max_new_tokens,
        "backends": backends,
        "configs": results,
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
            print(f"{name}: retrieve {r['retrieve_ms_p50']} ms p50, TTFT {r['ttft_s_p50']} s p50 "
                  f"({r.get('ttft_after_retrieval_s_p50')} s after retrieval), "
                  f"{r['tokens_per_s_mean']} tok/s, answer {r['answer_s_p50']} s p50 / "
                  f"{r['answer_s_p95']} s p95, peak RSS {r['peak_rss_mb']} MB, abstain "
                  f"{r['abstain_rate']}, gold page cited {r['gold_page_cited_rate']}")
        for name, r in report["ratios"].items():
            print(f"{name}: {r['tokens_per_s']}x tokens/s, {r['ttft_s_p50']}x faster first "
                  f"token, {r['answer_s_p50']}x faster answer, {r['peak_rss_mb']}x peak memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
