"""python -m retrieval "How do I reset the router?" [-k 5] [--type doc|faq] [--source FILE] [--json]

Debug search over the index built by `python -m ingest`: prints the ranked passages with their
citations and scores. The work is done in `retrieval.cli`.
"""

import sys

from retrieval.cli import main

sys.exit(main())
