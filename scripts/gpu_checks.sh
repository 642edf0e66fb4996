#!/usr/bin/env bash
# The checks only a GPU can make, in one command on a CUDA machine without network (torch preinstalled), from the
# repo root:   scripts/gpu_checks.sh            (results in $OUT, default outputs/gpu; about 5 minutes on an H200)
# .gpu/ holds what that machine lacks: kernels.txz (mamba-ssm's selective_scan_cuda and causal-conv1d built for
# sm_90 by scripts/build_cuda_wheels.sh, debug symbols stripped) and pure-Python wheels (monai, fire, termcolor,
# nibabel). Where torch, monai and the kernels are installed already, SKIP_INSTALL=1 skips unpacking .gpu/.
#   1. CUDA kernel vs torch scan, values and gradients (the tests marked for CUDA; they skip on CPU machines):
#      tests/test_selective_scan.py (kernel vs torch backend) and tests/test_network.py (the whole network)
#   2. peak GPU memory and time of a training step, BTCV 1->14 at 128^3, batch 1, AMP, Adam
#      (benchmarks.cases.measure_train): SegResMamba with each scan backend, with and without tom_recompute,
#      and SwinUNETR and SegMamba beside it for the ratios (training_step.jsonl, one JSON record a line)
set -uo pipefail
export OUT=${OUT:-outputs/gpu}
SITE=${SITE:-/tmp/segresmamba-site}
mkdir -p "$OUT" "$SITE"
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    if [ ! -f .gpu/kernels.txz ]; then
        echo "gpu_checks: .gpu/kernels.txz is missing: build it with scripts/build_cuda_wheels.sh (see its header)," \
             "or set SKIP_INSTALL=1 where mamba-ssm and causal-conv1d are installed" >&2
        exit 2
    fi
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" .gpu/kernels.txz "$SITE"
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .gpu/*.whl
fi
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, selective_scan_cuda, causal_conv1d; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    | tee -a "$OUT/gpu.txt" || { echo "gpu_checks: the CUDA kernels do not import" >&2; exit 2; }
git rev-parse HEAD 2>/dev/null | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -rs -p no:cacheprovider tests/test_selective_scan.py tests/test_network.py -k cuda \
    2>&1 | tee "$OUT/cuda_tests.txt"
python3 - <<'PY' 2>&1 | tee "$OUT/training_step.log"
import json
import os

from benchmarks.cases import run_case

out = os.path.join(os.environ.get("OUT", "outputs/gpu"), "training_step.jsonl")
cases = [
    ("segresmamba", "cuda"), ("segresmamba_tom_recompute", "cuda"),
    ("segresmamba", "torch"), ("segresmamba_tom_recompute", "torch"),
    ("swinunetr", "cuda"), ("segmamba", "cuda"),
]
with open(out, "w") as stream:
    for network, backend in cases:
        # the torch scan takes seconds a step on a GPU where the kernel takes a tenth: fewer steps there
        repeats = 2 if backend == "torch" else 3
        record = run_case({"kind": "train", "network": network, "task": "btcv", "patch": 128,
                           "scan_backend": backend, "repeats": repeats}, "cuda")
        stream.write(json.dumps(record) + "\n")
        stream.flush()
        print(network, backend, record["status"], f"{record.get('peak_bytes', 0) / 2**30:.2f} GiB",
              f"{record.get('time_s', 0):.3f} s", record.get("error", ""), flush=True)
PY
