"""Fine-tuning a bundle on the labels saved in the datastore, as MONAI Label's train task."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import device_list

from custom_nets.bundle import Bundle
from custom_nets.handlers import training_progress
from lib.options import TRAIN_OPTIONS, Number, OptionError, parse_options

logger = logging.getLogger(__name__)

# The section of a bundle's train.json that holds its defaults for fine-tuning on saved labels: the options shown
# in /info (3D Slicer's training options) and used when a request does not give them.
FINETUNE_SECTION = "finetune"
# Used where a bundle's train.json has no such section (MONAI Label's epochs; validation every epoch).
FALLBACK_DEFAULTS = {"max_epochs": 50, "val_interval": 1}
# Request options passed on to the bundle's train.json as overrides of the same name.
BUNDLE_OPTIONS = ("learning_rate", "num_workers", "cache_rate", "num_samples")
# Keys MONAI Label's server itself adds to a train request (not from the client).
SERVER_KEYS = ("model", "bundle_path", "local_rank")
LOCAL_RANK = {"local_rank": Number(int, 0, 1024)}


def finetune_defaults(bundle_config, bundle_name: str) -> dict[str, Any]:
    """The training options a bundle's ``train.json`` proposes for fine-tuning (its ``finetune`` section, references
    resolved), each parsed as a request option would be, over ``FALLBACK_DEFAULTS``.

    Raises:
        ValueError: the section is not a mapping, holds an option the app does not take or a value out of range, or
            its validation interval is longer than its run.
    """
    section = bundle_config.get_parsed_content(FINETUNE_SECTION) if FINETUNE_SECTION in bundle_config else {}
    if not isinstance(section, dict):
        raise ValueError(f"bundle {bundle_name}: train.json's {FINETUNE_SECTION!r} must be a mapping of train options")
    try:
        defaults = {**FALLBACK_DEFAULTS, **parse_options(section, TRAIN_OPTIONS)}
    except OptionError as error:
        raise ValueError(f"bundle {bundle_name}: train.json's {FINETUNE_SECTION!r}: {error}") from None
    if defaults["val_interval"] > defaults["max_epochs"]:
        raise ValueError(f"bundle {bundle_name}: train.json's {FINETUNE_SECTION!r}: val_interval "
                         f"{defaults['val_interval']} is more than max_epochs {defaults['max_epochs']}")
    return defaults


class BundleFineTune(BundleTrainTask):
    """Runs the bundle's ``train.json`` on the datastore's final labels and saves the best weights (by validation
    Dice) in ``models/model.pt``, where the next inference picks them up.

    Where it starts from: when the bundle's training checkpoint (``models/checkpoint.pt``: network, optimizer,
    scheduler, AMP scaler, epoch, best Dice, curves) is of a run that stopped before its last epoch (a server killed
    or a training stopped), the run goes on from it (the bundle's ``resume``) up to the request's ``max_epochs``;
    otherwise from ``models/model.pt`` when it exists; otherwise from scratch (also with ``pretrained`` false).

    Defaults (``max_epochs``, ``val_interval``, ``learning_rate``) come from the ``finetune`` section of the bundle's
    ``train.json`` and are shown in ``/info``; a request may set others within ``lib.options.TRAIN_OPTIONS``'s
    ranges; a ``val_interval`` longer than ``max_epochs`` is shortened to it (the weights are saved only after a
    validation). With few labels MONAI Label's split leaves no validation case; the bundle saves weights only on a
    validation metric, so the training cases are validated instead of never saving.

    Every request option is parsed (``lib.options.TRAIN_OPTIONS``) before MONAI Label's ``BundleTrainTask`` sees the
    request: it would pass ``max_epochs``, the tracking settings and a bundle's ``displayable_configs`` into the
    config as they came, and a config runs strings that start with ``$``. The server checks the same options
    before it starts the training process (HTTP 422); this check is the one that holds whatever route the request
    took.
    """

    def __init__(self, bundle: Bundle, conf: dict[str, str]):
        super().__init__(str(bundle.path), conf, load_strict=True)
        self.bundle = bundle
        self.defaults = finetune_defaults(self.bundle_config, bundle.name)
        # the bundle's training checkpoint (TrainingCheckpoint), if it keeps one
        config = self.bundle_config
        checkpoint = config.get_parsed_content("checkpoint_file") if "checkpoint_file" in config else None
        self.checkpoint_file = Path(checkpoint) if checkpoint else None
        self._resume = False

    def config(self) -> dict[str, Any]:
        options = super().config()
        options.update(self.defaults)
        options["model_filename"] = ["model.pt"]  # the weights it fine-tunes from; checkpoint.pt is resumed on its own
        return options

    def parse_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request with every option parsed into its type and range, the bundle's defaults for the options it
        does not give, ``val_interval`` at most ``max_epochs``; ``OptionError`` otherwise."""
        options = {k: v for k, v in request.items() if k not in SERVER_KEYS}
        # MONAI Label's own default device is "cuda", also where there is none: the first it lists (CPU there)
        parsed = {"device": device_list()[0], **self.defaults, **parse_options(options, TRAIN_OPTIONS)}
        if parsed["val_interval"] > parsed["max_epochs"]:  # the weights are saved only after a validation
            logger.info(f"val_interval {parsed['val_interval']} > max_epochs {parsed['max_epochs']}: validating at the "
                        "last epoch")
            parsed["val_interval"] = parsed["max_epochs"]
        if request.get("model", self.bundle.name) != self.bundle.name:
            raise OptionError("model", f"this task trains {self.bundle.name!r}, not {str(request['model'])[:60]!r}")
        if str(request.get("bundle_path", self.bundle.path)) != str(self.bundle.path):
            raise OptionError("bundle_path", "is set by the server, not by a request")
        parsed["model"] = self.bundle.name
        if "local_rank" in request:
            parsed["local_rank"] = parse_options({"local_rank": request["local_rank"]}, LOCAL_RANK)["local_rank"]
        if not parsed.get("model_filename"):
            parsed.pop("model_filename", None)
        if not parsed.get("run_id"):
            parsed.pop("run_id", None)
        return parsed

    def resumes(self, request: dict[str, Any]) -> bool:
        """Whether a run with the (parsed) ``request`` goes on from the training checkpoint: it is of a run that
        stopped before its last epoch, fewer epochs than the request's ``max_epochs``, and ``pretrained`` is on."""
        if not request.get("pretrained", True) or self.checkpoint_file is None or not self.checkpoint_file.is_file():
            return False
        try:
            epoch, planned = training_progress(self.checkpoint_file)
        except Exception as error:  # an unreadable checkpoint must not stop fine-tuning from model.pt
            logger.warning(f"not resuming from {self.checkpoint_file}: {error}")
            return False
        if epoch >= planned:
            return False
        if epoch >= request["max_epochs"]:
            logger.info(f"not resuming: {self.checkpoint_file} is at epoch {epoch}, max_epochs {request['max_epochs']}")
            return False
        logger.info(f"resuming the training stopped at epoch {epoch}/{planned} from {self.checkpoint_file}")
        return True

    def _load_checkpoint(self, model_pytorch, pretrained, train_handlers):
        # No public way to choose the starting weights in MONAI Label 0.8.5, whose own method fails on
        # pretrained=false (os.path.exists(None)); a resumed run loads everything from the training checkpoint.
        if pretrained and not self._resume and os.path.exists(model_pytorch):
            super()._load_checkpoint(model_pytorch, pretrained, train_handlers)

    def _update_overrides(self, overrides):
        # MONAI Label 0.8.5's hook for derived tasks: the only place whose overrides reach both its single- and
        # multi-GPU runs.
        # MONAI Label passes the device as a name; the bundle's configs use it as a torch.device (@device.type).
        overrides["device"] = f"$torch.device({str(overrides['device'])!r})"
        overrides["epochs"] = overrides["train#trainer#max_epochs"]  # what a schedule's length refers to (T_max)
        overrides["val_interval"] = self._request["val_interval"]
        overrides.update({option: self._request[option] for option in BUNDLE_OPTIONS if option in self._request})
        if not overrides.get("validate#dataset#data"):
            overrides["validate#dataset#data"] = overrides["train#dataset#data"]
        if self._resume:
            overrides["resume"] = True
        return overrides

    def __call__(self, request, datastore):
        self._request = self.parse_request(request)
        if not datastore.datalist():
            raise ValueError("no saved labels to train on: save a label (tag 'final') for at least one image")
        self._resume = self.resumes(self._request)
        return super().__call__(self._request, datastore)
