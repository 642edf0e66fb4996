"""The loss and validation curves of a training run, as a CSV and a PNG beside the energy report."""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io.atomic import atomic_output

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["TrainingCurves"]


def _loss_of(output: Any) -> float:
    """The loss of a MONAI trainer's output: a dict with ``"loss"``, or a list of them (several samples)."""
    if isinstance(output, (list, tuple)):
        output = output[0]
    return float(output["loss"])


class TrainingCurves:
    """Ignite handler for a trainer: mean training loss and validation metric per epoch, written when training
    completes as ``curves.csv`` (always) and ``curves.png`` (when matplotlib is installed; a log line says so
    when it is not).

    The loss is averaged over each epoch's iterations; the metric is read from the validator after each of its
    runs (MONAI's ``ValidationHandler`` runs it). ``state_dict``/``load_state_dict`` keep the history, so a
    resumed run (``TrainingCheckpoint`` with this handler in its ``save_dict``) draws all its epochs.

    Args:
        output_dir: folder of the files (created if missing).
        validator: the evaluator that validates during training; None draws the loss only.
        metric_name: the validator's metric to draw; None takes its key metric.
        output_transform: the loss (a float) from ``engine.state.output``.
        filename: the PNG's name; the CSV takes the same stem.
    """

    def __init__(
        self,
        output_dir: str | Path,
        validator: Engine | None = None,
        metric_name: str | None = None,
        output_transform: Callable[[Any], float] = _loss_of,
        filename: str = "curves.png",
    ) -> None:
        if not filename.endswith(".png"):
            raise ValueError(f"filename must end with .png, got {filename!r}")
        self.output_dir = Path(output_dir)
        self.validator = validator
        self.metric_name = metric_name
        self.output_transform = output_transform
        self.filename = filename
        self.logger = logging.getLogger(__name__)
        self._trainer: Engine | None = None
        self.loss_sums: dict[int, list[float]] = {}  # epoch -> [sum of losses, iterations]
        self.metrics: dict[int, float] = {}  # epoch -> validation metric

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        self._trainer = engine
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)
        if self.validator is not None:
            self.validator.add_event_handler(Events.EPOCH_COMPLETED, self.validation_completed)

    def iteration_completed(self, engine: Engine) -> None:
        total = self.loss_sums.setdefault(int(engine.state.epoch), [0.0, 0])
        total[0] += self.output_transform(engine.state.output)
        total[1] += 1

    def _metric_name(self, validator: Engine) -> str | None:
        return self.metric_name or getattr(validator.state, "key_metric_name", None)

    def validation_completed(self, validator: Engine) -> None:
        name = self._metric_name(validator)
        if name is None or name not in validator.state.metrics:
            raise KeyError(f"TrainingCurves: the validator has no metric {name!r} (has {list(validator.state.metrics)})")
        self.metrics[int(self._trainer.state.epoch)] = float(validator.state.metrics[name])

    def rows(self) -> list[tuple[int, float, float]]:
        """``(epoch, mean loss, metric)`` for every epoch seen, NaN where an epoch had no validation."""
        epochs = sorted(set(self.loss_sums) | set(self.metrics))
        return [
            (epoch,
             self.loss_sums[epoch][0] / self.loss_sums[epoch][1] if epoch in self.loss_sums else math.nan,
             self.metrics.get(epoch, math.nan))
            for epoch in epochs
        ]

    def state_dict(self) -> dict:
        return {"loss_sums": {k: list(v) for k, v in self.loss_sums.items()}, "metrics": dict(self.metrics)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.loss_sums = {int(k): [float(v[0]), int(v[1])] for k, v in state_dict["loss_sums"].items()}
        self.metrics = {int(k): float(v) for k, v in state_dict["metrics"].items()}

    def completed(self, engine: Engine) -> None:
        rows = self.rows()
        metric = (self._metric_name(self.validator) if self.validator is not None else None) or "val_metric"
        csv_path = self.output_dir / (self.filename[: -len(".png")] + ".csv")
        with atomic_output(csv_path) as temporary, open(temporary, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["epoch", "loss", metric])
            writer.writerows(rows)
        try:
            import matplotlib
        except ImportError:
            self.logger.warning(f"matplotlib is not installed: no {self.filename}; the curves are in {csv_path}")
            return
        matplotlib.use("Agg")
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        epochs = [row[0] for row in rows]
        figure = Figure(figsize=(6, 4))
        loss_axis = figure.subplots()
        loss_axis.plot(epochs, [row[1] for row in rows], color="tab:blue", marker=".", label="training loss")
        loss_axis.set_xlabel("epoch")
        loss_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        loss_axis.set_ylabel("training loss", color="tab:blue")
        validated = [(epoch, value) for epoch, _, value in rows if not math.isnan(value)]
        if validated:
            metric_axis = loss_axis.twinx()
            metric_axis.plot(*zip(*validated), color="tab:orange", marker="o", label=metric)
            metric_axis.set_ylabel(metric, color="tab:orange")
            metric_axis.set_ylim(0, 1)
        figure.tight_layout()
        png = self.output_dir / self.filename
        with atomic_output(png, suffix=".png") as temporary:
            figure.savefig(temporary, dpi=80)
        self.logger.info(f"training curves: {png}")
