"""Automatic segmentation with a bundle's ``inference.json``, as MONAI Label's infer task."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from fastapi import HTTPException
from monai.inferers import Inferer
from monai.transforms import LoadImaged, SaveImaged, SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.pre import LoadImageTensord

from custom_nets.bundle import Bundle


class BundleSegmentation(BasicInferTask):
    """The bundle's own preprocessing, sliding-window inferer and postprocessing; MONAI Label writes the mask.

    The bundle's postprocessing inverts its preprocessing (``Invertd``), so the mask comes back on the grid of the
    image as stored (orientation, spacing and extent), as the label map with the values of ``Bundle.labels`` (a
    BraTS bundle's postprocessing makes it from the regions it predicts, with the values its training converts
    back to regions, so corrected labels train it). Its ``SaveImaged`` is left out: MONAI Label's writer saves in
    the format the client asks for.

    Weights are read from the bundle's ``models/model.pt`` (a plain state dict under ``"model"``, as the bundle's
    training saves it); they are reloaded when that file changes, so the next inference after a training run uses
    the new weights. A bundle without weights is listed but answers inference with HTTP 409.
    """

    def __init__(self, bundle: Bundle, type: str = InferType.SEGMENTATION, labels: dict | None = None, **kwargs: Any):
        self.bundle = bundle
        self.parser = bundle.parser("inference")
        super().__init__(
            path=str(bundle.weights),
            network=self.parser.get_parsed_content("network_def"),
            type=type,
            labels=labels or bundle.labels,
            dimension=3,
            description=bundle.metadata["description"],
            model_state_dict="model",
            input_key="image",
            output_label_key="pred",
            load_strict=True,
            **kwargs,
        )

    def info(self) -> dict[str, Any]:
        return {**super().info(), "version": self.bundle.metadata["version"], "trained": self.bundle.weights.is_file()}

    def is_valid(self) -> bool:
        return True

    def pre_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        # The same instances as the ones postprocessing's Invertd refers to: the parser caches parsed content.
        transforms = self.parser.get_parsed_content("preprocessing").transforms
        # LoadImageTensord also accepts an image already in memory (an uploaded file MONAI Label has read).
        return [LoadImageTensord(keys=t.keys, load_image_d=t) if isinstance(t, LoadImaged) else t for t in transforms]

    def run_pre_transforms(self, data: dict, transforms: Sequence[Callable]) -> dict:
        # MONAI 1.6's Spacingd updates every "image_*" entry of the data as a metadata dict, and MONAI Label keeps the
        # input's path there as the string "image_path" (its writer reads it): keep it aside while they run.
        path = data.pop("image_path", None)
        try:
            data = super().run_pre_transforms(data, transforms)
        except Exception as error:  # a file whose header reads but whose voxels do not (truncated, corrupt)
            while error.__cause__ is not None:  # MONAI wraps the failing transform's error
                error = error.__cause__
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            raise HTTPException(status_code=422, detail=f"the image cannot be loaded: {reason}") from None
        if path is not None:
            data["image_path"] = path
        return data

    def inferer(self, data: dict | None = None) -> Inferer:
        return self.parser.get_parsed_content("inferer")

    def post_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        transforms = [t for t in self.parser.get_parsed_content("postprocessing").transforms if not isinstance(t, SaveImaged)]
        # MONAI Label's writer takes one (x, y, z) label map.
        return [*transforms, SqueezeDimd("pred", dim=0)]

    def run_inferer(self, data: dict, convert_to_batch: bool = True, device: str = "cuda") -> dict:
        """The network's output under ``"pred"``; HTTP 409 while the bundle has no weights."""
        if not self.bundle.weights.is_file():
            raise HTTPException(
                status_code=409,
                detail=f"model '{self.bundle.name}' has no trained weights yet ({self.bundle.weights} is missing): "
                f"save labels and train it first (3D Slicer: Train; REST: POST /train/{self.bundle.name})",
            )
        return super().run_inferer(data, convert_to_batch=convert_to_batch, device=device)
