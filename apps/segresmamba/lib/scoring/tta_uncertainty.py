"""Test-time-augmentation uncertainty of a model on the images nobody has labelled yet."""

from __future__ import annotations

import torch
from monai.transforms import Compose

from custom_nets.bundle import FLIPS, flip_averaged, probability_activation
from lib.infers import BundleSegmentation
from lib.scoring.weights_scoring import WeightsScoring


def predictive_entropy(probabilities: torch.Tensor, kind: str) -> torch.Tensor:
    """Voxel-wise entropy (nats) of ``(B, C, X, Y, Z)`` probabilities: of the class distribution over dim 1 for
    ``"softmax"``, the sum of each channel's yes/no entropy for ``"sigmoid"`` (overlapping regions, as BraTS's)."""
    p = probabilities.clamp(1e-8, 1 - 1e-8)
    if kind == "softmax":
        return -(p * p.log()).sum(1)
    return -(p * p.log() + (1 - p) * (1 - p).log()).sum(1)


def foreground(probabilities: torch.Tensor, kind: str) -> torch.Tensor:
    """Voxels the probabilities call foreground: a class other than channel 0 wins (softmax), any channel > 0.5."""
    return probabilities.argmax(1) > 0 if kind == "softmax" else (probabilities > 0.5).any(1)


class TTAUncertainty(WeightsScoring):
    """For each unlabelled image: the model's probabilities (its bundle's own softmax or sigmoid) under flips of every
    spatial axis, averaged; the score is the mean predictive entropy of that average over the voxels that any flip
    calls foreground (the whole volume if none does). High scores mark images where the model is unsure, the ones
    worth labelling next. Stored in the image's info under ``tta_uncertainty`` per model, with the weights'
    timestamp.

    Args:
        infer: the model's infer task.
        flips: the dimensions of a ``(batch, channel, x, y, z)`` tensor flipped together for each copy.

    Raises:
        ValueError: the bundle's postprocessing does not start with a softmax or sigmoid (no probabilities to score).
    """

    key, headline = "tta_uncertainty", "score"

    def __init__(self, infer: BundleSegmentation, flips=FLIPS):
        super().__init__(infer, f"Test-time-augmentation uncertainty of {infer.bundle.name} on unlabelled images")
        self.flips = flips
        output = infer.bundle.output_key
        self.kind, activation = probability_activation(infer.post_transforms(), output)
        if activation is None:
            raise ValueError(f"bundle {infer.bundle.name}: its postprocessing starts with no softmax or sigmoid")
        self.activation = lambda logits: activation({output: logits[0]})[output][None]

    @torch.no_grad()
    def score(self, image_path: str, device: str) -> float:
        data = Compose(self.infer.pre_transforms())({"image": image_path})
        image = torch.as_tensor(data["image"])[None]

        def logits_of(batch: torch.Tensor) -> torch.Tensor:
            return self.infer.run_inferer({"image": batch}, convert_to_batch=False, device=device)["pred"]

        mean, seen = 0, torch.zeros((), dtype=torch.bool)
        for dims in self.flips:  # one flip at a time: the union of what each calls foreground is kept too
            probabilities = flip_averaged(logits_of, image, self.activation, (dims,))
            seen = seen | foreground(probabilities, self.kind)
            mean = mean + probabilities / len(self.flips)
        entropy = predictive_entropy(mean, self.kind)
        return float(entropy[seen].mean() if seen.any() else entropy.mean())

    def images(self, datastore) -> list[str]:
        return datastore.get_unlabeled_images()

    def score_image(self, datastore, image_id: str, device: str):
        return {"score": self.score(datastore.get_image_uri(image_id), device)}
