"""The ONNX export that stands in for TorchScript."""

from __future__ import annotations

import pytest
import torch

from custom_nets import SegResMamba
from custom_nets.blocks import TriOrientedMamba
from custom_nets.export import check_onnx, export_onnx


def test_torchscript_cannot_compile_the_network():
    """Why the bundles export ONNX instead of TorchScript (see their docs/README.md)."""
    with pytest.raises(Exception):
        torch.jit.script(SegResMamba(feature_size=8))


def test_onnx_export_matches_pytorch_in_onnxruntime(tmp_path):
    """The export traces the static scan backend (its chunk loops become ONNX Loops) and leaves the network's own
    backend as it was."""
    import onnx

    torch.manual_seed(0)
    network = SegResMamba(in_channels=1, out_channels=2, feature_size=8, min_size=32).eval()
    shape = (1, 1, 40, 32, 36)
    path = export_onnx(network, tmp_path / "model.onnx", shape)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    loops = [node for node in onnx.load(path).graph.node if node.op_type == "Loop"]
    assert len(loops) == 8 * 3  # one per scan direction of every ToM layer
    assert {m.backend for m in network.modules() if isinstance(m, TriOrientedMamba)} == {"auto"}
    difference = check_onnx(path, network, torch.randn(shape) * 3)
    assert difference < 1e-3
