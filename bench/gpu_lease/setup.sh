#!/bin/bash
# bash bench/gpu_lease/setup.sh WHEEL_DIR: install wheels into /tmp/site, print versions.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$1"/*.whl
export PYTHONPATH=/tmp/site:$PWD
python3 - <<'PY'
import importlib, platform, torch
mods = ["transformers", "peft", "trl", "bitsandbytes", "liger_kernel", "datasets", "accelerate"]
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print({m: getattr(importlib.import_module(m), "__version__", "?") for m in mods})
print(torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory // 2**30, "GiB")
import finetune.train, finetune.align, finetune.sweep  # noqa: F401  (the code imports here)
print("casewise imports ok")
PY
