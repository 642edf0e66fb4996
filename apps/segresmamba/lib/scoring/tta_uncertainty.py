"""Test-time-augmentation uncertainty of a model on the images nobody has labelled yet."""

from __future__ import annotations

import torch
from monai.transforms import Compose

from custom_nets.bundle import FLIPS
from lib.infers import BundleSegmentation
from lib.scoring.weights_scoring import WeightsScoring


def predictive_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Voxel-wise entropy (nats) of class probabilities over dim 1."""
    return -(probabilities * probabilities.clamp_min(1e-8).log()).sum(1)


class TTAUncertainty(WeightsScoring):
    """For each unlabelled image: the model's softmax under flips of every spatial axis, averaged; the score is the
    mean predictive entropy of that average over the voxels that any flip calls foreground (the whole volume if
    none does). High scores mark images where the model is unsure, the ones worth labelling next. Stored in the
    image's info under ``tta_uncertainty`` per model, with the weights' timestamp.

    Args:
        infer: the model's infer task.
        flips: the dimensions of a ``(batch, channel, x, y, z)`` tensor flipped together for each copy.
    """

    key, headline = "tta_uncertainty", "score"

    def __init__(self, infer: BundleSegmentation, flips=FLIPS):
        super().__init__(infer, f"Test-time-augmentation uncertainty of {infer.bundle.name} on unlabelled images")
        self.flips = flips

    @torch.no_grad()
    def score(self, image_path: str, device: str) -> float:
        data = Compose(self.infer.pre_transforms())({"image": image_path})
        image = torch.as_tensor(data["image"])[None]
        mean = 0
        foreground = torch.zeros((), dtype=torch.bool)
        for dims in self.flips:
            flipped = torch.flip(image, dims) if dims else image
            logits = self.infer.run_inferer({"image": flipped}, convert_to_batch=False, device=device)["pred"]
            probabilities = torch.softmax(logits.float(), dim=1)
            probabilities = torch.flip(probabilities, dims) if dims else probabilities
            foreground = foreground | (probabilities.argmax(1) > 0)
            mean = mean + probabilities / len(self.flips)
        entropy = predictive_entropy(mean)
        return float(entropy[foreground].mean() if foreground.any() else entropy.mean())

    def images(self, datastore) -> list[str]:
        return datastore.get_unlabeled_images()

    def score_image(self, datastore, image_id: str, device: str):
        return {"score": self.score(datastore.get_image_uri(image_id), device)}
