"""python bench/model_check.py [--systems base,adapter] [--llm-url URL --llm-model NAME]

Measures the optional model check of verified claims (`Context.model_check`) against the
word-level checks alone, on a contrast set the project wrote from its own sample manual
(`bench/data/model_check.jsonl`, from `samples/build_samples.py`): per question, one sentence
the passage states (`holds`) and one that keeps the passage's words, numbers and names in a
relation the passage does not state (`misread`: a reversed order, the wrong state of a light,
one setting taken for another). The word checks (`retrieval.grounding.verify`) pass most of
the misreads by design; the model check is what could catch them. For each system: how many
sentences of each kind the word checks keep, how many of those the model confirms (the
agent's own prompt and parser, `agent.prompts.MODEL_CHECK_PROMPT` / `model_confirms`), the
misreads caught and the true sentences lost, and the seconds per check. Systems: `base` (the
embedded model), `adapter` (it with `--adapter`), `remote` (`--llm-url`, `--llm-model`).

Examples:
    python bench/model_check.py               # the embedded model, with and without the adapter
    python bench/model_check.py --systems base --out /tmp/check.json
    python bench/model_check.py --systems remote --llm-url http://localhost:8000/v1 --llm-model m
    python bench/model_check.py --systems remote --llm-url URL --llm-model m \
        --model-check-tokens 512     # a model that thinks (<think>...</think>) before its verdict
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

from agent.prompts import MODEL_CHECK_MAX_NEW_TOKENS  # noqa: E402
from bench import doc_parser  # noqa: E402
from retrieval.errors import UsageError, at_least, run_cli  # noqa: E402

DATA = REPO / "bench" / "data" / "model_check.jsonl"
OUT = REPO / "bench" / "results_cpu" / "model_check.json"
SYSTEMS = ("base", "adapter", "remote")


def load_items(path: Path = DATA) -> list[dict]:
    """The contrast set: `question`, `passage`, `claim`, `holds` per line."""
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            item = json.loads(line)
            missing = [k for k in ("id", "question", "passage", "claim", "holds") if k not in item]
        except ValueError as e:
            raise UsageError(f"{path}:{n}: not JSON ({e})") from e
        if missing:
            raise UsageError(f"{path}:{n}: missing {', '.join(missing)}")
        items.append(item)
    return items


def word_verdicts(items: list[dict]):
    """Each item's claims after the word-level checks against its passage alone, as the
    agent's `verify` node builds them: `(item, its passage as a Hit, the supported claims, the
    number of claims)` per item."""
    from agent.graph import as_claim
    from retrieval.grounding import verify
    from retrieval.types import Chunk, Hit

    out = []
    for item in items:
        hit = Hit(Chunk(id=item["id"], text=item["passage"], source="router_manual.pdf",
                        page=None, section=item.get("section"), chunk_index=0, doc_hash=""),
                  score=1.0)
        claims = [as_claim(c, [hit]) for c in verify(item["claim"], item["question"], [hit])]
        out.append((item, hit, [c for c in claims if c.supported], len(claims)))
    return out


def make_llm(system: str, args: argparse.Namespace):
    """The backend of one system."""
    if system == "remote":
        from agent.llm import OpenAIChatModel

        return OpenAIChatModel(args.llm_url, args.llm_model)
    from agent.llm import local_backend

    llm = local_backend("default", adapter=args.adapter if system == "adapter" else None)
    llm.load()
    return llm


def measure(system: str, llm, verdicts, tokens: int = MODEL_CHECK_MAX_NEW_TOKENS) -> dict:
    """The model check over every item the word checks keep whole (`tokens`: the reply budget,
    `Context.model_check_tokens`)."""
    from agent.context import Context
    from agent.graph import model_check

    # model_check() asks `ctx.llm`; no index is read
    ctx = Context(searcher=None, llm=llm, model_check_tokens=tokens)
    rows, seconds = [], []
    for item, hit, kept, total in verdicts:
        row = {"id": item["id"], "holds": item["holds"], "words_keep": len(kept) == total > 0}
        if row["words_keep"]:
            start = time.perf_counter()
            confirmed, rejected = model_check({"standalone": item["question"], "contexts": [hit]},
                                              ctx, kept)
            seconds.append((time.perf_counter() - start) / len(kept))
            row["confirmed"] = not rejected
            row["replies"] = [c.reason for c in rejected]
        rows.append(row)
    mean = round(sum(seconds) / len(seconds), 3) if seconds else None
    summary: dict = {"system": system, "checks": len(seconds), "seconds_per_check": mean,
                     "reply_tokens": tokens}
    for kind, holds in (("holds", True), ("misread", False)):
        part = [r for r in rows if r["holds"] is holds]
        passed = [r for r in part if r["words_keep"]]
        summary[kind] = {"n": len(part), "words_keep": len(passed),
                         "model_confirms": sum(r["confirmed"] for r in passed)}
    for key, kind in (("misreads_caught", "misread"), ("true_lost", "holds")):
        summary[key] = summary[kind]["words_keep"] - summary[kind]["model_confirms"]
    summary["rows"] = rows
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = doc_parser(__doc__, "python bench/model_check.py")
    parser.add_argument("--systems", default="base,adapter",
                        help=f"comma-separated, of {', '.join(SYSTEMS)} (default base,adapter)")
    parser.add_argument("--adapter", default=str(REPO / "adapters" / "smollm2-gpu"),
                        help="LoRA adapter of the `adapter` system (default adapters/smollm2-gpu)")
    parser.add_argument("--llm-url", help="OpenAI-compatible base URL of the `remote` system")
    parser.add_argument("--llm-model", help="model name of the `remote` system")
    parser.add_argument("--model-check-tokens", type=int, default=MODEL_CHECK_MAX_NEW_TOKENS,
                        metavar="N", help="reply budget of each check (default "
                        f"{MODEL_CHECK_MAX_NEW_TOKENS}; a model that thinks first needs more)")
    parser.add_argument("--data", type=Path, default=DATA, help="the contrast set (JSONL)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON written here (default {OUT})")
    args = parser.parse_args(argv)
    return run_cli(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise UsageError(f"--systems {args.systems!r}: expected some of {', '.join(SYSTEMS)}")
    if "remote" in systems and not (args.llm_url and args.llm_model):
        raise UsageError("--systems remote needs --llm-url and --llm-model")
    if not args.data.is_file():
        raise UsageError(f"--data {args.data}: not found")
    at_least("--model-check-tokens", args.model_check_tokens)  # before any model loads
    verdicts = word_verdicts(load_items(args.data))
    result = {"data": str(args.data), "load_average_start": os.getloadavg(), "systems": []}
    print(f"{'system':<8} {'kind':<8} {'n':>3} {'words keep':>10} {'model confirms':>14}")
    for system in systems:
        summary = measure(system, make_llm(system, args), verdicts, args.model_check_tokens)
        result["systems"].append(summary)
        for kind in ("holds", "misread"):
            s = summary[kind]
            print(f"{system:<8} {kind:<8} {s['n']:>3} {s['words_keep']:>10} "
                  f"{s['model_confirms']:>14}")
        print(f"{system:<8} misreads caught {summary['misreads_caught']}, true sentences lost "
              f"{summary['true_lost']}, {summary['seconds_per_check']} s per check")
    result["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"(load average {os.getloadavg()[0]:.2f}; {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
