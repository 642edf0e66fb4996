"""Dice of a model's prediction against the labels people saved: how well the model does on this datastore."""

from __future__ import annotations

import logging

import torch
from monai.transforms import LoadImage

from lib.infers import BundleSegmentation
from lib.scoring.weights_scoring import WeightsScoring

logger = logging.getLogger(__name__)


def dice_per_label(prediction: torch.Tensor, label: torch.Tensor, labels: dict[str, int]) -> dict[str, float]:
    """Dice of each named label value (NaN where neither mask has the label)."""
    scores = {}
    for name, value in labels.items():
        p, t = prediction == value, label == value
        total = int(p.sum() + t.sum())
        scores[name] = float(2 * (p & t).sum() / total) if total else float("nan")
    return scores


class ModelDice(WeightsScoring):
    """The model's Dice on every image with a final label: per label and their mean, under ``dice`` in the image's
    info (see ``WeightsScoring``)."""

    key, headline = "dice", "mean"

    def __init__(self, infer: BundleSegmentation, label_tag: str = "final"):
        super().__init__(infer, f"Dice of {infer.bundle.name} against the saved '{label_tag}' labels")
        self.label_tag = label_tag
        self.load_label = LoadImage(image_only=True)

    def images(self, datastore) -> list[str]:
        return datastore.get_labeled_images(self.label_tag)

    def score_image(self, datastore, image_id: str, device: str):
        _, data = self.infer({"image": datastore.get_image_uri(image_id), "device": device, "skip_writer": True})
        prediction = torch.as_tensor(data["pred"]).squeeze(0)
        label = torch.as_tensor(self.load_label(datastore.get_label_uri(image_id, self.label_tag))).squeeze()
        if prediction.shape != label.shape:
            logger.warning(f"{image_id}: prediction {tuple(prediction.shape)} vs label {tuple(label.shape)}")
            return None
        organs = {name: value for name, value in self.infer.labels.items() if name != "background"}  # DeepEdit lists it
        per_label = dice_per_label(prediction.round().long(), label.round().long(), organs)
        present = [v for v in per_label.values() if v == v]
        return {"mean": sum(present) / len(present) if present else float("nan"), "per_label": per_label}
