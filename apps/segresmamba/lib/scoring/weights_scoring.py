"""Scores that belong to a model's current weights."""

from __future__ import annotations

import logging
from typing import Any

import torch
from monailabel.interfaces.tasks.scoring import ScoringMethod

from lib.infers import BundleSegmentation

logger = logging.getLogger(__name__)


class WeightsScoring(ScoringMethod):
    """A scoring method of ``infer``'s model, storing one record per image and model under ``key`` in the image's
    info, with the weights' timestamp: an image is scored again only after a training run has replaced the
    weights; a model without weights scores nothing. A call returns ``{image id: record[headline]}``.

    Subclasses choose the images (``images``) and compute a record (``score_image``; None skips the image).
    """

    key: str
    headline: str

    def __init__(self, infer: BundleSegmentation, description: str):
        super().__init__(description)
        self.infer = infer

    @classmethod
    def method_name(cls, model: str) -> str:
        """The name the method of ``model`` is served under (``/scoring/<name>``): ``<key>_<model>``."""
        return f"{cls.key}_{model}"

    @property
    def model(self) -> str:
        return self.infer.bundle.name

    @property
    def name(self) -> str:
        """``method_name`` of this method's model."""
        return self.method_name(self.model)

    def images(self, datastore) -> list[str]:
        raise NotImplementedError

    def score_image(self, datastore, image_id: str, device: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def __call__(self, request, datastore):
        weights = self.infer.bundle.weights
        if not weights.is_file():
            logger.info(f"{self.model} has no weights yet: nothing to score")
            return {}
        weights_ts = weights.stat().st_mtime
        device = request.get("device", "cuda" if torch.cuda.is_available() else "cpu")
        results = {}
        for image_id in self.images(datastore):
            stored = datastore.get_image_info(image_id).get(self.key, {})
            if stored.get(self.model, {}).get("weights_ts") == weights_ts:
                continue
            record = self.score_image(datastore, image_id, device)
            if record is None:
                continue
            datastore.update_image_info(image_id, {self.key: {**stored, self.model: {**record, "weights_ts": weights_ts}}})
            results[image_id] = record[self.headline]
            logger.info(f"{self.model} on {image_id}: {self.key} {record}")
        return results
