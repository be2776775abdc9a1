#!/usr/bin/env bash
# One device-machine run (docs/lowering.md, "On a GPU"): the CUDA tests and the CUDA-graphs verify
# curve. The device image has torch 2.11 and transformers 5.17 and reaches no registry, so first, on
# the CPU machine, in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl transformers==5.23.0
# (a pure-Python wheel, about 12 MB; the image's tokenizers 0.23.2, huggingface_hub 1.33, safetensors
# 0.8 and regex meet its requirements)
# then call the device tool with carry [".whl"] and command `bash benchmarks/gpu_check.sh`.
# torch 2.11 is below hfspec's tested range, hence HFSPEC_ALLOW_UNTESTED=1 (a warning, not an error).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export HFSPEC_ALLOW_UNTESTED=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee "$OUT/versions.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/test-gpu.log" | tail -20
python3 benchmarks/gpu_check.py --out "$OUT/gpu-verify-curve.json" 2>&1 | tee "$OUT/gpu-check.log" | tail -30
