"""python -m eval run --questions FILE.jsonl --systems no-rag,base --out DIR

Also `python -m eval report DIR`, `python -m eval gate DIR --min METRIC=VALUE` and
`python -m eval compare RUN_A RUN_B`. Thin entry point: argument parsing and the work live in
`eval.cli`.
"""

import sys

from eval.cli import main

sys.exit(main())
