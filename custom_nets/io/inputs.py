"""Finding the images behind a path the user gave: one image file, a DICOM series folder, or a folder of both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

__all__ = ["IMAGE_SUFFIXES", "ImageInput", "find_inputs", "is_dicom_file"]

# suffix (lower case) -> format; a DICOM series is a folder, so it has no suffix here
IMAGE_SUFFIXES = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
}
SUPPORTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) or a folder holding one DICOM series"


@dataclass(frozen=True)
class ImageInput:
    """One image to segment.

    Attributes:
        path: the image file, or the folder of a DICOM series.
        format: ``"nifti"``, ``"nrrd"``, ``"metaimage"`` or ``"dicom"``.
        name: the file name without its suffix, or the folder name: it names the outputs made from this image.
        dicom_files: for a DICOM series, its files (sorted by name); empty otherwise.
    """

    path: Path
    format: str
    name: str
    dicom_files: tuple[Path, ...] = ()


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (128-byte preamble, then ``DICM``)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def image_suffix(path: Path) -> str | None:
    """The known image suffix ``path`` ends with (see ``IMAGE_SUFFIXES``), or None."""
    lower = path.name.lower()
    return next((suffix for suffix in IMAGE_SUFFIXES if lower.endswith(suffix)), None)


def _visible_entries(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise InputError(f"cannot list folder {folder}: {e.strerror}") from None


def _dicom_files(folder: Path) -> tuple[Path, ...]:
    """The DICOM files directly inside ``folder`` (a DICOMDIR index is not an image)."""
    return tuple(
        p for p in _visible_entries(folder) if p.is_file() and p.name.upper() != "DICOMDIR" and is_dicom_file(p)
    )


def _image_file(path: Path) -> ImageInput:
    suffix = image_suffix(path)
    if suffix is None:
        if is_dicom_file(path):
            raise InputError(f"{path} is a single DICOM file: give the folder that holds its whole series")
        raise InputError(f"unsupported image format: {path} (expected {SUPPORTED})")
    return ImageInput(path=path, format=IMAGE_SUFFIXES[suffix], name=path.name[: -len(suffix)])


def find_inputs(path: str | Path) -> list[ImageInput]:
    """The images behind ``path``.

    - an image file (see ``IMAGE_SUFFIXES``): that image;
    - a folder with DICOM files directly inside: one DICOM series (other files in it are ignored);
    - any other folder: each image file in it, and each sub-folder that holds DICOM files as one series,
      sorted by name (one level deep; hidden entries are skipped).

    Raises:
        InputError: the path does not exist, is an unsupported file, or is a folder with no usable image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_file():
        return [_image_file(path)]
    if not path.is_dir():
        raise InputError(f"input is neither a file nor a folder: {path}")

    series = _dicom_files(path)
    if series:
        return [ImageInput(path=path, format="dicom", name=path.name, dicom_files=series)]
    found = []
    for entry in _visible_entries(path):
        if entry.is_file() and image_suffix(entry) is not None:
            found.append(_image_file(entry))
        elif entry.is_dir():
            sub_series = _dicom_files(entry)
            if sub_series:
                found.append(ImageInput(path=entry, format="dicom", name=entry.name, dicom_files=sub_series))
    if not found:
        raise InputError(f"no usable image in folder {path} (expected {SUPPORTED}, or sub-folders of DICOM series)")
    return found
