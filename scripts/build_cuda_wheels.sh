#!/usr/bin/env bash
# Build CUDA wheels of causal-conv1d and mamba-ssm from their PyPI sdists, on a
# machine WITHOUT a GPU, for a GPU machine that runs:
#   Python 3.12, torch 2.11.0+cu130 (PyPI's default torch 2.11.0 wheel is the
#   CUDA 13.0 build), CUDA 13.0, H100 (sm_90), no network.
#
# Result: $OUT_DIR/causal_conv1d-*.whl and $OUT_DIR/mamba_ssm-*.whl, to be
# installed on the GPU machine with
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#
# Requirements on the build machine: nvcc 13.0 (CUDA_HOME), gcc <= 14,
# a CPython 3.12 interpreter, access to PyPI (only for the build venv and the
# sdists; the compile itself is offline).
#
# Both setup.py files hard-code -gencode flags for sm_75 ... sm_121. Compiling
# all of them takes hours on a small machine, so the copied setup.py is patched
# to compile only the archs listed in CUDA_ARCHS (default "90" = H100).
#
# Usage (from the repo root; takes tens of minutes on 2 cores):
#   nice -n 10 scripts/build_cuda_wheels.sh > /tmp/cuda-build.log 2>&1
set -euo pipefail

# ---- configuration (override through the environment) ----------------------
PYTHON312=${PYTHON312:-/root/.pyenv/versions/3.12.1/bin/python3.12}
VENV=${VENV:-/tmp/cuda-build-venv}            # build venv, outside the repo
SDIST_DIR=${SDIST_DIR:-/tmp/msrc}             # where the .tar.gz sdists live / are downloaded to
WORK_DIR=${WORK_DIR:-/tmp/cuda-build-work}    # scratch copy of the sources (wiped)
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_DIR=${OUT_DIR:-$REPO_ROOT/.whl}           # git-ignored via .git/info/exclude
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda-13.0}
CUDA_ARCHS=${CUDA_ARCHS:-90}                  # space-separated SM numbers, e.g. "80 90"
MAX_JOBS=${MAX_JOBS:-2}                       # parallel nvcc jobs (ninja)
NVCC_THREADS=${NVCC_THREADS:-1}               # nvcc --threads (setup.py hard-codes 4)
NICE=${NICE:-10}
TORCH_VERSION=2.11.0
MAMBA_VERSION=2.3.2.post1
CAUSAL_CONV1D_VERSION=1.7.0
# sha256 of the sdists as published on PyPI
MAMBA_SHA256=104cc47e9101e5401a675fa2b784f2952b9b037f3b1dd83b5ac544394e95d028
CAUSAL_CONV1D_SHA256=3202758494eaa7b597ce1c282dfa188889506bfcb92cad3c407d26736bfcd32b

# Ignore any local pip configuration (find-links, extra local indexes,
# constraints) so that everything comes from PyPI itself.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT || true
PYPI=https://pypi.org/simple

echo "== build started $(date -Is)"
START=$(date +%s)

# ---- 1. build venv ----------------------------------------------------------
# torch 2.11.0 from PyPI *with* its dependencies: `import torch` needs
# libcudnn/libnccl/... from the nvidia-*-cu13 wheels (the local CUDA toolkit
# only has nvcc + cudart). The extension itself is compiled with the local
# nvcc and links against torch's libs and libcudart.so.13.
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON312" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --index-url "$PYPI" -q -U pip
"$PY" -m pip install --index-url "$PYPI" -q "torch==$TORCH_VERSION" wheel ninja packaging setuptools
"$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "cxx11abi", torch._C._GLIBCXX_USE_CXX11_ABI)
assert torch.__version__ == "2.11.0+cu130", torch.__version__
EOF
export PATH="$VENV/bin:$CUDA_HOME/bin:$PATH"   # ninja + nvcc
"$CUDA_HOME/bin/nvcc" --version | tail -2

# ---- 2. sdists ------------------------------------------------------------
mkdir -p "$SDIST_DIR"
fetch_sdist() {  # name version sha256
    local file="$SDIST_DIR/$(echo "$1" | tr - _)-$2.tar.gz"
    if [ ! -f "$file" ]; then
        # --no-build-isolation: pip only runs `setup.py egg_info` with the venv's torch
        "$PY" -m pip download --index-url "$PYPI" --no-deps --no-binary :all: \
            --no-build-isolation -d "$SDIST_DIR" "$1==$2"
    fi
    echo "$3  $file" | sha256sum -c -
}
fetch_sdist causal-conv1d "$CAUSAL_CONV1D_VERSION" "$CAUSAL_CONV1D_SHA256"
fetch_sdist mamba-ssm "$MAMBA_VERSION" "$MAMBA_SHA256"

# ---- 3. fresh scratch copy of the sources + arch patch ---------------------
rm -rf "$WORK_DIR"
mkdir -p "$WORK_DIR" "$OUT_DIR"
tar -xzf "$SDIST_DIR/causal_conv1d-$CAUSAL_CONV1D_VERSION.tar.gz" -C "$WORK_DIR"
tar -xzf "$SDIST_DIR/mamba_ssm-$MAMBA_VERSION.tar.gz" -C "$WORK_DIR"

# In both setup.py files the hard-coded cc_flag list (-gencode ... sm_75..sm_121)
# is built right before the "# HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI"
# comment. Insert an override there that rebuilds cc_flag from $CUDA_ARCHS, and
# replace nvcc "--threads 4" (pointless with one arch) by $NVCC_THREADS.
patch_setup() {
    "$PY" - "$1" <<'EOF'
import sys, re
p = sys.argv[1]
s = open(p).read()
anchor = "    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI"
assert s.count(anchor) == 1, "anchor not found in " + p
override = (
    "    # --- injected by scripts/build_cuda_wheels.sh: archs from $CUDA_ARCHS ---\n"
    "    if not HIP_BUILD:\n"
    "        cc_flag = []\n"
    "        for _a in os.environ['CUDA_ARCHS'].split():\n"
    "            cc_flag += ['-gencode', f'arch=compute_{_a},code=sm_{_a}']\n"
    "        print('build_cuda_wheels.sh: cc_flag =', cc_flag)\n"
)
s = s.replace(anchor, override + anchor)
old = 'return nvcc_extra_args + ["--threads", "4"]'
assert s.count(old) == 1, "nvcc --threads not found in " + p
s = s.replace(old, 'return nvcc_extra_args + ["--threads", os.environ.get("NVCC_THREADS", "1")]')
open(p, "w").write(s)
EOF
}
patch_setup "$WORK_DIR/causal_conv1d-$CAUSAL_CONV1D_VERSION/setup.py"
patch_setup "$WORK_DIR/mamba_ssm-$MAMBA_VERSION/setup.py"

# ---- 4. build ---------------------------------------------------------------
# *_FORCE_BUILD=TRUE: skip setup.py's attempt to download a prebuilt wheel from
# GitHub (CachedWheelsCommand). --no-build-isolation --no-deps --no-index: pip
# uses the venv's torch and never touches the network.
export CUDA_HOME CUDA_ARCHS MAX_JOBS NVCC_THREADS
export TORCH_CUDA_ARCH_LIST="9.0"   # unused (explicit -gencode wins), set for safety
export CAUSAL_CONV1D_FORCE_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE
build_wheel() {  # src_dir
    local t0=$(date +%s)
    echo "== building $(basename "$1") $(date -Is)"
    rm -f "$OUT_DIR/$(basename "$1" | sed -E 's/-[0-9].*//')"-*.whl
    (cd "$1" && nice -n "$NICE" "$PY" -m pip wheel -v --no-build-isolation \
        --no-deps --no-index -w "$OUT_DIR" .)
    echo "== built $(basename "$1") in $(( $(date +%s) - t0 ))s"
}
build_wheel "$WORK_DIR/causal_conv1d-$CAUSAL_CONV1D_VERSION"
build_wheel "$WORK_DIR/mamba_ssm-$MAMBA_VERSION"

# ---- 5. checks (no GPU needed) ---------------------------------------------
# The local toolkit has no cuobjdump; take it from PyPI into a separate folder.
CUOBJDUMP=$(command -v cuobjdump || true)
if [ -z "$CUOBJDUMP" ]; then
    "$PY" -m pip install -q --index-url "$PYPI" --target "$WORK_DIR/tools" \
        nvidia-cuda-cuobjdump==13.2.86
    CUOBJDUMP="$WORK_DIR/tools/nvidia/cu13/bin/cuobjdump"
fi
CHECK_DIR="$WORK_DIR/check"
rm -rf "$CHECK_DIR"; mkdir -p "$CHECK_DIR"
for whl in "$OUT_DIR"/causal_conv1d-*.whl "$OUT_DIR"/mamba_ssm-*.whl; do
    echo "== $(basename "$whl") $(stat -c %s "$whl") bytes"
    "$PY" -m zipfile -e "$whl" "$CHECK_DIR"
done
for so in "$CHECK_DIR"/causal_conv1d_cuda.cpython-312-x86_64-linux-gnu.so \
          "$CHECK_DIR"/selective_scan_cuda.cpython-312-x86_64-linux-gnu.so; do
    echo "-- $(basename "$so")"
    readelf -d "$so" | grep NEEDED
    # SASS archs embedded in the fatbinary (expect only sm_90 cubins)
    "$CUOBJDUMP" --list-elf "$so"
    "$CUOBJDUMP" --list-ptx "$so" || true   # expect none (no PTX embedded)
done
echo "== build finished $(date -Is), total $(( $(date +%s) - START ))s"
