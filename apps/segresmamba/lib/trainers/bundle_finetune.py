"""Fine-tuning a bundle on the labels saved in the datastore, as MONAI Label's train task."""

from __future__ import annotations

from typing import Any

from monailabel.tasks.train.bundle import BundleTrainTask

from custom_nets.bundle import Bundle

# Request options passed on to the bundle's train.json as overrides of the same name.
BUNDLE_OPTIONS = ("learning_rate", "num_workers", "cache_rate", "num_samples")


class BundleFineTune(BundleTrainTask):
    """Runs the bundle's ``train.json`` on the datastore's final labels, starting from ``models/model.pt`` when it
    exists, and saves the best weights (by validation Dice) there, where the next inference picks them up.

    With few labels MONAI Label's split leaves no validation case; the bundle saves weights only on a validation
    metric, so the training cases are validated instead of never saving. Validation runs every epoch unless the
    request says otherwise (``val_interval``).
    """

    def __init__(self, bundle: Bundle, conf: dict[str, str]):
        super().__init__(str(bundle.path), conf, load_strict=True)
        self.bundle = bundle

    def config(self) -> dict[str, Any]:
        options = super().config()
        options["val_interval"] = 1
        return options

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
        overrides["val_interval"] = int(self._request.get("val_interval", 1))
        overrides.update({option: self._request[option] for option in BUNDLE_OPTIONS if option in self._request})
        return overrides

    def __call__(self, request, datastore):
        self._request = request
        return super().__call__(request, datastore)
