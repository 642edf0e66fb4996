"""Fine-tuning a bundle on the labels saved in the datastore, as MONAI Label's train task."""

from __future__ import annotations

from typing import Any

from monailabel.tasks.train.bundle import BundleTrainTask

from custom_nets.bundle import Bundle
from lib.options import TRAIN_OPTIONS, Number, OptionError, parse_options

# Request options passed on to the bundle's train.json as overrides of the same name.
BUNDLE_OPTIONS = ("learning_rate", "num_workers", "cache_rate", "num_samples")
# Keys MONAI Label's server itself adds to a train request (not from the client).
SERVER_KEYS = ("model", "bundle_path", "local_rank")
LOCAL_RANK = {"local_rank": Number(int, 0, 1024)}


class BundleFineTune(BundleTrainTask):
    """Runs the bundle's ``train.json`` on the datastore's final labels, starting from ``models/model.pt`` when it
    exists, and saves the best weights (by validation Dice) there, where the next inference picks them up.

    With few labels MONAI Label's split leaves no validation case; the bundle saves weights only on a validation
    metric, so the training cases are validated instead of never saving. Validation runs every epoch unless the
    request says otherwise (``val_interval``).

    Every request option is parsed (``lib.options.TRAIN_OPTIONS``) before MONAI Label's ``BundleTrainTask`` sees the
    request: it would pass ``max_epochs``, the tracking settings and a bundle's ``displayable_configs`` into the
    config as they came, and a config runs strings that start with ``$``. The server checks the same options
    before it starts the training process (HTTP 422); this check is the one that holds whatever route the request
    took.
    """

    def __init__(self, bundle: Bundle, conf: dict[str, str]):
        super().__init__(str(bundle.path), conf, load_strict=True)
        self.bundle = bundle

    def config(self) -> dict[str, Any]:
        options = super().config()
        options["val_interval"] = 1
        return options

    def parse_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request with every option parsed into its type and range; ``OptionError`` otherwise."""
        options = {k: v for k, v in request.items() if k not in SERVER_KEYS}
        parsed = parse_options(options, TRAIN_OPTIONS)
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

    def _fetch_datalist(self, request, datastore):
        datalist = super()._fetch_datalist(request, datastore)
        if not datalist:
            raise ValueError("no saved labels to train on: save a label (tag 'final') for at least one image")
        return datalist

    def _partition_datalist(self, datalist, request, shuffle=False):
        train, validation = super()._partition_datalist(datalist, request, shuffle)
        return train, validation or train

    def _update_overrides(self, overrides):
        # MONAI Label passes the device as a name; the bundle's configs use it as a torch.device (@device.type).
        overrides["device"] = f"$torch.device({str(overrides['device'])!r})"
        overrides["val_interval"] = self._request.get("val_interval", 1)
        overrides.update({option: self._request[option] for option in BUNDLE_OPTIONS if option in self._request})
        return overrides

    def __call__(self, request, datastore):
        self._request = self.parse_request(request)
        return super().__call__(self._request, datastore)
