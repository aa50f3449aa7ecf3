"""`python -m ingest PATH... [--home DIR] [--prune] [--rebuild] [--ocr auto|on|off] [--json]`.

Index documents and ticket histories.

Thin entry point; see `ingest.cli` for the flags and `ingest.pipeline` for the work.
"""

from ingest.cli import main

raise SystemExit(main())
