"""The debug search CLI behind `python -m retrieval "question"`.

Prints the ranked passages for a question with their citation (`[file p.N]`), section, fused
score, cosine similarity and dense/BM25 ranks, or the same as JSON with `--json`. Expected
errors print one line to stderr; exit codes follow `retrieval.errors` (2: no index, wrong
embedder, bad flag; 1: unreachable Chroma server).
"""

from __future__ import annotations

import argparse
import json
import logging
import textwrap

from retrieval.errors import UsageError, run_cli
from retrieval.settings import Settings
from retrieval.types import Hit


EXAMPLES = """\
examples:
  python -m retrieval "How do I reset the router?"
  python -m retrieval "reset button" -k 10 --type doc --source router_manual.pdf
  python -m retrieval "warranty" --json --home runs/emanual-home
  python -m retrieval "warranty" --chroma-url http://localhost:8000"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m retrieval`."""
    parser = argparse.ArgumentParser(
        prog="python -m retrieval",
        description="Search the casewise index (dense + BM25 fusion) and print the passages "
        "with their citations.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("query", help="the question to search for")
    parser.add_argument("-k", type=int, default=5, help="number of passages (default 5)")
    parser.add_argument("--type", choices=("doc", "faq"), help="only documents or only FAQ rows")
    parser.add_argument("--source", metavar="FILE",
                        help="only chunks of this source file, as ingest recorded it")
    parser.add_argument("--home", metavar="DIR",
                        help="index directory (default $CASEWISE_HOME or ./.casewise)")
    parser.add_argument("--chroma-url", metavar="URL",
                        help="Chroma server, e.g. http://localhost:8000 "
                        "(default $CASEWISE_CHROMA_URL, else the embedded store under --home)")
    parser.add_argument("--json", action="store_true", help="print the hits as JSON")
    return parser


def hit_to_dict(rank: int, hit: Hit) -> dict:
    """JSON-ready view of a hit.

    Args:
        rank: 1-based position in the result list.
        hit: The hit.

    Returns:
        A flat dict with the citation, scores, ranks and text.
    """
    chunk = hit.chunk
    return {
        "rank": rank,
        "citation": hit.citation.label(),
        "id": chunk.id,
        "source": chunk.source,
        "page": chunk.page,
        "section": chunk.section,
        "type": chunk.type,
        "score": hit.score,
        "similarity": hit.similarity,
        "dense_rank": hit.dense_rank,
        "keyword_rank": hit.keyword_rank,
        "text": chunk.text,
    }


def format_hit(rank: int, hit: Hit) -> str:
    """Human-readable block for one hit: a header line, then the indented passage.

    Args:
        rank: 1-based position in the result list.
        hit: The hit.

    Returns:
        The text block.
    """
    def _rank(value: int | None) -> str:
        return f"#{value}" if value is not None else "-"

    similarity = f"{hit.similarity:.3f}" if hit.similarity is not None else "-"
    section = f"  § {hit.chunk.section}" if hit.chunk.section else ""
    header = (
        f"{rank}. [{hit.citation.label()}]{section}  ({hit.chunk.type})\n"
        f"   score {hit.score:.4f}  similarity {similarity}  "
        f"dense {_rank(hit.dense_rank)}  bm25 {_rank(hit.keyword_rank)}"
    )
    body = textwrap.fill(" ".join(hit.text.split()), width=96, initial_indent="   ",
                         subsequent_indent="   ")
    return f"{header}\n{body}"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI.

    Args:
        argv: Arguments without the program name; `None` reads `sys.argv`.

    Returns:
        The exit status (the policy of `retrieval.errors`): 0 on success, 2 for bad usage or
        input (no index, a bad flag), 1 when the search itself failed (server unreachable).
    """
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _search(args))


def _search(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise UsageError(f"-k ({args.k}) must be at least 1")
    where = {key: value for key, value in (("type", args.type), ("source", args.source)) if value}
    settings = Settings.resolve(home=args.home, chroma_url=args.chroma_url)
    from retrieval.search import open_searcher

    _quiet_model_loading()
    hits = open_searcher(settings).search(args.query, k=args.k, where=where or None)
    if args.json:
        print(json.dumps([hit_to_dict(i, h) for i, h in enumerate(hits, start=1)], indent=2))
        return 0
    if not hits:
        print("no passages found" + (f" for filter {where}" if where else ""))
        return 0
    print("\n\n".join(format_hit(i, h) for i, h in enumerate(hits, start=1)))
    return 0


def _quiet_model_loading() -> None:
    # A search printout is read by people: the weight-loading progress bar and bitsandbytes'
    # notice about optional CPU kernels (imported via peft, unused by the embedder) are noise.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
