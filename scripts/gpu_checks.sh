#!/usr/bin/env bash
# The checks only a GPU can make, in one run on a CUDA machine without network (torch preinstalled), from the
# repo root. .gpu/ holds what that machine lacks: kernels.txz (mamba-ssm's selective_scan_cuda and causal-conv1d
# built for sm_90 by scripts/build_cuda_wheels.sh, debug symbols stripped) and pure-Python wheels (monai, fire,
# termcolor, nibabel). Results go to $OUT (default outputs/gpu).
#   1. CUDA kernel vs torch scan, values and gradients (tests marked for CUDA; they skip on CPU machines)
#   2. peak GPU memory and time of a training step, BTCV 1->14 at 128^3, batch 1, AMP, with each scan backend
set -uo pipefail
OUT=${OUT:-outputs/gpu}
SITE=${SITE:-/tmp/segresmamba-site}
mkdir -p "$OUT" "$SITE"
python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" .gpu/kernels.txz "$SITE"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .gpu/*.whl
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, selective_scan_cuda, causal_conv1d; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -rs -p no:cacheprovider tests/test_selective_scan.py tests/test_network.py -k cuda \
    2>&1 | tee "$OUT/cuda_tests.txt"
python3 - <<'PY' 2>&1 | tee "$OUT/training_step.json"
import json
from benchmarks.cases import measure_train

for backend in ("cuda", "torch"):
    record = measure_train("segresmamba", task="btcv", patch=128, device="cuda", scan_backend=backend, repeats=3)
    print(json.dumps(record), flush=True)
PY
