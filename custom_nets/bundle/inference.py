"""A bundle's inference pipeline: its own preprocessing, network, inferer and postprocessing, run on one image.

The bundle's ``configs/inference.json`` (or ``.yaml``) defines the ids ``network_def``, ``preprocessing``,
``inferer`` and ``postprocessing``; ``models/model.pt`` holds its weights (a plain state dict).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from ..io import InputError
from .bundle import Bundle, checked_overrides

__all__ = ["InferencePipeline", "resolve_device"]


def resolve_device(device: str = "auto"):
    """``torch.device`` for ``device``: ``"auto"`` is CUDA when available, else the CPU.

    Raises:
        InputError: an unknown device name, or CUDA asked for where there is none.
    """
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(str(device))
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} asked for, but CUDA is not available here (use auto or cpu)")
    return chosen


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _root_cause(error: BaseException) -> BaseException:
    """MONAI wraps a failing transform's error ("applying transform ..."): the innermost error says what broke."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


class InferencePipeline:
    """A bundle's own inference steps: its ``preprocessing``, ``network_def`` with ``models/model.pt``, ``inferer``
    and ``postprocessing``, without the postprocessing's savers (the caller writes the result).

    Args:
        bundle: the bundle (see ``find_bundle``); it must have weights.
        device: where the network runs.
        overrides: plain settings of the config to replace (e.g. ``{"sw_batch_size": 2}``; see
            ``checked_overrides``).
    """

    def __init__(self, bundle: Bundle, device, overrides: dict[str, Any] | None = None) -> None:
        import torch
        from monai.transforms import Compose, SaveImage, SaveImaged

        self.bundle, self.device = bundle, device
        weights = bundle.check_weights()
        config = bundle.config_file("inference")
        parser = bundle.parser("inference")
        if "device" in parser:
            parser["device"] = device
        for key, value in checked_overrides(parser, overrides or {}).items():
            parser[key] = value
        # LoadImage registers MONAI's GPU DICOM reader, which warns twice where nvImageCodec is not installed
        logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
                self.network = parser.get_parsed_content("network_def")
                self.preprocessing = parser.get_parsed_content("preprocessing")
                self.inferer = parser.get_parsed_content("inferer")
                postprocessing = parser.get_parsed_content("postprocessing")
        except Exception as e:
            raise InputError(f"bundle {bundle.name}: cannot build {config.name}: {_first_line(e)}") from None
        transforms = postprocessing.transforms if isinstance(postprocessing, Compose) else (postprocessing,)
        self.postprocessing = Compose([t for t in transforms if not isinstance(t, (SaveImage, SaveImaged))])

        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(f"cannot load weights {weights}: {_first_line(e)}") from None
        try:
            self.network.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            # torch lists the problems (missing keys, unexpected keys, size mismatches) one per line after a title
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            reason = lines[1] if len(lines) > 1 else _first_line(e)
            raise InputError(f"weights {weights} do not fit the bundle's network_def: {reason[:300]}") from None
        self.network.to(device).eval()

    def preprocess(self, source: str | Path, spatial_shape: tuple[int, ...] | None = None) -> dict:
        """Load and preprocess one image (a file, or a DICOM series folder) with the bundle's preprocessing.

        Args:
            source: the image.
            spatial_shape: the size its header gives, if known: a loaded image of another size is refused (a
                series reader skips a damaged DICOM slice with a mere warning).

        Raises:
            InputError: the image cannot be read or preprocessed, has the wrong number of channels, or loads with
                another size than ``spatial_shape``.
        """
        from monai.utils import MetaKeys

        key = self.bundle.input_key
        try:
            data = self.preprocessing({key: str(source)})
        except Exception as e:
            raise InputError(f"cannot load {source}: {_first_line(_root_cause(e))}") from None
        image = data[key]
        loaded = getattr(image, "meta", {}).get(MetaKeys.SPATIAL_SHAPE)
        if spatial_shape is not None and loaded is not None and tuple(int(n) for n in loaded) != tuple(spatial_shape):
            raise InputError(
                f"{source} loads as {tuple(int(n) for n in loaded)} voxels but its header says {tuple(spatial_shape)}:"
                " a file or slice is damaged"
            )
        if image.ndim != 4 or image.shape[0] != self.bundle.input_channels:
            raise InputError(
                f"{source} gives a ({', '.join(map(str, image.shape))}) image after preprocessing: bundle "
                f"{self.bundle.name} expects {self.bundle.input_channels} channel(s) and 3 spatial dimensions"
            )
        return data

    def __call__(self, source: str | Path, spatial_shape: tuple[int, ...] | None = None):
        """Segment one image (``spatial_shape``: see ``preprocess``).

        Returns:
            ``(mask, affine)``: the postprocessed prediction ``(C, X, Y, Z)`` as a numpy array (a label map when
            ``C == 1``) and its 4x4 voxel-to-RAS-world affine (the input image's grid when the postprocessing
            inverts the preprocessing, as Model Zoo bundles do).
        """
        import numpy as np
        import torch
        from monai.data import MetaTensor
        from monai.utils import MetaKeys, SpaceKeys

        data = self.preprocess(source, spatial_shape)
        with torch.no_grad():
            batch = data[self.bundle.input_key].unsqueeze(0).to(self.device)
            data[self.bundle.output_key] = self.inferer(batch, self.network)[0]
            data = self.postprocessing(data)
        pred = data[self.bundle.output_key]
        if not isinstance(pred, MetaTensor):
            raise RuntimeError(f"bundle {self.bundle.name}: its postprocessing dropped the image geometry")
        affine = pred.affine.detach().cpu().numpy().astype(np.float64)
        if pred.meta.get(MetaKeys.SPACE, SpaceKeys.RAS) == SpaceKeys.LPS:
            affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
        return pred.detach().cpu().numpy(), affine
