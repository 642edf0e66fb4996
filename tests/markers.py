"""Skip conditions shared by test modules (not in conftest.py, which the pytest-xdist controller loads too: it runs
no test, and importing custom_nets there would cost it a MONAI import before the workers start)."""

import pytest

from custom_nets.ops.cuda_kernels import cuda_scan_available

needs_cuda_kernel = pytest.mark.skipif(
    not cuda_scan_available(), reason="needs a CUDA device and mamba-ssm's compiled selective_scan_cuda"
)
