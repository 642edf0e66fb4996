"""``python -m custom_nets.export --config_file ... --ckpt_file ... --filepath ... --input_shape ...``"""

import fire

from .onnx import export_bundle_onnx

if __name__ == "__main__":
    fire.Fire(export_bundle_onnx)
