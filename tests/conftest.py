import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ssm_reference.py

cuda_kernels = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (and mamba-ssm's compiled kernel)"
)
