"""Export of SegResMamba to ONNX (TorchScript cannot compile its selective scan)."""

from .onnx import OPSET, check_onnx, export_bundle_onnx, export_onnx
from .static_scan import CHUNK_ELEMENTS, static_scan_in_tom, static_selective_scan

__all__ = [
    "OPSET",
    "CHUNK_ELEMENTS",
    "check_onnx",
    "export_bundle_onnx",
    "export_onnx",
    "static_scan_in_tom",
    "static_selective_scan",
]
