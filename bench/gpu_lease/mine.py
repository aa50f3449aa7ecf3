"""python bench/gpu_lease/mine.py FAQ HOME OUT.jsonl [--safety-prompts N]: the mining step of
`python -m finetune align` alone (it needs the index, which the GPU machine does not have): the
same `mine_prompts` with `AlignArgs`' defaults (k 3, whole passages, every training-split
question), written with `write_prompts` for `align --prompts_file`."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from finetune.align import AlignArgs, mine_prompts, write_prompts  # noqa: E402
from finetune.data import read_faq  # noqa: E402
from retrieval.search import open_searcher  # noqa: E402
from retrieval.settings import Settings  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("faq")
p.add_argument("home")
p.add_argument("out")
p.add_argument("--safety-prompts", type=int, default=24)
a = p.parse_args()
rows, _ = read_faq(a.faq)
prompts = mine_prompts(rows, open_searcher(Settings.resolve(home=a.home)),
                       AlignArgs(adapter="-", safety_prompts=a.safety_prompts))
write_prompts(Path(a.out), prompts)
kinds = {}
for pr in prompts:
    kinds[(pr.kind, pr.split)] = kinds.get((pr.kind, pr.split), 0) + 1
print(f"{len(prompts)} prompts: {kinds}")
