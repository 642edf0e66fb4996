"""``segresmamba predict``: segment images with a bundle, one mask per image."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from ..io import InputError, find_inputs, read_header, write_dicom_seg, write_nifti_mask
from ..io.header import MAX_VOXELS, check_size
from ..io.voxels import check_finite

__all__ = ["OUTPUT_FORMATS", "predict"]

# output format -> suffix of the mask files
OUTPUT_FORMATS = {"nifti": ".nii.gz", "dicom_seg": ".dcm"}
MASK_POSTFIX = "_seg"


def _output_folder(output: str | Path) -> Path:
    """The output folder, checked writable before any work (a missing one: its nearest existing parent)."""
    folder = Path(output).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output must be a folder: {folder} is a file")
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"output folder {folder} cannot be created: {existing} is a file")
    try:  # os.access does not see read-only file systems, and root passes it anyway
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise InputError(f"output folder {folder} is not writable: {existing}: {reason}") from None
    return folder


def predict(
    bundle: str,
    input: str,
    output: str,
    device: str = "auto",
    output_format: str = "nifti",
    progress: bool = True,
    max_voxels: int = MAX_VOXELS,
    **overrides,
) -> list[str]:
    """Segment images with a bundle's inference config and trained weights, one mask per image.

    Every input is checked before any work: from its header (readable, 3D, the bundle's channel count, at most
    ``max_voxels``, no more voxel data than its file can hold), then its voxels (no NaN or infinite value). Each mask
    is written to a temporary file and renamed into place: an image that fails later (damaged data) stops the run
    with no file of its own, and the masks finished before it stay whole.

    Args:
        bundle: a bundle name (looked up in the project's bundles folder, ``$SEGRESMAMBA_BUNDLES`` or the shipped one,
            ``./bundles`` and MONAI's bundle folder) or
            the path of a bundle folder.
        input: an image file (NIfTI, NRRD, MetaImage), a DICOM series folder, or a folder of such images and series
            folders.
        output: the folder for the masks, ``<image name>_seg.nii.gz`` (or ``.dcm``); created when needed, existing
            masks of the same name are replaced.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        output_format: ``"nifti"`` (the mask on the input image's grid) or ``"dicom_seg"`` (a DICOM SEG referencing
            the source series; DICOM inputs only).
        progress: show a progress bar (on stderr).
        max_voxels: the largest image accepted, in voxels times channels (default 2^28, a 512 x 512 x 1024 CT).
        overrides: plain settings of the bundle's inference config to replace, e.g. ``--sw_batch_size 8``
            (numbers, true/false, lists of numbers, each of its setting's kind; see ``checked_overrides``).

    Returns:
        the mask files written, in input order.

    Raises:
        InputError: a bad bundle, input, output folder or option; its message is one line naming the problem.
    """
    from ..bundle import InferencePipeline, find_bundle, resolve_device

    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"unknown output_format {output_format!r} (use {' or '.join(OUTPUT_FORMATS)})")
    chosen = find_bundle(bundle)
    chosen.config_file("inference")
    chosen.check_weights()
    torch_device = resolve_device(device)
    folder = _output_folder(output)

    images = find_inputs(input)
    headers = [read_header(image) for image in images]
    for image, header in zip(images, headers):
        check_size(image, header, int(max_voxels))
        if header.num_channels != chosen.input_channels:
            raise InputError(
                f"{image.path} has {header.num_channels} channel(s); bundle {chosen.name} expects {chosen.input_channels}"
            )
        if output_format == "dicom_seg" and image.format != "dicom":
            raise InputError(f"output_format dicom_seg needs DICOM series inputs; {image.path} is {image.format}")
    targets = [folder / f"{image.name}{MASK_POSTFIX}{OUTPUT_FORMATS[output_format]}" for image in images]
    clashes = sorted({t.name for t in targets if targets.count(t) > 1})
    if clashes:
        raise InputError(f"several inputs would write the same mask: {', '.join(clashes)} (rename them)")
    for image, header in zip(images, headers):
        check_finite(image, header)

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    pipeline = InferencePipeline(chosen, torch_device, overrides)
    written = []
    bar = tqdm(zip(images, headers, targets), total=len(images), unit="image", disable=not progress, file=sys.stderr)
    with logging_redirect_tqdm(loggers=[logging.getLogger("custom_nets")]):  # warnings between bar updates
        for image, header, target in bar:
            bar.set_description(image.name)
            mask, affine = pipeline(image.path, header.spatial_shape)
            if output_format == "dicom_seg":
                write_dicom_seg(mask, affine, image, target, chosen.channel_def, chosen.name, chosen.version)
            else:
                write_nifti_mask(mask, affine, target)
            written.append(str(target))
    return written
