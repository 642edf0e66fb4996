"""The ONNX export that stands in for TorchScript."""

from __future__ import annotations

import pytest
import torch

from custom_nets import SegResMamba
from custom_nets.export import check_onnx, export_onnx, static_selective_scan
from custom_nets.ops import selective_scan
from ssm_reference import selective_scan_stepwise


def test_torchscript_cannot_compile_the_network():
    """Why the bundles export ONNX instead of TorchScript (see their docs/README.md)."""
    with pytest.raises(Exception):
        torch.jit.script(SegResMamba(feature_size=8))


def test_static_scan_matches_the_step_by_step_reference():
    torch.manual_seed(0)
    batch, d_inner, d_state, length = 2, 6, 16, 300
    u, z = torch.randn(batch, d_inner, length), torch.randn(batch, d_inner, length)
    delta = torch.randn(batch, d_inner, length) * 2  # large steps: decays far beyond float32's range per chunk
    A = -torch.rand(d_inner, d_state) * 16
    B, C = torch.randn(batch, d_state, length), torch.randn(batch, d_state, length)
    D, bias = torch.randn(d_inner), torch.randn(d_inner)
    args = (u, delta, A, B, C, D, z, bias, True)
    expected, expected_state = selective_scan_stepwise(*(t.double() if torch.is_tensor(t) else t for t in args))
    got, state = static_selective_scan(*args, return_last_state=True)
    training, training_state = selective_scan(*args, return_last_state=True, backend="torch")
    # at least as close to the float64 reference as the training scan gets in float32
    for ours, theirs, reference in ((got, training, expected), (state, training_state, expected_state)):
        error = (ours.double() - reference).abs().max().item()
        assert error <= max(2 * (theirs.double() - reference).abs().max().item(), 1e-5), error


def test_onnx_export_matches_pytorch_in_onnxruntime(tmp_path):
    torch.manual_seed(0)
    network = SegResMamba(in_channels=1, out_channels=2, feature_size=8).eval()
    shape = (1, 1, 40, 32, 36)
    path = export_onnx(network, tmp_path / "model.onnx", shape)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    difference = check_onnx(path, network, torch.randn(shape) * 3)
    assert difference < 1e-3
