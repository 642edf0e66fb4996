"""Click-guided segmentation with a DeepEdit bundle, as MONAI Label's DeepEdit infer task (3D Slicer's point tools)."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferType

from custom_nets.bundle import Bundle
from custom_nets.interactive import ClickError, parse_clicks
from custom_nets.io import InputError, find_inputs, read_header
from lib.infers.bundle_segmentation import BundleSegmentation


class DeepEditSegmentation(BundleSegmentation):
    """A click-guided bundle's ``inference.json`` (``BundleSegmentation``), served with MONAI Label's DeepEdit type:
    3D Slicer then shows its label list, background included, and its point tool, and sends each label's clicks
    under the label's name as voxel indices of the image as stored. The bundle's preprocessing draws them as
    guidance channels (``custom_nets.interactive.ClicksToGuidanced``, then MONAI's ``AddGuidanceSignalDeepEditd``);
    without clicks the model segments automatically.

    The request's clicks have been parsed where the request came in (``lib.clicks.take_clicks``); here they are
    checked against the image's size from its header before anything else runs: a click outside the image is
    HTTP 422 naming it.

    Args:
        bundle: a bundle whose metadata has ``click_guidance`` (``Bundle.click_labels``).
    """

    def __init__(self, bundle: Bundle, **kwargs: Any):
        if not bundle.click_labels:
            raise ValueError(f"bundle {bundle.name} takes no clicks (its metadata has no click_guidance)")
        self.click_labels = bundle.click_labels
        super().__init__(bundle, type=InferType.DEEPEDIT, labels=dict(self.click_labels), **kwargs)

    def __call__(self, request: dict[str, Any], *args, **kwargs):
        clicks = {label: request[label] for label in self.click_labels if label in request}
        if any(clicks.values()):
            try:
                shape = read_header(find_inputs(request["image"])[0]).spatial_shape
            except InputError as error:
                raise HTTPException(status_code=422, detail=f"the image cannot be read: {error}") from None
            try:
                parse_clicks(clicks, self.click_labels, shape)
            except ClickError as error:
                raise HTTPException(status_code=422, detail=str(error)) from None
        return super().__call__(request, *args, **kwargs)
