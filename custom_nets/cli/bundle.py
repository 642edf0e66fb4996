"""Finding a MONAI bundle and building its inference pipeline (Model Zoo layout).

A bundle folder holds ``configs/inference.json`` (or ``.yaml``) with the ids ``network_def``, ``preprocessing``,
``inferer`` and ``postprocessing``, ``configs/metadata.json`` and ``models/model.pt`` (a plain state dict).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import InputError

__all__ = ["BundleFiles", "InferencePipeline", "bundle_search_dirs", "find_bundle", "resolve_device"]

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")


def bundle_search_dirs() -> list[Path]:
    """Where a bundle given by name is looked for, in order: this project's ``bundles/`` folder (beside the
    ``custom_nets`` package in a source checkout), ``./bundles``, and MONAI's bundle download folder."""
    dirs = [Path(__file__).resolve().parents[2] / "bundles", Path.cwd() / "bundles"]
    torch_home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch"
    dirs.append(Path(torch_home).expanduser() / "hub" / "bundle")
    return list(dict.fromkeys(dirs))


@dataclass(frozen=True)
class BundleFiles:
    """The files of a bundle that prediction needs, checked to exist.

    Attributes:
        root: the bundle folder.
        config: its inference config.
        metadata: the parsed ``configs/metadata.json``.
        weights: ``models/model.pt``.
    """

    root: Path
    config: Path
    metadata: dict
    weights: Path

    @property
    def name(self) -> str:
        return self.root.name

    def _input_format(self) -> tuple[str, dict]:
        inputs = self.metadata.get("network_data_format", {}).get("inputs", {})
        if not inputs:
            raise InputError(f"bundle {self.root}: metadata.json has no network_data_format.inputs")
        key = next(iter(inputs))
        return key, inputs[key]

    @property
    def input_key(self) -> str:
        """The data key of the network input (``"image"`` in the Model Zoo)."""
        return self._input_format()[0]

    @property
    def output_key(self) -> str:
        """The data key of the prediction (``"pred"`` in the Model Zoo)."""
        outputs = self.metadata.get("network_data_format", {}).get("outputs", {})
        return next(iter(outputs), "pred")

    @property
    def num_channels(self) -> int:
        """Image channels the network takes."""
        return int(self._input_format()[1].get("num_channels", 1))

    @property
    def channel_def(self) -> dict[str, str]:
        """Class names of the prediction, by label value (one-channel label map) or by channel."""
        outputs = self.metadata.get("network_data_format", {}).get("outputs", {})
        return dict(outputs.get(self.output_key, {}).get("channel_def", {}))

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", ""))


def _weights_help(root: Path) -> str:
    train = root / "configs" / "train.json"
    if train.is_file():
        return (
            f"train them with `python -m monai.bundle run --bundle_root {root} --config_file {train}` "
            f"(see {root / 'docs' / 'README.md'}) or copy a trained state dict there"
        )
    return "copy a trained state dict there"


def find_bundle(bundle: str | Path) -> BundleFiles:
    """The bundle at path ``bundle``, or named ``bundle`` in one of ``bundle_search_dirs()``.

    Raises:
        InputError: no such bundle, a file of it is missing (the weights included), or its metadata is unreadable.
    """
    path = Path(bundle).expanduser()
    if not path.is_dir():
        candidates = [d / str(bundle) for d in bundle_search_dirs()] if len(path.parts) == 1 else []
        found = next((c for c in candidates if c.is_dir()), None)
        if found is None:
            where = ", ".join(str(d) for d in bundle_search_dirs()) if candidates else "that path"
            raise InputError(f"bundle not found: {bundle} (looked in {where}; give a bundle name or folder)")
        path = found
    root = path.resolve()
    config = next((root / "configs" / n for n in CONFIG_NAMES if (root / "configs" / n).is_file()), None)
    if config is None:
        raise InputError(f"bundle {root} has no configs/inference.json: not a MONAI bundle with an inference config")
    meta_file = root / "configs" / "metadata.json"
    try:
        metadata = json.loads(meta_file.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"bundle {root}: cannot read {meta_file}: {e}") from None
    weights = root / "models" / "model.pt"
    if not weights.is_file():
        raise InputError(f"bundle {root.name} has no trained weights ({weights} is missing): {_weights_help(root)}")
    return BundleFiles(root=root, config=config, metadata=metadata, weights=weights)


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
        files: the bundle (see ``find_bundle``).
        device: where the network runs.
        overrides: config values to replace, by MONAI config id (e.g. ``{"inferer#sw_batch_size": 2}``).
    """

    def __init__(self, files: BundleFiles, device, overrides: dict[str, Any] | None = None) -> None:
        import torch
        from monai.bundle import ConfigParser
        from monai.transforms import Compose, SaveImage, SaveImaged

        self.files, self.device = files, device
        parser = ConfigParser()
        parser.read_config(str(files.config))
        parser["bundle_root"] = str(files.root)
        if "device" in parser:
            parser["device"] = device
        for key, value in (overrides or {}).items():
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
            raise InputError(f"bundle {files.name}: cannot build {files.config.name}: {_first_line(e)}") from None
        transforms = postprocessing.transforms if isinstance(postprocessing, Compose) else (postprocessing,)
        self.postprocessing = Compose([t for t in transforms if not isinstance(t, (SaveImage, SaveImaged))])

        try:
            state = torch.load(files.weights, map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(f"cannot load weights {files.weights}: {_first_line(e)}") from None
        try:
            self.network.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            # torch lists the problems (missing keys, unexpected keys, size mismatches) one per line after a title
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            reason = lines[1] if len(lines) > 1 else _first_line(e)
            raise InputError(f"weights {files.weights} do not fit the bundle's network_def: {reason[:300]}") from None
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

        key = self.files.input_key
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
        if image.ndim != 4 or image.shape[0] != self.files.num_channels:
            raise InputError(
                f"{source} gives a ({', '.join(map(str, image.shape))}) image after preprocessing: bundle "
                f"{self.files.name} expects {self.files.num_channels} channel(s) and 3 spatial dimensions"
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
            batch = data[self.files.input_key].unsqueeze(0).to(self.device)
            data[self.files.output_key] = self.inferer(batch, self.network)[0]
            data = self.postprocessing(data)
        pred = data[self.files.output_key]
        if not isinstance(pred, MetaTensor):
            raise RuntimeError(f"bundle {self.files.name}: its postprocessing dropped the image geometry")
        affine = pred.affine.detach().cpu().numpy().astype(np.float64)
        if pred.meta.get(MetaKeys.SPACE, SpaceKeys.RAS) == SpaceKeys.LPS:
            affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
        return pred.detach().cpu().numpy(), affine
