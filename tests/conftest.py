import sys
from pathlib import Path

import pytest

from custom_nets.ops.cuda_kernels import cuda_scan_available

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"  # the sample cases shipped with the project (data/README.md)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside the tests (label_server, orthanc, ...)

needs_cuda_kernel = pytest.mark.skipif(
    not cuda_scan_available(), reason="needs a CUDA device and mamba-ssm's compiled selective_scan_cuda"
)
