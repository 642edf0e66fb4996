"""A checkpoint saver that never leaves a partial checkpoint, nor none, behind a crash or a kill.

MONAI's ``CheckpointSaver`` (1.6.1) hands ignite a saver that deletes the previous best checkpoint before it
writes the new one, and writes in place: a run killed during a save loses the last good ``model.pt``.
``AtomicCheckpointSaver`` keeps MONAI's interface and behaviour and swaps in ``AtomicDiskSaver``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver

from ..io.atomic import atomic_output

__all__ = ["AtomicCheckpointSaver", "AtomicDiskSaver"]


class AtomicDiskSaver(BaseSaveHandler):
    """Ignite save handler: write to a temporary file in the target folder, then rename it over the target.

    ``remove`` only marks a file: it is deleted after the next save has landed, unless that save replaced it.
    Only rank 0 writes when ``torch.distributed`` is initialised.

    Args:
        dirname: folder of the checkpoints (created if missing).
        filename: a fixed file name for every save (e.g. ``"model.pt"``); None keeps ignite's names.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        self.dirname = Path(dirname)
        self.filename = filename
        self._to_delete: list[Path] = []

    def _path(self, filename: str) -> Path:
        return self.dirname / (self.filename or filename)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        path = self._path(filename)
        with atomic_output(path) as temporary:
            torch.save(checkpoint, temporary)
        for old in self._to_delete:
            if old != path:
                old.unlink(missing_ok=True)
        self._to_delete.clear()

    def remove(self, filename: str) -> None:
        self._to_delete.append(self._path(filename))


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` with the same arguments, whose files are replaced atomically.

    With ``save_dict={"model": network}`` the file holds ``network.state_dict()`` (DDP unwrapped), loadable with
    ``torch.load(..., weights_only=True)``.

    Args:
        interval_filename: a fixed file name for the ``save_interval`` checkpoints (with ``n_saved=1``, one file
            replaced at each save); None keeps ignite's numbered names. The other arguments are MONAI's.

    ``state_dict``/``load_state_dict`` carry the best key metric saved so far, so that a resumed run replaces
    the best model only with a better one.
    """

    def __init__(self, save_dir: str, save_dict: dict, interval_filename: str | None = None, **kwargs) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        fixed_names = {
            "_final_checkpoint": kwargs.get("final_filename"),
            "_key_metric_checkpoint": kwargs.get("key_metric_filename"),
            "_interval_checkpoint": interval_filename,
        }
        for attribute, filename in fixed_names.items():
            checkpoint = getattr(self, attribute)
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(save_dir, filename)

    def state_dict(self) -> dict:
        if self._key_metric_checkpoint is None:
            return {}
        return {"key_metric": dict(self._key_metric_checkpoint.state_dict())}

    def load_state_dict(self, state_dict: dict) -> None:
        if self._key_metric_checkpoint is not None and "key_metric" in state_dict:
            self._key_metric_checkpoint.load_state_dict(state_dict["key_metric"])
