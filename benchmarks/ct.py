"""The real-sized CT volume for the inference benchmark, preprocessed as MONAI's spleen bundle does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["DEFAULT_CT", "load_ct"]

# The shipped abdominal CT (3 mm isotropic, 122 x 101 x 112, HU), in the repository's data/.
DEFAULT_CT = Path(__file__).resolve().parents[1] / "data" / "totalseg_ct_abdomen" / "example_ct.nii.gz"


def load_ct(
    path: str | Path = DEFAULT_CT,
    pixdim: Sequence[float] = (1.5, 1.5, 2.0),
    hu_window: tuple[float, float] = (-57.0, 164.0),
    crop: int | None = None,
) -> torch.Tensor:
    """Load a CT and preprocess it like ``spleen_ct_segmentation``: RAS, resample to ``pixdim`` mm (bilinear),
    HU window scaled to 0..1 (clipped).

    Args:
        path: NIfTI (or any format MONAI's ``LoadImage`` reads) in Hounsfield units.
        pixdim: output spacing in mm (the Model Zoo bundle: 1.5, 1.5, 2.0).
        hu_window: HU mapped to 0 and 1.
        crop: keep at most ``crop`` voxels per axis around the centre (a smaller volume for slow CPUs).

    Returns:
        ``(1, 1, D, H, W)`` float32.
    """
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation, ScaleIntensityRange, Spacing

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CT volume not found: {path}")
    transform = Compose(
        [
            LoadImage(image_only=True),
            EnsureChannelFirst(),
            Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacing(pixdim=tuple(pixdim), mode="bilinear"),
            ScaleIntensityRange(a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=True),
        ]
    )
    try:
        image = transform(str(path))
    except Exception as error:
        raise ValueError(f"cannot read CT volume {path}: {type(error).__name__}: {error}".splitlines()[0]) from error
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected a single-channel 3D CT in {path}, got shape {tuple(image.shape)}")
    volume = torch.as_tensor(image).float()
    if crop is not None:
        starts = [max(0, (n - crop) // 2) for n in volume.shape[1:]]
        volume = volume[(slice(None), *(slice(s, s + crop) for s in starts))]
    return volume.unsqueeze(0).contiguous()
