"""Scores that belong to a model's current weights."""

from __future__ import annotations

import logging

import torch
from monailabel.interfaces.tasks.scoring import ScoringMethod

from lib.infers import BundleSegmentation

logger = logging.getLogger(__name__)


class WeightsScoring(ScoringMethod):
    """A scoring method of ``infer``'s model. Scores are stored with the weights' timestamp, so an image is scored
    again only after a training run has replaced the weights; a model without weights scores nothing."""

    def __init__(self, infer: BundleSegmentation, description: str):
        super().__init__(description)
        self.infer = infer

    @property
    def model(self) -> str:
        return self.infer.bundle.name

    def weights_timestamp(self) -> float | None:
        weights = self.infer.bundle.weights
        if not weights.is_file():
            logger.info(f"{self.model} has no weights yet: nothing to score")
            return None
        return weights.stat().st_mtime

    @staticmethod
    def device(request) -> str:
        return request.get("device", "cuda" if torch.cuda.is_available() else "cpu")
