"""python -m agent [ask "question" [--json]]: the support assistant's chat CLI (see agent.cli)."""

import sys

from agent.cli import main

sys.exit(main())
