"""`python -m ingest PATH... [--home DIR] [--prune] [--rebuild] [--json]`: index documents.

Thin entry point; see `ingest.cli` for the flags and `ingest.pipeline` for the work.
"""

from ingest.cli import main

raise SystemExit(main())
