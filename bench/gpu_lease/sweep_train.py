"""python3 bench/gpu_lease/sweep_train.py OUT: the training half of `python -m finetune sweep`
on the GPU machine (which has no index or eval stack): each data fraction trained for the largest
epoch count with a checkpoint per epoch, through `finetune.sweep.train_series` (the code the
sweep runs), then the eval-loss table and plot from its own functions."""

import json
import os
import sys
from pathlib import Path

from finetune.sweep import Series, SweepConfig, collect_rows, plot_metrics, run_logged, \
    train_series, write_table

out = Path(sys.argv[1])
cfg = SweepConfig(train_config=os.environ.get("SFT_CONFIG", "configs/smollm2-gpu.yaml"), data="runs/data/emanual",
                  out="/tmp/runs/sweep", fractions=[0.25, 0.5, 1.0], epochs=[1, 2, 3, 4],
                  questions=["configs/smollm2-gpu.yaml"], metrics=[],
                  train_args=["--eval_on_start", "false"] + sys.argv[2:])
runs = [train_series(cfg, Series(f, False), run_logged) for f in cfg.fractions]
rows = collect_rows(cfg, runs, {(r["series"], e): {} for r in runs for e in cfg.epochs})
write_table(cfg, rows, out / "sweep_train.md")
plot_metrics(cfg, rows, out)
(out / "sweep_train.json").write_text(json.dumps({"rows": rows, "runs": runs}, indent=2))
print((out / "sweep_train.md").read_text())
