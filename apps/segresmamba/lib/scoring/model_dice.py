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
    """Runs the model on every image with a final label and stores, in the image's info under ``dice``, the Dice per
    label and their mean for that model, with the weights' timestamp: an image is scored again only when the
    weights change. Returns ``{image id: mean Dice}`` of this call.
    """

    def __init__(self, infer: BundleSegmentation, label_tag: str = "final"):
        super().__init__(infer, f"Dice of {infer.bundle.name} against the saved '{label_tag}' labels")
        self.label_tag = label_tag
        self.load_label = LoadImage(image_only=True)

    def __call__(self, request, datastore):
        model, weights_ts, device = self.model, self.weights_timestamp(), self.device(request)
        if weights_ts is None:
            return {}
        results = {}
        for image_id in datastore.get_labeled_images(self.label_tag):
            previous = datastore.get_image_info(image_id).get("dice", {}).get(model, {})
            if previous.get("weights_ts") == weights_ts:
                continue
            _, data = self.infer({"image": datastore.get_image_uri(image_id), "device": device, "skip_writer": True})
            prediction = torch.as_tensor(data["pred"]).squeeze(0)
            label = torch.as_tensor(self.load_label(datastore.get_label_uri(image_id, self.label_tag))).squeeze()
            if prediction.shape != label.shape:
                logger.warning(f"{image_id}: prediction {tuple(prediction.shape)} vs label {tuple(label.shape)}")
                continue
            per_label = dice_per_label(prediction.round().long(), label.round().long(), self.infer.labels)
            present = [v for v in per_label.values() if v == v]
            mean = sum(present) / len(present) if present else float("nan")
            scores = {**datastore.get_image_info(image_id).get("dice", {}),
                      model: {"mean": mean, "per_label": per_label, "weights_ts": weights_ts}}
            datastore.update_image_info(image_id, {"dice": scores})
            results[image_id] = mean
            logger.info(f"{model} on {image_id}: Dice {mean:.4f} {per_label}")
        return results
