"""The MONAI bundles this app serves: found in a folder, described by their own metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

WEIGHTS = Path("models") / "model.pt"


@dataclass(frozen=True)
class Bundle:
    """One bundle folder (``configs/metadata.json``, ``configs/inference.json``, ``configs/train.json``)."""

    name: str
    path: Path

    @property
    def weights(self) -> Path:
        """Where training writes the weights and inference reads them (``models/model.pt``)."""
        return self.path / WEIGHTS

    @cached_property
    def metadata(self) -> dict[str, Any]:
        return json.loads((self.path / "configs" / "metadata.json").read_text())

    @property
    def output_channels(self) -> dict[int, str]:
        """Channel index -> class name of the network output, background included."""
        pred = next(iter(self.metadata["network_data_format"]["outputs"].values()))
        return {int(index): name for index, name in pred["channel_def"].items()}

    @property
    def labels(self) -> dict[str, int]:
        """Label name -> value in the masks, without background (what MONAI Label and 3D Slicer show)."""
        return {name: index for index, name in self.output_channels.items() if name.lower() != "background"}

    @property
    def input_channels(self) -> int:
        return int(next(iter(self.metadata["network_data_format"]["inputs"].values()))["num_channels"])

    def config_file(self, config: str) -> Path:
        return self.path / "configs" / f"{config}.json"

    def parser(self, config: str) -> ConfigParser:
        """A parser of ``configs/<config>.json`` with ``bundle_root`` set to this folder."""
        parser = ConfigParser()
        parser.read_config(str(self.config_file(config)))
        parser["bundle_root"] = str(self.path)
        return parser


def find_bundles(bundles_dir: str | Path, names: list[str] | None = None) -> dict[str, Bundle]:
    """The bundles in ``bundles_dir`` (every folder with ``configs/metadata.json``), or only ``names``.

    Raises:
        FileNotFoundError: ``bundles_dir`` is not a folder.
        ValueError: a name in ``names`` is not a bundle there (the message lists the ones that are).
    """
    root = Path(bundles_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"bundles folder {root} does not exist")
    found = {
        folder.name: Bundle(folder.name, folder)
        for folder in sorted(root.iterdir())
        if (folder / "configs" / "metadata.json").is_file()
    }
    if names is None:
        return found
    unknown = [name for name in names if name not in found]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; bundles in {root}: {sorted(found)}")
    return {name: found[name] for name in names}
