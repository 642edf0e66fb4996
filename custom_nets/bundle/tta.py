"""Flip test-time augmentation: the mean of a network's probabilities over mirrored copies of its input."""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["FLIPS", "flip_averaged"]

# no flip, then each spatial axis of a (batch, channel, x, y, z) tensor
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,))


def flip_averaged(
    logits_of: Callable, batch, activation: Callable, flips: Sequence[tuple[int, ...]] = FLIPS
):
    """The mean over ``flips`` of ``activation(unflip(logits_of(flip(batch))))``.

    Args:
        logits_of: the network (or an inferer around it): ``(B, C_in, *spatial)`` -> ``(B, C_out, *spatial)``.
        batch: the network input.
        activation: logits -> probabilities (softmax over channels, or sigmoid), applied to each flip before the
            mean: probabilities average, logits would not.
        flips: the dimensions flipped together for each copy; ``()`` is the input as it is.

    Shapes:
        batch: ``(B, C_in, X, Y, Z)``; returns ``(B, C_out, X, Y, Z)``.
    """
    import torch

    if not flips:
        raise ValueError("flips must hold at least one entry")
    total = None
    for dims in flips:
        flipped = torch.flip(batch, dims) if dims else batch
        probabilities = activation(logits_of(flipped).float())
        probabilities = torch.flip(probabilities, dims) if dims else probabilities
        total = probabilities if total is None else total + probabilities
    return total / len(flips)
