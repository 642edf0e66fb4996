"""The whole state of a training run in one file, saved every epoch and picked up again with ``resume``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.handlers import CheckpointLoader

from .checkpoint_saver import AtomicCheckpointSaver

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["TrainingCheckpoint", "parse_flag", "training_progress"]

_FLAGS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def parse_flag(value: Any, name: str = "flag") -> bool:
    """A boolean from ``True``/``False`` or the strings ``monai.bundle run`` passes on (``--resume true``).

    Raises:
        ValueError: for anything else (``"maybe"``, ``2``, ``None``), naming ``name``.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _FLAGS:
        return _FLAGS[value.strip().lower()]
    raise ValueError(f"{name} must be true or false, got {value!r}")


def training_progress(checkpoint_file: str | Path) -> tuple[int, int]:
    """``(epochs completed, epochs planned)`` of the run that wrote ``checkpoint_file`` (a ``TrainingCheckpoint``),
    read without loading its tensors: fewer completed than planned means the run stopped before its end.

    Raises:
        ValueError: the file holds no trainer state (not a ``TrainingCheckpoint`` file).
    """
    state = torch.load(checkpoint_file, map_location="cpu", weights_only=True, mmap=True).get("trainer")
    if not isinstance(state, dict) or "epoch_length" not in state or "max_epochs" not in state:
        raise ValueError(f"{checkpoint_file} holds no trainer state: not a training checkpoint")
    epoch = state["epoch"] if "epoch" in state else state["iteration"] // state["epoch_length"]
    return int(epoch), int(state["max_epochs"])


class TrainingCheckpoint:
    """Ignite handler for a trainer: keep everything a run needs to go on in one file, and go on from it.

    Every ``save_interval`` epochs (after the epoch's validation, when it comes earlier in the handler list) the
    file ``checkpoint_file`` is replaced atomically with the state dicts of ``save_dict``'s objects, of the trainer
    (epoch, iteration, max_epochs) and of the trainer's AMP grad scaler when it has one. Everything in it is a
    plain container: ``torch.load(..., weights_only=True)`` reads it. With ``resume`` the file is loaded when the
    trainer starts (MONAI's ``CheckpointLoader``), so training continues after the last saved epoch, with as many
iterations per epoch as the data it is given now (the datalist may have grown since the checkpoint was written).

    Args:
        checkpoint_file: the training checkpoint (e.g. ``models/checkpoint.pt``); its folder is created if missing.
        save_dict: objects with ``state_dict``/``load_state_dict`` (network, optimizer, lr scheduler, the best
            model's saver, the curves); the trainer and its scaler are added when the handler is attached.
        resume: load ``checkpoint_file`` when training starts; ``True``/``False`` or ``"true"``/``"false"``.
        save_interval: save every this many epochs.
        map_location: where loaded tensors go (the training device).

    Raises:
        ValueError: when ``resume`` is not a boolean or ``save_interval`` < 1.
        FileNotFoundError: at ``attach`` when ``resume`` is set and there is no checkpoint to resume from.
    """

    def __init__(
        self,
        checkpoint_file: str | Path,
        save_dict: dict,
        resume: bool | str = False,
        save_interval: int = 1,
        map_location: str | torch.device | None = None,
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1 epoch, got {save_interval}")
        for key in ("trainer", "scaler"):
            if key in save_dict:
                raise ValueError(f"save_dict must not hold '{key}': the handler adds the trainer's own")
        self.checkpoint_file = Path(checkpoint_file)
        self.save_dict = dict(save_dict)
        self.resume = parse_flag(resume, "resume")
        self.save_interval = save_interval
        self.map_location = map_location
        self.logger = logging.getLogger(__name__)

    def objects(self, engine: Engine) -> dict:
        """What the checkpoint holds for ``engine``: ``save_dict``, the trainer, and its scaler if it has one."""
        objects = {**self.save_dict, "trainer": engine}
        scaler = getattr(engine, "scaler", None)
        if scaler is not None:
            objects["scaler"] = scaler
        return objects

    @staticmethod
    def _fit_epoch_length(engine: Engine) -> None:
        # The loaded trainer state keeps the epoch length of the run that saved it; ignite would run epochs of that
        # many iterations over data of another length.
        try:
            length = len(engine.state.dataloader)
        except TypeError:  # data without a length: ignite keeps the epoch length it was given
            return
        if length != engine.state.epoch_length:
            epoch = engine.state.epoch
            engine.state.epoch_length = length
            engine.state.iteration = epoch * length

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        objects = self.objects(engine)
        if self.resume:
            if not self.checkpoint_file.is_file():
                raise FileNotFoundError(
                    f"resume: no training checkpoint at {self.checkpoint_file} (a training run with the same "
                    "ckpt_dir writes it after each epoch); start without resume to train from scratch"
                )
            CheckpointLoader(str(self.checkpoint_file), objects, map_location=self.map_location).attach(engine)
            engine.add_event_handler(Events.STARTED, self._fit_epoch_length)
        AtomicCheckpointSaver(
            str(self.checkpoint_file.parent), objects, save_interval=self.save_interval, n_saved=1,
            interval_filename=self.checkpoint_file.name,
        ).attach(engine)
