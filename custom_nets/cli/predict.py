"""``segresmamba predict``: segment images with a bundle, one mask per image."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

from ..io import ChannelFilesCase, InputError, find_channel_cases, find_inputs, read_case_header, read_header
from ..io import write_dicom_seg, write_nifti_mask
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


def _switch(name: str, value) -> bool:
    """A command line switch (``--tta``) as a bool: ``fire`` gives True for the bare switch, a value otherwise."""
    from ..bundle.options import Flag, ValueRejected

    try:
        return Flag().parse(name, value)
    except ValueRejected:
        raise InputError(f"--{name} is a switch: give it without a value (or --no{name}), not {value!r}") from None


def _inputs(input: str, bundle) -> tuple[list, list]:
    """The images behind ``input`` and their headers: cases of one file per input channel (``find_channel_cases``,
    e.g. BraTS case folders) when the bundle names several channels and ``input`` holds such cases, else
    ``find_inputs``."""
    cases = find_channel_cases(input, bundle.input_channel_names)
    if cases:
        return cases, [read_case_header(case) for case in cases]
    images = find_inputs(input)
    return images, [read_header(image) for image in images]


def _channel_files(image) -> list:
    """``(file, header)`` for each channel file of a case of one file per channel (their own sizes and voxels are
    what is checked), none for an ordinary image."""
    if not isinstance(image, ChannelFilesCase):
        return []
    return [(part, read_header(part)) for part in image.channel_inputs()]


@contextmanager
def _quiet(verbose: bool):
    """Keep MONAI's and torch's warnings and MONAI's log lines off the terminal, unless ``verbose``."""
    if verbose:
        yield
        return
    logger = logging.getLogger("monai")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def predict(
    bundle: str,
    input: str,
    output: str,
    device: str = "auto",
    output_format: str = "nifti",
    progress: bool = True,
    weights: str | None = None,
    save_probabilities: bool = False,
    tta: bool = False,
    statistics: bool = False,
    preview: bool = False,
    brats_regions: bool = False,
    verbose: bool = False,
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
            folders; for a bundle of several named input channels also a case folder ``<case>/`` with one file
            ``<case>_<channel>.nii.gz`` per channel (BraTS 2021: ``_flair``, ``_t1``, ``_t1ce``, ``_t2``), or a folder
            of case folders.
        output: the folder for the masks, ``<image name>_seg.nii.gz`` (or ``.dcm``); created when needed, existing
            masks of the same name are replaced.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        output_format: ``"nifti"`` (the mask on the input image's grid) or ``"dicom_seg"`` (a DICOM SEG referencing
            the source series; DICOM inputs only).
        progress: show a progress bar (on stderr): over the images, or over the sliding windows of a single image.
        weights: a weights file to use instead of the bundle's ``models/model.pt``: a state dict of the bundle's
            network (e.g. a demo's or the label app's training result) or a training checkpoint with one under
            ``"model"``; loaded with ``weights_only=True``.
        save_probabilities: also write ``<image name>_probabilities.nii.gz``, the softmax or sigmoid maps (as the
            bundle's postprocessing applies) on the input grid, float32, one volume per output channel. NIfTI
            only: refused with ``output_format="dicom_seg"`` (a DICOM SEG holds binary segments).
        tta: test-time augmentation: the mean of the probabilities over flips of each spatial axis (4 passes).
        statistics: also write ``<image name>_statistics.json``: voxel count and volume (ml, from the voxel
            spacing) per label of the mask.
        preview: also write ``<image name>_preview.png``: three axial slices through the mask, with the mask over
            the image, in the radiological view (anterior up, the patient's right on the left).
        brats_regions: a BraTS bundle's postprocessing makes the BraTS label map (1 necrotic core, 2 edema,
            4 enhancing tumour, as the label app serves it) from its regions; this writes the three regions TC, WT,
            ET as channels instead (refused for a bundle whose postprocessing makes no such label map).
        verbose: show MONAI's warnings and log messages.
        max_voxels: the largest image accepted, in voxels times channels (default 2^28, a 512 x 512 x 1024 CT).
        overrides: plain settings of the bundle's inference config to replace, e.g. ``--sw_batch_size 8``
            (numbers, true/false, lists of numbers, each of its setting's kind; see ``checked_overrides``).

    Returns:
        the mask files written, in input order.

    Raises:
        InputError: a bad bundle, input, output folder or option; its message is one line naming the problem.
    """
    from ..bundle import InferencePipeline, find_bundle, resolve_device
    from ..bundle.outputs import MaskOutputs

    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"unknown output_format {output_format!r} (use {' or '.join(OUTPUT_FORMATS)})")
    switches = dict(save_probabilities=save_probabilities, tta=tta, statistics=statistics, preview=preview,
                    brats_regions=brats_regions, verbose=verbose)  # fmt: skip
    save_probabilities, tta, statistics, preview, brats_regions, verbose = (_switch(k, v) for k, v in switches.items())
    if weights is not None and not isinstance(weights, (str, Path)):
        raise InputError(f"--weights takes the path of a weights file, not {weights!r}")
    if save_probabilities and output_format == "dicom_seg":
        raise InputError(
            "--save_probabilities writes NIfTI maps and a DICOM SEG holds binary segments: use --output_format nifti"
        )
    chosen = find_bundle(bundle)
    chosen.config_file("inference")
    if weights is None:
        chosen.check_weights()
    extras = [name for name, wanted in (("probabilities", save_probabilities), ("statistics", statistics),
                                        ("preview", preview)) if wanted]  # fmt: skip
    outputs = MaskOutputs(chosen, tuple(extras))
    torch_device = resolve_device(device)
    folder = _output_folder(output)

    images, headers = _inputs(input, chosen)
    for image, header in zip(images, headers):
        check_size(image, header, int(max_voxels))
        for part, part_header in _channel_files(image):
            check_size(part, part_header, int(max_voxels))
        if header.num_channels != chosen.image_channels:
            raise InputError(
                f"{image.path} has {header.num_channels} channel(s); bundle {chosen.name} expects {chosen.image_channels}"
            )
        if output_format == "dicom_seg" and image.format != "dicom":
            raise InputError(f"output_format dicom_seg needs DICOM series inputs; {image.path} is {image.format}")
    targets = [folder / f"{image.name}{MASK_POSTFIX}{OUTPUT_FORMATS[output_format]}" for image in images]
    extra_targets = [outputs.targets(folder, image.name) for image in images]
    every_target = targets + [t for extra in extra_targets for t in extra.values()]
    clashes = sorted({t.name for t in every_target if every_target.count(t) > 1})
    if clashes:
        raise InputError(f"several inputs would write the same mask: {', '.join(clashes)} (rename them)")
    for image, header in zip(images, headers):
        for part, part_header in _channel_files(image) or [(image, header)]:
            check_finite(part, part_header)

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with _quiet(verbose):
        pipeline = InferencePipeline(chosen, torch_device, overrides, weights=weights)
        if tta:
            pipeline.check_probabilities("--tta")
        if save_probabilities:
            pipeline.check_probabilities("--save_probabilities")
        if brats_regions:
            pipeline.check_regions("--brats_regions")
        pipeline.set_window_progress(progress and len(images) == 1)
        written = []
        bar = tqdm(zip(images, headers, targets, extra_targets), total=len(images), unit="image",
                   disable=not progress or len(images) == 1, file=sys.stderr)  # fmt: skip
        with logging_redirect_tqdm(loggers=[logging.getLogger("custom_nets")]):  # warnings between bar updates
            for image, header, target, extra in bar:
                bar.set_description(image.name)
                source = list(image.files) if hasattr(image, "files") else image.path
                prediction = pipeline(source, header.spatial_shape, tta=tta, probabilities=save_probabilities,
                                      regions=brats_regions)  # fmt: skip
                mask = prediction.mask
                if output_format == "dicom_seg":
                    write_dicom_seg(mask, prediction.affine, image, target, outputs.channel_def(mask), chosen.name,
                                    chosen.version)  # fmt: skip
                else:
                    write_nifti_mask(mask, prediction.affine, target)
                outputs.write(prediction, mask, extra, source, image.name)
                written.append(str(target))
    return written
