"""ONNX export of SegResMamba, checked against the PyTorch network with onnxruntime.

TorchScript (``monai.bundle ckpt_export``) cannot compile the network: its selective scan is a
``torch.autograd.Function`` whose chunk boundaries depend on the data. The export here traces the network with
its ToM layers set to the ``"static"`` scan backend (same results, shape-only control flow, the chunk loop as one
ONNX ``Loop``), for one fixed input shape.

Command line, from a bundle folder (overrides such as ``--feature_size 8`` as for ``monai.bundle run``)::

    python -m custom_nets.export --config_file configs/inference.json --ckpt_file models/model.pt \\
        --filepath models/model.onnx --input_shape "[1, 1, 96, 96, 96]"
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..blocks import TriOrientedMamba
from ..io.atomic import atomic_output

__all__ = ["OPSET", "check_onnx", "export_bundle_onnx", "export_onnx"]

OPSET = 17


def export_onnx(network: torch.nn.Module, filepath: str | Path, input_shape: Sequence[int], opset: int = OPSET) -> Path:
    """Write ``network`` (eval mode, CPU, float32) as ONNX for inputs of ``input_shape`` (batch, C, D, H, W).

    The graph has one input ``image`` and one output ``pred``. The file appears only when the export succeeded.
    """
    filepath = Path(filepath)
    if len(input_shape) != 5:
        raise ValueError(f"input_shape must be (batch, channels, D, H, W), got {tuple(input_shape)}")
    network = network.eval().cpu().float()
    example = torch.zeros(tuple(int(n) for n in input_shape))
    with atomic_output(filepath) as temporary, _scan_backend(network, "static"), torch.no_grad(), \
            warnings.catch_warnings():
        # the input padding is computed from shapes, which the tracer records as constants: right for a fixed shape
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            network, (example,), str(temporary), dynamo=False, input_names=["image"], output_names=["pred"],
            opset_version=opset, do_constant_folding=False,
        )
    return filepath


@contextlib.contextmanager
def _scan_backend(network: torch.nn.Module, backend: str) -> Iterator[None]:
    """The ToM layers of ``network`` scan with ``backend`` within the block; their own backends come back after."""
    toms = [m for m in network.modules() if isinstance(m, TriOrientedMamba)]
    previous = [tom.backend for tom in toms]
    for tom in toms:
        tom.backend = backend
    try:
        yield
    finally:
        for tom, name in zip(toms, previous):
            tom.backend = name


def check_onnx(filepath: str | Path, network: torch.nn.Module, inputs: torch.Tensor, atol: float = 1e-3) -> float:
    """Run ``filepath`` in onnxruntime (CPU) and ``network`` in PyTorch on ``inputs``; the largest difference.

    Raises:
        AssertionError: the outputs differ by more than ``atol``, or in shape.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(filepath), providers=["CPUExecutionProvider"])
    (exported,) = session.run(["pred"], {"image": inputs.cpu().numpy().astype(np.float32)})
    with torch.no_grad():
        expected = network.eval().cpu()(inputs.cpu().float()).numpy()
    if exported.shape != expected.shape:
        raise AssertionError(f"ONNX output shape {exported.shape} differs from PyTorch's {expected.shape}")
    difference = float(np.abs(exported - expected).max())
    if not difference <= atol:
        raise AssertionError(f"ONNX output differs from PyTorch's by {difference} (> atol={atol})")
    return difference


def export_bundle_onnx(
    config_file: str | Sequence[str],
    ckpt_file: str,
    filepath: str,
    input_shape: Sequence[int],
    meta_file: str | None = None,
    net_id: str = "network_def",
    check: bool = True,
    **override,
) -> None:
    """Build ``net_id`` from a bundle config, load ``ckpt_file`` (a state dict), export it, check it on random data."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_file)
    if meta_file is not None:
        parser.read_meta(meta_file)
    parser.update(override)
    network = parser.get_parsed_content(net_id)
    if not Path(ckpt_file).is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_file} does not exist")
    network.load_state_dict(torch.load(ckpt_file, map_location="cpu", weights_only=True))
    export_onnx(network, filepath, input_shape)
    if check:
        difference = check_onnx(filepath, network, torch.rand(tuple(int(n) for n in input_shape)))
        print(f"exported {filepath}; onnxruntime matches PyTorch within {difference:.2e}")
