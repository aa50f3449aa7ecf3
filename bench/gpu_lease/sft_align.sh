#!/bin/bash
# bash bench/gpu_lease/sft_align.sh PROMPTS OUT: the GPU SFT of the embedded model to its
# eval-loss minimum (configs/smollm2-gpu.yaml, with the stall fix stall.py chose), then DPO on
# top (configs/align-gpu.yaml) from prompts mined on the CPU machine. Tarballs into OUT.
set -o pipefail
FLAGS="$(cat /tmp/stall/chosen_flags 2>/dev/null) $EXTRA"
SFT=${SFT_CONFIG:-configs/smollm2-gpu.yaml}
ALIGN=${ALIGN_CONFIG:-configs/align-gpu.yaml}
echo "stall flags: [$FLAGS]"
python3 -m finetune train --config $SFT --output_dir /tmp/runs/smollm2-gpu \
    --disable_tqdm true $FLAGS 2>&1 | grep -v "it/s\]" | tail -40
tar czf "$2/sft.tgz" -C /tmp/runs --exclude 'checkpoint-*' smollm2-gpu
python3 -m finetune align --config $ALIGN --adapter /tmp/runs/smollm2-gpu \
    --prompts_file "$1" --output_dir /tmp/runs/smollm2-gpu-dpo --disable_tqdm true $ALIGN_EXTRA 2>&1 \
    | grep -v "it/s\]" | tail -30
tar czf "$2/dpo.tgz" -C /tmp/runs smollm2-gpu-dpo
ls -la "$2"
