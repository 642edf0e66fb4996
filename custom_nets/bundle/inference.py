"""A bundle's inference pipeline: its own preprocessing, network, inferer and postprocessing, run on one image.

The bundle's ``configs/inference.json`` (or ``.yaml``) defines the ids ``network_def``, ``preprocessing``,
``inferer`` and ``postprocessing``; ``models/model.pt`` holds its weights (a plain state dict).
"""

from __future__ import annotations

import logging
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import InputError
from .bundle import Bundle, checked_overrides

__all__ = ["InferencePipeline", "Prediction", "load_state_dict", "probability_activation", "resolve_device"]


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


def load_state_dict(path: str | Path) -> dict:
    """The state dict in a weights file: a plain state dict (``models/model.pt``, a demo's or the label app's
    training result) or a training checkpoint holding one under ``"model"``. Loaded with ``weights_only=True``.

    Raises:
        InputError: the file is missing, not a PyTorch file, or holds no state dict.
    """
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not a PyTorch weights file ({_first_line(e)[:200]})") from None
    except Exception as e:  # torch raises RuntimeError and others for damaged or foreign files
        raise InputError(f"cannot load weights {path}: {_first_line(e)[:200]}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a training checkpoint (model, optimizer, scheduler, ...)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(
            f"{path} holds no state dict (a mapping of parameter names to tensors, or a checkpoint with one under "
            "'model')"
        )
    return state


def probability_activation(postprocessing, key: str) -> tuple[str | None, Any]:
    """How a bundle's postprocessing turns the network's logits under ``key`` into probabilities: ``("softmax",
    step)`` or ``("sigmoid", step)`` when its first step is an ``Activationsd`` doing that to ``key`` (the Model Zoo's
    postprocessing starts so), else ``(None, None)``.

    Args:
        postprocessing: the postprocessing's transforms, in order.
        key: the network output's key in the data (``Bundle.output_key``).
    """
    from monai.transforms import Activationsd

    first = postprocessing[0] if postprocessing else None
    if not isinstance(first, Activationsd) or key not in first.keys:
        return None, None
    index = list(first.keys).index(key)
    if first.other[index] is not None:
        return None, None
    kind = "softmax" if first.softmax[index] else "sigmoid" if first.sigmoid[index] else None
    return kind, (first if kind else None)


@dataclass
class Prediction:
    """One image's result, on the input image's grid.

    Attributes:
        mask: ``(C, X, Y, Z)``: a label map when ``C == 1``, else one binary mask per channel.
        affine: 4x4 voxel-to-RAS-world affine.
        probabilities: ``(C_out, X, Y, Z)`` float32 softmax or sigmoid maps when asked for, else None.
    """

    mask: Any
    affine: Any
    probabilities: Any = None


class InferencePipeline:
    """A bundle's own inference steps: its ``preprocessing``, ``network_def`` with ``models/model.pt``, ``inferer``
    and ``postprocessing``, without the postprocessing's savers (the caller writes the result).

    Args:
        bundle: the bundle (see ``find_bundle``); it must have weights.
        device: where the network runs.
        overrides: plain settings of the config to replace (e.g. ``{"sw_batch_size": 2}``; see
            ``checked_overrides``).
        weights: a weights file to use instead of the bundle's ``models/model.pt`` (see ``load_state_dict``).

    The postprocessing may end with a ``RegionsToLabelsd`` (a BraTS bundle's label map of its region channels); a
    call can stop before it (``regions``).

    Raises:
        InputError: a bad config, override or weights file.
    """

    def __init__(
        self, bundle: Bundle, device, overrides: dict[str, Any] | None = None, weights: str | Path | None = None
    ) -> None:
        from monai.transforms import AsDiscreted, Compose, SaveImage, SaveImaged

        from .transforms import RegionsToLabelsd

        self.bundle, self.device = bundle, device
        weights = bundle.check_weights() if weights is None else Path(weights).expanduser()
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
        transforms = [t for t in transforms if not isinstance(t, (SaveImage, SaveImaged))]
        label_map = next((i for i, t in enumerate(transforms) if isinstance(t, RegionsToLabelsd)), len(transforms))
        if label_map < len(transforms) - 1:
            raise InputError(f"bundle {bundle.name}: {config.name}'s postprocessing must end with its RegionsToLabelsd")
        self._label_map = Compose(transforms[label_map:]) if label_map < len(transforms) else None
        if self._label_map is not None:
            painted = {value for _, value in transforms[label_map].paint}
            if painted != set(bundle.labels.values()):
                raise InputError(
                    f"bundle {bundle.name}: {config.name}'s RegionsToLabelsd paints {sorted(painted)} but its "
                    f"output_labels name {sorted(bundle.labels.values())}"
                )
        transforms = transforms[:label_map]
        self.postprocessing = Compose(transforms)
        # Model Zoo postprocessing: activation, back to the input grid (Invertd), discretisation. Split so that the
        # probabilities can be averaged over flips and saved on the input grid.
        self.activation_kind, self._activation = probability_activation(transforms, bundle.output_key)
        rest = transforms[1:] if self.activation_kind else transforms
        split = next((i for i, t in enumerate(rest) if isinstance(t, AsDiscreted)), None)
        self._to_grid = Compose(rest[:split]) if split is not None else None
        self._discretise = Compose(rest[split:]) if split is not None else None

        state = load_state_dict(weights)
        try:
            self.network.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            # torch lists the problems (missing keys, unexpected keys, size mismatches) one per line after a title
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            reason = lines[1] if len(lines) > 1 else _first_line(e)
            raise InputError(f"weights {weights} do not fit the bundle's network_def: {reason[:300]}") from None
        self.network.to(device).eval()

    def check_probabilities(self, why: str) -> None:
        """Refuse ``why`` (e.g. ``"--tta"``) unless the postprocessing starts with a softmax or sigmoid and later
        discretises (``AsDiscreted``): then probabilities exist between the two.

        Raises:
            InputError: naming what the postprocessing lacks.
        """
        if self.activation_kind is None:
            raise InputError(
                f"{why} needs probabilities, but bundle {self.bundle.name}'s postprocessing does not start with a "
                "softmax or sigmoid (Activationsd)"
            )
        if self._discretise is None:
            raise InputError(
                f"{why} needs probabilities, but bundle {self.bundle.name}'s postprocessing has no AsDiscreted step: "
                "its output is not a mask made from them"
            )

    def check_regions(self, why: str) -> None:
        """Refuse ``why`` (e.g. ``"--brats_regions"``) unless the postprocessing ends with a label map of region
        channels (``RegionsToLabelsd``) that a call can stop before.

        Raises:
            InputError: naming the bundle.
        """
        if self._label_map is None:
            raise InputError(
                f"{why}: bundle {self.bundle.name} does not predict the BraTS regions: its postprocessing makes no "
                "label map of region channels (RegionsToLabelsd)"
            )

    def set_window_progress(self, show: bool) -> None:
        """Show a progress bar over the sliding windows of each image (when the inferer is a sliding window)."""
        if hasattr(self.inferer, "progress"):
            self.inferer.progress = bool(show)

    def preprocess(self, source, spatial_shape: tuple[int, ...] | None = None, clicks: dict | None = None) -> dict:
        """Load and preprocess one image (a file, a DICOM series folder, or a list of single-channel files stacked
        as the channels) with the bundle's preprocessing.

        Args:
            source: the image, or its channels' files in the bundle's channel order.
            spatial_shape: the size its header gives, if known: a loaded image of another size is refused (a
                series reader skips a damaged DICOM slice with a mere warning).
            clicks: a click-guided bundle's clicks, label name -> ``[i, j, k]`` voxel indices of the image as loaded
                (see ``custom_nets.interactive.ClicksToGuidanced``); none: automatic segmentation.

        Raises:
            InputError: the image cannot be read or preprocessed, has the wrong number of channels, or loads with
                another size than ``spatial_shape``.
        """
        from monai.utils import MetaKeys

        key = self.bundle.input_key
        loadable = [str(s) for s in source] if isinstance(source, (list, tuple)) else str(source)
        try:
            data = self.preprocessing({**(clicks or {}), key: loadable})
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

    def __call__(
        self,
        source,
        spatial_shape: tuple[int, ...] | None = None,
        tta: bool = False,
        probabilities: bool = False,
        regions: bool = False,
        clicks: dict | None = None,
    ) -> Prediction:
        """Segment one image (``source``, ``spatial_shape``, ``clicks``: see ``preprocess``).

        Args:
            tta: average the probabilities over flips of each spatial axis (``flip_averaged``) before the mask is
                made from them.
            probabilities: also return the probabilities on the input grid.
            regions: stop before the postprocessing's label map of region channels (see ``check_regions``): one
                binary mask per region.

        Returns:
            the postprocessed prediction ``(C, X, Y, Z)`` as a numpy array (a label map when ``C == 1``), its 4x4
            voxel-to-RAS-world affine (the input image's grid when the postprocessing inverts the preprocessing, as
            Model Zoo bundles do), and the probabilities when asked for.

        Raises:
            InputError: ``tta`` or ``probabilities`` where the bundle has none (see ``check_probabilities``),
                ``regions`` where it makes no label map of regions (``check_regions``), or a bad image.
        """
        import numpy as np
        import torch
        from monai.data import MetaTensor
        from monai.utils import MetaKeys, SpaceKeys

        from .tta import FLIPS, flip_averaged

        if tta:
            self.check_probabilities("--tta")
        if probabilities:
            self.check_probabilities("--save_probabilities")
        if regions:
            self.check_regions("--brats_regions")
        data = self.preprocess(source, spatial_shape, clicks)
        key = self.bundle.output_key
        saved = None
        with torch.no_grad():
            batch = data[self.bundle.input_key].unsqueeze(0).to(self.device)
            if not (tta or probabilities):
                data[key] = self.inferer(batch, self.network)[0]
                data = self.postprocessing(data)
            else:
                data[key] = flip_averaged(
                    lambda x: self.inferer(x, self.network),
                    batch,
                    lambda logits: self._activation({key: logits[0]})[key][None],
                    FLIPS if tta else ((),),
                )[0]
                data = self._to_grid(data)
                if probabilities:
                    saved = data[key].detach().cpu().numpy().astype(np.float32)
                data = self._discretise(data)
            if self._label_map is not None and not regions:
                data = self._label_map(data)
        pred = data[key]
        if not isinstance(pred, MetaTensor):
            raise RuntimeError(f"bundle {self.bundle.name}: its postprocessing dropped the image geometry")
        affine = pred.affine.detach().cpu().numpy().astype(np.float64)
        if pred.meta.get(MetaKeys.SPACE, SpaceKeys.RAS) == SpaceKeys.LPS:
            affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
        return Prediction(pred.detach().cpu().numpy(), affine, saved)
