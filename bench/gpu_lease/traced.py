"""python3 bench/gpu_lease/traced.py STACKS_FILE|- <python -m finetune args>: the finetune CLI with
every thread's Python stack dumped to STACKS_FILE every 15 s (faulthandler), to see a stall."""

import faulthandler
import sys

path = sys.argv.pop(1)
if path != "-":
    faulthandler.dump_traceback_later(15, repeat=True, file=open(path, "w"))  # noqa: SIM115
from finetune.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
