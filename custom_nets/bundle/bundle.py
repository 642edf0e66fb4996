"""A MONAI bundle in the Model Zoo layout, described by its own files, and finding bundles by name or folder.

A bundle folder holds ``configs/metadata.json``, ``configs/<name>.json`` (or ``.yaml``) for each workflow
(``inference``, ``train``, ``evaluate``, ...), and ``models/model.pt`` once trained.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ..io import InputError
from .folders import bundles_folder
from .options import ValueRejected, parser_like

__all__ = ["WEIGHTS", "Bundle", "bundle_search_dirs", "checked_overrides", "find_bundle", "find_bundles"]

WEIGHTS = Path("models") / "model.pt"
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass(frozen=True)
class Bundle:
    """One bundle folder.

    Args:
        name: the bundle's name (its folder name).
        path: the bundle folder.
    """

    name: str
    path: Path

    @classmethod
    def at(cls, folder: str | Path) -> Bundle:
        """The bundle in ``folder``, its metadata checked to be readable.

        Raises:
            InputError: ``folder`` has no readable ``configs/metadata.json``.
        """
        path = Path(folder).expanduser().resolve()
        bundle = cls(path.name, path)
        bundle.metadata  # noqa: B018 (read now: a broken bundle is refused where it is found)
        return bundle

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """The parsed ``configs/metadata.json``."""
        meta_file = self.path / "configs" / "metadata.json"
        try:
            return json.loads(meta_file.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"bundle {self.path}: cannot read {meta_file}: {e}") from None

    @property
    def weights(self) -> Path:
        """Where training writes the weights and inference reads them (``models/model.pt``)."""
        return self.path / WEIGHTS

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", ""))

    @property
    def description(self) -> str:
        return str(self.metadata.get("description", ""))

    def _data_format(self, kind: str) -> dict[str, dict]:
        formats = self.metadata.get("network_data_format", {}).get(kind, {})
        if not formats:
            raise InputError(f"bundle {self.path}: metadata.json has no network_data_format.{kind}")
        return formats

    @property
    def input_key(self) -> str:
        """The data key of the network input (``"image"`` in the Model Zoo)."""
        return next(iter(self._data_format("inputs")))

    @property
    def output_key(self) -> str:
        """The data key of the prediction (``"pred"`` in the Model Zoo)."""
        return next(iter(self._data_format("outputs")))

    @property
    def input_channels(self) -> int:
        """Image channels the network takes."""
        return int(self._data_format("inputs")[self.input_key].get("num_channels", 1))

    @property
    def click_labels(self) -> dict[str, int]:
        """Label name -> value of a click-guided (DeepEdit) bundle, background included, in the order of its
        guidance channels (metadata ``click_guidance.label_names``); empty for a bundle that takes no clicks."""
        return {str(k): int(v) for k, v in self.metadata.get("click_guidance", {}).get("label_names", {}).items()}

    @property
    def image_channels(self) -> int:
        """Image channels an input file has: the network's input channels less a click-guided bundle's guidance
        channels (those are made from the clicks)."""
        return self.input_channels - len(self.click_labels)

    @property
    def input_channel_names(self) -> tuple[str, ...]:
        """Names of the input channels in the network's order, as the metadata gives them (e.g. BraTS: FLAIR, T1,
        T1ce, T2); empty where the metadata names none."""
        names = self._data_format("inputs")[self.input_key].get("channel_def", {})
        return tuple(str(names[k]) for k in sorted(names, key=int))

    @property
    def channel_def(self) -> dict[str, str]:
        """Class names of the prediction as the metadata gives them, by label value (one-channel label map) or by
        channel."""
        return dict(self._data_format("outputs")[self.output_key].get("channel_def", {}))

    @property
    def output_channels(self) -> dict[int, str]:
        """Channel index (or label value) -> class name of the network output, background included."""
        return {int(index): name for index, name in self.channel_def.items()}

    @cached_property
    def labels(self) -> dict[str, int]:
        """Label name -> value in the masks its inference config makes, without background (what MONAI Label and
        3D Slicer show): the config's ``output_labels`` where its postprocessing makes a label map of its own (a
        BraTS bundle's ``RegionsToLabelsd``), else the metadata's output ``channel_def``.

        Raises:
            InputError: ``output_labels`` is not a mapping of names to label values in 1..255.
        """
        labels = self.config_entry("inference", "output_labels")
        if labels is None:
            return {name: index for index, name in self.output_channels.items() if name.lower() != "background"}
        if not isinstance(labels, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v < 256 for v in labels.values()
        ):
            raise InputError(f"bundle {self.path}: output_labels must map label names to values in 1..255")
        return {str(name): int(value) for name, value in labels.items()}

    def config_file(self, config: str) -> Path:
        """``configs/<config>.json`` (or ``.yaml``, ``.yml``).

        Raises:
            InputError: the bundle has no such config.
        """
        for suffix in CONFIG_SUFFIXES:
            candidate = self.path / "configs" / f"{config}{suffix}"
            if candidate.is_file():
                return candidate
        raise InputError(f"bundle {self.path} has no configs/{config}.json: not a MONAI bundle with a {config} config")

    def config_entry(self, config: str, key: str, default: Any = None) -> Any:
        """The top-level entry ``key`` of ``configs/<config>.json`` as written (not evaluated), or ``default``; a
        bundle without that config gives ``default``."""
        from monai.bundle import ConfigParser

        try:
            path = self.config_file(config)
        except InputError:
            return default
        try:
            content = ConfigParser.load_config_file(str(path))
        except Exception as e:  # JSON or YAML syntax
            raise InputError(f"bundle {self.path}: cannot read {path}: {str(e).splitlines()[0] if str(e) else e}") from None
        return content.get(key, default) if isinstance(content, dict) else default

    def parser(self, config: str):
        """A ``monai.bundle.ConfigParser`` of ``configs/<config>.json`` with ``bundle_root`` set to this folder."""
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(self.config_file(config)))
        parser["bundle_root"] = str(self.path)
        return parser

    def check_weights(self) -> Path:
        """The weights file, checked to exist.

        Raises:
            InputError: the bundle has not been trained (the message says how to train it).
        """
        if self.weights.is_file():
            return self.weights
        train = self.path / "configs" / "train.json"
        help_text = (
            f"train them with `python -m monai.bundle run --bundle_root {self.path} --config_file {train}` "
            f"(see {self.path / 'docs' / 'README.md'}) or copy a trained state dict there"
            if train.is_file()
            else "copy a trained state dict there"
        )
        raise InputError(f"bundle {self.name} has no trained weights ({self.weights} is missing): {help_text}")


def checked_overrides(parser, overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides from a user, checked before they reach the config: MONAI evaluates config strings (``$`` runs
    Python, ``@`` and ``%`` refer to other entries), so only the plain settings at the top of the config (numbers,
    true/false, lists of numbers: ``feature_size``, ``patch_size``, ``pixdim``, ``sw_batch_size``, ...) can be
    set, each to a value of its own kind (``options.parser_like``).

    Args:
        parser: the parsed config (``Bundle.parser``).
        overrides: setting name -> value, as the command line parsed it.

    Raises:
        InputError: an unknown setting, one that is not plain, or a value of another kind or out of range.
    """
    settings = {key: parser_like(value) for key, value in parser.config.items()}
    settings = {key: setting for key, setting in settings.items() if setting is not None}
    checked = {}
    for name, value in overrides.items():
        if name not in settings:
            raise InputError(
                f"unknown setting {name!r} for this bundle's config: settings that can be set are "
                f"{', '.join(sorted(settings))}"
            )
        try:
            checked[name] = settings[name].parse(name, value)
        except ValueRejected as e:
            raise InputError(f"setting {name} takes {e.expected}, not {e.value!r}") from None
    return checked


def bundle_search_dirs() -> list[Path]:
    """Where a bundle given by name is looked for, in order: the project's bundles folder (``bundles_folder()``:
    ``$SEGRESMAMBA_BUNDLES``, the checkout's ``bundles/`` or the installed ones), ``./bundles``, and MONAI's bundle
    download folder."""
    dirs = []
    try:
        dirs.append(bundles_folder())
    except FileNotFoundError:
        pass
    dirs.append(Path.cwd() / "bundles")
    torch_home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch"
    dirs.append(Path(torch_home).expanduser() / "hub" / "bundle")
    return list(dict.fromkeys(dirs))


def find_bundle(bundle: str | Path) -> Bundle:
    """The bundle at path ``bundle``, or named ``bundle`` in one of ``bundle_search_dirs()``.

    Raises:
        InputError: no such bundle, or its metadata is unreadable.
    """
    path = Path(bundle).expanduser()
    if not path.is_dir():
        candidates = [d / str(bundle) for d in bundle_search_dirs()] if len(path.parts) == 1 else []
        found = next((c for c in candidates if c.is_dir()), None)
        if found is None:
            where = ", ".join(str(d) for d in bundle_search_dirs()) if candidates else "that path"
            raise InputError(f"bundle not found: {bundle} (looked in {where}; give a bundle name or folder)")
        path = found
    return Bundle.at(path)


def find_bundles(folder: str | Path | None = None, names: list[str] | None = None) -> dict[str, Bundle]:
    """The bundles in ``folder`` (default ``bundles_folder()``; every subfolder with ``configs/metadata.json``), or
    only ``names``, by name.

    Raises:
        InputError: ``folder`` is not a folder, or a name in ``names`` is not a bundle there (the message lists the
            ones that are).
    """
    root = Path(folder if folder is not None else bundles_folder()).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"bundles folder {root} does not exist")
    found = {
        child.name: Bundle.at(child) for child in sorted(root.iterdir()) if (child / "configs" / "metadata.json").is_file()
    }
    if names is None:
        return found
    unknown = [name for name in names if name not in found]
    if unknown:
        raise InputError(f"unknown model(s) {unknown}; bundles in {root}: {sorted(found)}")
    return {name: found[name] for name in names}
