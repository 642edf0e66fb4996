"""Multi-channel cases stored as one file per channel: a case folder ``<case>/`` holding ``<case>_<channel>.nii.gz``
for each input channel (BraTS 2021: ``<case>_flair``, ``_t1``, ``_t1ce``, ``_t2``), or a folder of such case folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .header import ImageHeader, read_header
from .inputs import ImageInput

__all__ = ["ChannelFilesCase", "find_channel_cases", "read_case_header"]

CASE_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class ChannelFilesCase:
    """One case made of one single-channel file per input channel.

    Attributes:
        path: the case folder.
        name: the case name (the folder name): it names the outputs.
        files: one file per channel, in the network's channel order.
    """

    path: Path
    name: str
    files: tuple[Path, ...]
    format: str = "nifti"

    def channel_inputs(self) -> list[ImageInput]:
        """Each channel's file as an image of its own (to read or check its header and voxels)."""
        return [ImageInput(path=f, format=self.format, name=self.name) for f in self.files]


def _channel_file(folder: Path, channel: str) -> Path | None:
    for suffix in CASE_SUFFIXES:
        for name in (f"{folder.name}_{channel.lower()}{suffix}", f"{folder.name}_{channel}{suffix}"):
            if (folder / name).is_file():
                return folder / name
    return None


def _is_case_folder(folder: Path, channels: tuple[str, ...]) -> bool:
    return folder.is_dir() and any(_channel_file(folder, channel) is not None for channel in channels)


def _case(folder: Path, channels: tuple[str, ...]) -> ChannelFilesCase:
    files = {channel: _channel_file(folder, channel) for channel in channels}
    missing = [f"{folder.name}_{c.lower()}.nii.gz" for c, f in files.items() if f is None]
    if missing:
        raise InputError(
            f"case folder {folder} lacks {', '.join(missing)} (a case needs one file per channel: "
            f"{', '.join(c.lower() for c in channels)})"
        )
    return ChannelFilesCase(path=folder, name=folder.name, files=tuple(files[c] for c in channels))


def find_channel_cases(path: str | Path, channels: tuple[str, ...]) -> list[ChannelFilesCase] | None:
    """The cases behind ``path`` when it is a case folder or a folder of case folders, else None (then it is an
    ordinary input, see ``find_inputs``).

    Args:
        path: what the user gave as input.
        channels: the input channel names in the network's order (``Bundle.input_channel_names``); files are
            matched by ``<case>_<name in lower case>``.

    Raises:
        InputError: a case folder lacks a channel's file.
    """
    path = Path(path)
    if len(channels) < 2 or not path.is_dir():
        return None
    if _is_case_folder(path, channels):
        return [_case(path, channels)]
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    folders = [p for p in entries if _is_case_folder(p, channels)]
    return [_case(folder, channels) for folder in folders] or None


def read_case_header(case: ChannelFilesCase) -> ImageHeader:
    """Size of ``case`` as one image with a channel per file, from the files' headers.

    Raises:
        InputError: a file is unreadable, has channels of its own, or differs in size from the others.
    """
    headers = [read_header(image) for image in case.channel_inputs()]
    for file, header in zip(case.files, headers):
        if header.num_channels != 1:
            raise InputError(f"{file} has {header.num_channels} channels: a case needs one single-channel file each")
    shapes = {h.spatial_shape for h in headers}
    if len(shapes) > 1:
        sizes = ", ".join(f"{f.name} {h.spatial_shape}" for f, h in zip(case.files, headers))
        raise InputError(f"the files of case {case.path} differ in size: {sizes}")
    return ImageHeader(headers[0].spatial_shape, len(headers))
