"""Export of SegResMamba to ONNX (TorchScript cannot compile its selective scan)."""

from .onnx import OPSET, check_onnx, export_bundle_onnx, export_onnx

__all__ = ["OPSET", "check_onnx", "export_bundle_onnx", "export_onnx"]
