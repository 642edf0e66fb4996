"""Training/validation splits of a sorted case list, reproducible from the case list alone."""

from __future__ import annotations

import random
from collections.abc import Sequence

from .layouts import DatasetLayoutError

__all__ = ["holdout_split", "kfold_split"]


def holdout_split(cases: Sequence[dict], num_val_cases: int) -> tuple[list[dict], list[dict]]:
    """The last ``num_val_cases`` cases (in the given order) validate, the others train.

    ``num_val_cases=0`` trains on every case and validates on the same cases (a paper split with no validation
    set: model selection then scores training cases).
    """
    if num_val_cases < 0:
        raise DatasetLayoutError(f"num_val_cases must be >= 0, got {num_val_cases}")
    if num_val_cases == 0:
        return list(cases), list(cases)
    if len(cases) <= num_val_cases:
        raise DatasetLayoutError(
            f"{len(cases)} labelled case(s) found, but num_val_cases={num_val_cases} leaves none to train on"
        )
    return list(cases[:-num_val_cases]), list(cases[-num_val_cases:])


def kfold_split(cases: Sequence[dict], fold: int, num_folds: int = 5, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Fold ``fold`` of ``num_folds`` validates, the other folds train.

    Cases are shuffled once with ``seed`` and dealt to the folds in turn, so the folds partition the cases and
    differ in size by at most one.
    """
    if num_folds < 2:
        raise DatasetLayoutError(f"num_folds must be >= 2, got {num_folds}")
    if not 0 <= fold < num_folds:
        raise DatasetLayoutError(f"fold must be in [0, {num_folds - 1}], got {fold}")
    if len(cases) < num_folds:
        raise DatasetLayoutError(f"{len(cases)} labelled case(s) found, fewer than num_folds={num_folds}")
    order = list(range(len(cases)))
    random.Random(seed).shuffle(order)
    in_fold = {index for position, index in enumerate(order) if position % num_folds == fold}
    train = [case for index, case in enumerate(cases) if index not in in_fold]
    val = [case for index, case in enumerate(cases) if index in in_fold]
    return train, val
