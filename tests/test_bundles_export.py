"""Checkpoints that survive a failed save, and the ONNX export that stands in for TorchScript."""

from __future__ import annotations

import pytest
import torch

from custom_nets import SegResMamba
from custom_nets.export import check_onnx, export_onnx, static_selective_scan
from custom_nets.ops import selective_scan
from custom_nets.training import AtomicCheckpointSaver, AtomicDiskSaver
from ssm_reference import selective_scan_stepwise


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
