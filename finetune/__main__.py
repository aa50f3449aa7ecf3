"""python -m finetune {data,train,merge} ...: training data, QLoRA fine-tuning, adapter merge.

See `finetune.cli` for the subcommands and `docs/finetune.md` for the walkthrough.
"""

import sys

from finetune.cli import main

sys.exit(main())
