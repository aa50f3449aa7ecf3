"""Command line of `python -m ingest PATH...`: parse flags, run the pipeline, print the summary."""

from __future__ import annotations

import argparse
import json
import sys

from ingest.chunking import ChunkingConfig
from ingest.ocr import MIN_CONFIDENCE, OCR_MODES, ON_MIN_WORDS
from ingest.pipeline import EXIT_FILES_FAILED, run
from retrieval.errors import EXIT_OK, EXIT_USAGE, run_cli
from retrieval.settings import Settings

EPILOG = f"""\
examples:
  python -m ingest docs/                        index a folder (PDF, CSV, JSONL, Markdown, text)
  python -m ingest docs/ tickets.csv --prune    also drop chunks of files deleted from docs/
  python -m ingest docs/ --embedder BAAI/bge-small-en-v1.5 --rebuild
                                                re-embed everything with another model
  python -m ingest zendesk-export.json freshdesk.csv conversations.jsonl
                                                index help-desk exports as ticket history
  python -m ingest docs/ --redact               also redact identifiers in the manuals
  python -m ingest scans/ --ocr on              OCR scanned pages; fail if Tesseract is missing

ticket histories: CSV/JSONL with question,answer[,id,section,page] columns, a Zendesk ticket
export (.json), a Freshdesk conversation export (.csv with Ticket ID, Body, Incoming) or a
conversation JSONL ([{{role, text}}] per ticket); see docs/ingest.md. Customers' emails (also
spelled out), phone, card and IBAN numbers in them are redacted before indexing unless
--no-redact is given; manuals and other documents are not redacted unless --redact is given.

scanned PDFs: pages without a text layer are read by Tesseract OCR (--ocr auto, the default,
when it is installed); their chunks carry ocr=true and the page; a page read with a mean word
confidence below {MIN_CONFIDENCE:.0f} is reported; results are cached in the index directory,
so a re-run or --rebuild does no OCR for pages it has read before.

what is reported: one row per file - indexed, unchanged (nothing embedded), skipped (readable
but nothing to index, e.g. image-only PDF without OCR or unsupported type) or failed
(encrypted, damaged, empty, not a PDF, CSV/JSONL without question/answer columns, path that
does not exist) - with the pages read by OCR and the reason, then warnings (pages without a
text layer, low OCR confidence, malformed records by line or record number) and redactions.

exit codes:
  {EXIT_OK}  every file was indexed, unchanged or skipped
  {EXIT_FILES_FAILED}  some files failed (the others were indexed; see the table)
  {EXIT_USAGE}  usage or input error (bad flag, embedder or chunking differs from the index
     without --rebuild, --ocr on without Tesseract); 1 also when the run failed as a whole
     (index locked by another ingest, unreachable Chroma server, damaged index store:
     --rebuild re-creates it)
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the `--help` test)."""
    parser = argparse.ArgumentParser(
        prog="python -m ingest",
        description="Index PDFs, ticket histories (CSV, JSONL, help-desk exports), Markdown and "
                    "text files for casewise search. Re-running is incremental: unchanged "
                    "files embed nothing.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="files or directories (searched recursively)")
    parser.add_argument("--home", metavar="DIR",
                        help="index directory (default ./.casewise, or CASEWISE_HOME)")
    parser.add_argument("--embedder", metavar="NAME",
                        help="'default' (bundled all-MiniLM-L6-v2), 'default-int8' (the same "
                             "with int8 weights on onnxruntime: faster, slightly other vectors) "
                             "or a sentence-transformers model id/path (CASEWISE_EMBEDDER)")
    parser.add_argument("--chroma-url", metavar="URL",
                        help="Chroma server, e.g. http://localhost:8000 (CASEWISE_CHROMA_URL); "
                             "default: embedded store under the index directory")
    parser.add_argument("--prune", action="store_true",
                        help="remove chunks of indexed files that no longer exist")
    parser.add_argument("--rebuild", action="store_true",
                        help="empty the index and re-embed everything (needed to change the "
                             "embedder or chunking of an existing index)")
    defaults = ChunkingConfig()
    parser.add_argument("--chunk-size", type=int, metavar="N",
                        help=f"words per chunk (default {defaults.chunk_size}, or the index's)")
    parser.add_argument("--chunk-overlap", type=int, metavar="N",
                        help=f"words shared by consecutive chunks (default "
                             f"{defaults.chunk_overlap}, or the index's)")
    parser.add_argument("--redact", action=argparse.BooleanOptionalAction, default=None,
                        help="replace customers' emails, phone/card numbers and IBANs with "
                             "placeholders before indexing (default: on for ticket histories "
                             "and help-desk exports, off for manuals and other documents)")
    parser.add_argument("--ocr", choices=OCR_MODES, default="auto",
                        help="read PDF pages without a text layer with Tesseract OCR: auto "
                             "(default: when Tesseract is installed), on (also pages with "
                             f"fewer than {ON_MIN_WORDS} words; fail without Tesseract), off")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars or table; failures still go to stderr")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as JSON on stdout (no table)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the `--help` epilog)."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _ingest(args),
                   interrupted="interrupted: re-run the same command; finished files are kept")


def _ingest(args: argparse.Namespace) -> int:
    settings = Settings.resolve(home=args.home, embedder=args.embedder,
                                chroma_url=args.chroma_url)
    chunking = None
    if args.chunk_size is not None or args.chunk_overlap is not None:
        defaults = ChunkingConfig()
        size = args.chunk_size if args.chunk_size is not None else defaults.chunk_size
        chunking = ChunkingConfig(
            chunk_size=size,
            chunk_overlap=(args.chunk_overlap if args.chunk_overlap is not None
                           else min(defaults.chunk_overlap, size // 5)),
        )
    summary = run(args.paths, settings, prune=args.prune, rebuild=args.rebuild,
                  progress=not (args.quiet or args.json), chunking=chunking, redact=args.redact,
                  ocr=args.ocr)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    elif args.quiet:
        for f in summary.files:
            if f.status == "failed":
                print(f"failed: {f.path}: {f.reason}", file=sys.stderr)
    else:
        print(summary.format_table())
    return summary.exit_code
