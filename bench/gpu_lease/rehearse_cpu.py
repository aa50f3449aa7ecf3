"""python bench/gpu_lease/rehearse_cpu.py DIR: a tiny random Llama, tiny RAFT data and mined
prompts in DIR, so that the lease scripts can be rehearsed on CPU before any GPU minute."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from finetune.align import AlignArgs, mine_prompts, write_prompts  # noqa: E402
from finetune.data import DataConfig, FaqRow, build_dataset, dataset_stats, write_dataset  # noqa: E402
from tests.finetune.conftest import KeywordSearcher, faq_rows_records, manual_chunks  # noqa: E402

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rows = [FaqRow(r["question"], r["answer"], i + 2, page=int(r["page"]))
        for i, r in enumerate(faq_rows_records())]
searcher = KeywordSearcher(manual_chunks())
ds = build_dataset(rows, searcher, DataConfig(k=2, eval_fraction=0.2, seed=0,
                                              max_passage_chars=200))
write_dataset(ds, out / "data", dataset_stats(ds))
write_prompts(out / "prompts.jsonl", mine_prompts(rows, searcher, AlignArgs(
    adapter="x", k=2, max_passage_chars=200, safety_prompts=4, eval_fraction=0.2)))

# The tiny model of tests/finetune/conftest.py (fixture body, without pytest).
import tests.finetune.conftest as c  # noqa: E402

model_dir = c.tiny_model_dir.__wrapped__(out)
print(json.dumps({"data": str(out / "data"), "prompts": str(out / "prompts.jsonl"),
                  "model": str(model_dir)}))
