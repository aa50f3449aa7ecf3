"""python -m finetune {data,train,align,sweep,merge,export}: the fine-tuning package's command line.

    python -m finetune data --faq history.csv --home .casewise --out data/faq [--p-gold 0.8] [--k 3]
    python -m finetune train --config configs/smollm2-cpu.yaml [--num_train_epochs 2 ...]
    python -m finetune align --config configs/align-cpu.yaml --adapter runs/smollm2-cpu --faq ...
    python -m finetune sweep --train-config configs/smollm2-gpu.yaml --data runs/data/emanual ...
    python -m finetune merge --adapter runs/smollm2-faq --out runs/smollm2-faq-merged
    python -m finetune export --gguf out/casewise.gguf [--adapter DIR] [--quant q4_k_m|q8_0|bf16|f16]

Expected errors print one line to stderr; exit codes follow `retrieval.errors`: 2 for bad
usage or input (a flag, the config, the FAQ file, a model path), 1 for a failed run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from retrieval.errors import run_cli


def _data_parser(sub) -> None:
    from finetune.data import DataConfig

    d = DataConfig()
    p = sub.add_parser(
        "data",
        help="build RAFT-style training data from an FAQ history and the index",
        description="Build retrieval-augmented chat examples (train.jsonl, eval.jsonl, "
        "stats.json) from an FAQ/ticket history and the document index.",
        epilog="examples:\n"
        "  python -m finetune data --faq history.csv --home .casewise --out data/faq\n"
        "  python -m finetune data --faq zendesk_export.json --out data/faq --k 3 "
        "--max-passage-chars 0\n"
        "  python -m finetune data --faq feedback.jsonl --out data/feedback --synthetic 200",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--faq", required=True, help="ticket history: CSV or JSONL (question,answer"
                   "[,id,section,page]) or a help-desk export (Zendesk JSON, Freshdesk CSV, "
                   "conversation JSONL), read by the reader `python -m ingest` uses")
    p.add_argument("--home", default=None, help="index home (default CASEWISE_HOME or ./.casewise)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--p-gold", type=float, default=d.p_gold,
                   help="probability that the gold passage is in the prompt (default %(default)s)")
    p.add_argument("--k", type=int, default=d.k, help="passages per prompt (default %(default)s)")
    p.add_argument("--gold-match", default=d.gold_match,
                   choices=["page", "overlap", "page_then_overlap"],
                   help="how the gold passage is found (default %(default)s)")
    p.add_argument("--min-overlap", type=float, default=d.min_overlap,
                   help="answer-word coverage that makes a chunk gold (default %(default)s)")
    p.add_argument("--search-k", type=int, default=d.search_k,
                   help="candidates retrieved per query (default %(default)s)")
    p.add_argument("--passage-words", type=int, default=d.passage_words,
                   help="words of each passage the prompt shows, the window the agent shows "
                   "(Context.passage_words); 0 = whole passages (default %(default)s)")
    p.add_argument("--max-passage-chars", type=int, default=d.max_passage_chars,
                   help="with --passage-words 0: clip passages to this many characters, 0 = "
                   "whole (default %(default)s)")
    p.add_argument("--refusal-share", type=float, default=d.refusal_share,
                   help="refusal examples as a share of FAQ examples (default %(default)s)")
    p.add_argument("--eval-fraction", type=float, default=d.eval_fraction,
                   help="share of answer groups held out (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-redact", action="store_true",
                   help="keep emails (also spelled out), phone/card numbers and IBANs "
                   "(redacted by default, as `python -m ingest` does)")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="also write questions for N document chunks with --model (default off)")
    p.add_argument("--model", default="default",
                   help="model whose tokenizer counts tokens and that writes synthetic questions")
    p.add_argument("--no-token-count", action="store_true",
                   help="count words instead of loading the tokenizer")


def _merge_parser(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="merge a LoRA adapter into its base model",
        description="Write base model + adapter as one dense model (safetensors + tokenizer).",
        epilog="examples:\n"
        "  python -m finetune merge --adapter runs/smollm2-faq --out runs/smollm2-faq-merged\n"
        "  python -m agent --model runs/smollm2-faq-merged      # chat with the merged model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--adapter", required=True, help="adapter directory (output of train)")
    p.add_argument("--out", required=True, help="output directory for the merged model")
    p.add_argument("--base", default=None,
                   help="base model (default: the one recorded in the adapter)")


EXPORT_EXAMPLES = """\
examples:
  python -m finetune export --gguf out/casewise.gguf --adapter runs/smollm2-faq
  python -m finetune export --gguf out/base-q8.gguf --quant q8_0
  ollama create casewise -f out/Modelfile      # then: ollama run casewise
  llama-server -m out/casewise.gguf            # OpenAI-compatible: --llm-url http://localhost:8080
"""


def _export_parser(sub) -> None:
    from finetune.export import DEFAULT_QUANT, QUANTS

    p = sub.add_parser(
        "export",
        help="write base model (+ adapter, merged) as GGUF for llama.cpp and Ollama",
        description="Merge a LoRA adapter into its base model and write one GGUF file that "
        "llama.cpp and Ollama load, with an Ollama Modelfile (chat template, stop tokens) "
        "beside it.",
        epilog=EXPORT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gguf", required=True, metavar="OUT.gguf", help="the GGUF file to write")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="adapter directory (output of train); without it the base model alone")
    p.add_argument("--base", default=None,
                   help="base model (default: the one recorded in the adapter, else the "
                   "embedded SmolLM2)")
    p.add_argument("--quant", default=DEFAULT_QUANT, choices=QUANTS,
                   help="q4_k_m (smallest, default), q8_0, bf16 (fastest prompt processing on CPUs "
                   "with AVX-512 BF16), or f16 (no llama.cpp needed)")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m finetune` parser (the `train` subcommand has its own TRL parser)."""
    parser = argparse.ArgumentParser(
        prog="python -m finetune", description=__doc__.split("\n")[0],
        epilog="examples:\n" + __doc__.split("\n\n")[1].replace("    python", "  python"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _data_parser(sub)
    sub.add_parser("train", help="fine-tune with QLoRA/LoRA (python -m finetune train --help)",
                   add_help=False)
    sub.add_parser("align", help="DPO/KTO/ORPO on top of an SFT adapter, with pairs mined from "
                   "its own mistakes (python -m finetune align --help)", add_help=False)
    from finetune.sweep import add_arguments

    sweep = sub.add_parser(
        "sweep", help="data-size x epochs experiments, each adapter evaluated with python -m eval",
        description="Train on fractions of the data, evaluate each epoch's adapter with "
        "`python -m eval`, plot every metric against data size and steps; resumable.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m finetune sweep --train-config configs/smollm2-gpu.yaml "
        "--data runs/data/emanual \\\n      --questions ../shared/data/emanual/qa_dev.jsonl "
        "--home runs/emanual-home --out runs/sweep\n  (run it again to resume)")
    add_arguments(sweep)
    _merge_parser(sub)
    _export_parser(sub)
    return parser


def _token_counter(model: str):
    from finetune.model import load_tokenizer, resolve_base_model

    tokenizer = load_tokenizer(resolve_base_model(model))

    def count(messages: list[dict]) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count


class _ModelWriter:
    """Writes synthetic questions with a local model (greedy decoding)."""

    def __init__(self, model: str) -> None:
        from finetune.model import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(model)

    def complete(self, messages: list[dict], *, max_new_tokens: int = 256) -> str:
        from finetune.model import generate_chat

        return generate_chat(self.model, self.tokenizer, messages, max_new_tokens)


def run_data(args: argparse.Namespace) -> int:
    """`python -m finetune data`: read, build, write and print the statistics."""
    from finetune.data import (
        DataConfig,
        build_dataset,
        dataset_stats,
        format_stats,
        read_faq,
        synthetic_rows,
        write_dataset,
    )
    from retrieval.search import open_searcher, read_manifest
    from retrieval.settings import Settings

    config = DataConfig(
        p_gold=args.p_gold, k=args.k, gold_match=args.gold_match, min_overlap=args.min_overlap,
        search_k=args.search_k, passage_words=args.passage_words,
        max_passage_chars=args.max_passage_chars,
        refusal_share=args.refusal_share, eval_fraction=args.eval_fraction, seed=args.seed,
        redact=not args.no_redact,
    )
    rows, problems = read_faq(args.faq)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    settings = Settings.resolve(home=args.home)
    searcher = open_searcher(settings)
    synthetic = []
    if args.synthetic:
        from retrieval.store import ChunkStore

        store = ChunkStore(settings, read_manifest(settings)["embedder"])
        synthetic, rejected = synthetic_rows(
            store.all_chunks(where={"type": "doc"}), _ModelWriter(args.model), args.synthetic,
            args.seed, progress=True,
        )
        print(f"synthetic questions: {len(synthetic)} kept, {len(rejected)} rejected",
              file=sys.stderr)
    dataset = build_dataset(rows, searcher, config, synthetic=synthetic, source_name=args.faq,
                            progress=True)
    dataset.problems[:0] = problems
    counter = None if args.no_token_count else _token_counter(args.model)
    stats = dataset_stats(dataset, counter)
    stats["faq"] = args.faq
    stats["index_home"] = str(settings.home)
    paths = write_dataset(dataset, args.out, stats)
    print(format_stats(stats))
    print(f"wrote {paths['train']}, {paths['eval']}, {paths['stats']} "
          f"({len(dataset.problems)} problems in {paths['problems']})")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    """`python -m finetune merge`: write adapter + base as one dense model."""
    from finetune.train import merge_adapter

    out = merge_adapter(args.adapter, args.out, base=args.base)
    print(f"wrote merged model to {out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """`python -m finetune export`: merged GGUF file plus Ollama Modelfile."""
    from finetune.export import export_gguf

    result = export_gguf(args.gguf, adapter=args.adapter, base=args.base, quant=args.quant)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {result.gguf} ({result.quant}, {result.size_mb} MiB) and {result.modelfile}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m finetune`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from finetune.train import main as train_main

        return run_cli(lambda: train_main(argv[1:]))
    if argv and argv[0] == "align":
        from finetune.align import main as align_main

        return run_cli(lambda: align_main(argv[1:]))
    args = build_parser().parse_args(argv)
    return run_cli(lambda: {"data": run_data, "merge": run_merge, "export": run_export,
                            "sweep": run_sweep}[args.command](args))


def run_sweep(args: argparse.Namespace) -> int:
    """`python -m finetune sweep`: run or resume the experiments, print the table."""
    from finetune.sweep import config_from_args, sweep

    summary = sweep(config_from_args(args))
    print((Path(args.out) / "sweep.md").read_text())
    print(f"wrote {args.out}/sweep.json, sweep.md and {len(summary['plots'])} plots")
    return 0
