#!/bin/bash
# bash bench/gpu_lease/accelerate_1gpu.sh OUT: issue 18 on one GPU: the multi-GPU launch command
# with num_processes 1, on the 8B-shaped random model (bench/qlora_gpu.py --save-model).
set -o pipefail
python3 -m bench.qlora_gpu --save-model /tmp/l8b --tokenizer "$CASEWISE_CACHE/models/SmolLM2-135M-Instruct" || exit 1
accelerate launch --config_file configs/accelerate-multi-gpu.yaml --num_processes 1 \
    -m finetune train --config configs/llama-3.1-8b-qlora.yaml --model_name_or_path /tmp/l8b \
    --max_steps 6 --eval_steps 3 --save_steps 3 --logging_steps 1 --early_stopping_patience 0 \
    --max_eval_examples 16 --output_dir /tmp/runs/l8b-1gpu --disable_tqdm true 2>&1 \
    | grep -v "it/s\]" | tail -25
python3 - "$1" <<'PY'
import json, sys
r = json.load(open("/tmp/runs/l8b-1gpu/training_report.json"))
keep = {k: r.get(k) for k in ("global_step", "epochs", "tokens_per_s", "peak_memory_gib",
        "train_runtime_s", "wall_time_s", "train_loss", "eval_loss", "best_step")}
json.dump(keep, open(sys.argv[1] + "/l8b_1gpu.json", "w"), indent=2)
print(json.dumps(keep)[:1500])
PY
