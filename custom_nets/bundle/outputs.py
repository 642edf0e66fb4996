"""What ``segresmamba predict`` writes beside each mask: probabilities, per-label statistics and a PNG preview,
named after the image and described by the bundle (the label names of its masks, or of its region channels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import mask_statistics, overlay_slices, to_ras, write_nifti_probabilities, write_png, write_statistics
from .bundle import Bundle
from .inference import Prediction

__all__ = ["EXTRA_OUTPUTS", "MaskOutputs"]

# output -> what its file name adds to the image's name
EXTRA_OUTPUTS = {"probabilities": "_probabilities.nii.gz", "statistics": "_statistics.json", "preview": "_preview.png"}


class MaskOutputs:
    """How a bundle's prediction becomes the files beside its mask.

    Args:
        bundle: the bundle that predicts.
        extras: the outputs to write beside each mask, among ``EXTRA_OUTPUTS``.
    """

    def __init__(self, bundle: Bundle, extras: tuple[str, ...] = ()) -> None:
        unknown = set(extras) - set(EXTRA_OUTPUTS)
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)} (use {', '.join(EXTRA_OUTPUTS)})")
        self.bundle, self.extras = bundle, tuple(extras)

    def targets(self, folder: Path, name: str) -> dict[str, Path]:
        """The extra files of the image ``name`` in ``folder``, by output."""
        return {extra: folder / f"{name}{EXTRA_OUTPUTS[extra]}" for extra in self.extras}

    def label_names(self, mask: np.ndarray) -> dict[str, int]:
        """Name -> label value (a label map: ``Bundle.labels``) or channel (one mask per channel of the network),
        background left out."""
        if mask.shape[0] > 1:
            return {name: index for index, name in self.bundle.output_channels.items()}
        return self.bundle.labels

    def channel_def(self, mask: np.ndarray) -> dict[str, str]:
        """Class names by label value (a label map) or by channel, as a DICOM SEG names its segments."""
        return {str(index): name for name, index in self.label_names(mask).items()}

    def write(self, prediction: Prediction, mask: np.ndarray, targets: dict[str, Path], source, image_name: str):
        """Write the extra files of one image.

        Args:
            prediction: the pipeline's result (its probabilities when ``"probabilities"`` is written).
            mask: the mask as written.
            targets: ``targets(...)`` of this image.
            source: the image (a file or DICOM series folder), or its channels' files: the preview shows the
                first channel.
            image_name: the image's name, recorded in the statistics.
        """
        if "probabilities" in targets:
            write_nifti_probabilities(prediction.probabilities, prediction.affine, targets["probabilities"])
        if "statistics" in targets:
            statistics = mask_statistics(mask, prediction.affine, self.label_names(mask))
            write_statistics({"image": image_name, **statistics}, targets["statistics"])
        if "preview" in targets:
            image, labels = (to_ras(a, prediction.affine) for a in (_first_channel(source), _label_map(mask)))
            write_png(overlay_slices(image, labels), targets["preview"])


def _first_channel(source) -> np.ndarray:
    """The image's first channel on the grid it is stored in, as the bundle's loader reads it (the mask's grid)."""
    from monai.transforms import LoadImage

    first = source[0] if isinstance(source, (list, tuple)) else source
    image = LoadImage(image_only=True, ensure_channel_first=True)(str(first))
    return np.asarray(image[0].detach().cpu().numpy() if hasattr(image, "detach") else image[0])


def _label_map(mask: np.ndarray) -> np.ndarray:
    """A label map of ``mask``: itself, or channel k as label k + 1 (later channels drawn over earlier ones)."""
    if mask.shape[0] == 1:
        return mask[0]
    labels = np.zeros(mask.shape[1:], np.int64)
    for k in range(mask.shape[0]):
        labels[mask[k] > 0] = k + 1
    return labels
