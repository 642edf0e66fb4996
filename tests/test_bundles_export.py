"""Checkpoints that survive a failed save, and the ONNX export that stands in for TorchScript."""

from __future__ import annotations

import pytest
import torch

from custom_nets import SegResMamba
from custom_nets.blocks import TriOrientedMamba
from custom_nets.export import check_onnx, export_onnx
from custom_nets.training import AtomicCheckpointSaver, AtomicDiskSaver


def test_failed_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    saver = AtomicDiskSaver(tmp_path, filename="model.pt")
    saver({"w": torch.ones(3)}, "ignored_name.pt")
    saver.remove("ignored_name.pt")  # what ignite does before it saves a better model under the same name

    def crash(obj, f, *args, **kwargs):
        with open(f, "wb") as stream:
            stream.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        saver({"w": torch.zeros(3)}, "ignored_name.pt")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], torch.ones(3))
    saver({"w": torch.zeros(3)}, "ignored_name.pt")
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], torch.zeros(3))


def test_rotating_checkpoints_delete_the_old_file_only_after_the_new_one_landed(tmp_path):
    saver = AtomicDiskSaver(tmp_path)
    saver({"w": torch.ones(1)}, "model_epoch=1.pt")
    saver.remove("model_epoch=1.pt")
    assert (tmp_path / "model_epoch=1.pt").exists()
    saver({"w": torch.ones(1)}, "model_epoch=2.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["model_epoch=2.pt"]


def test_checkpoint_saver_uses_the_atomic_disk_saver(tmp_path):
    network = torch.nn.Linear(2, 2)
    saver = AtomicCheckpointSaver(
        str(tmp_path), {"model": network}, save_key_metric=True, key_metric_filename="model.pt", save_final=True,
    )
    for checkpoint in (saver._key_metric_checkpoint, saver._final_checkpoint):
        assert isinstance(checkpoint.save_handler, AtomicDiskSaver)
    assert saver._key_metric_checkpoint.save_handler.filename == "model.pt"


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
