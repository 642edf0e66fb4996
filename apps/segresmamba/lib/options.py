"""Request options, parsed into their type and range before they go anywhere.

A bundle config evaluates strings: ``$`` runs Python, ``@`` and ``%`` resolve references. MONAI Label's bundle train
task passes request values into the config as overrides (``max_epochs``, the bundle's ``displayable_configs``, the
tracking settings) and its background runner puts others into the environment (``gpus``, ``bundle_path``), so a
request option is accepted only as a number in its range, a flag or one of known words; anything else, and any
option not listed here, is refused with an ``OptionError`` naming it (HTTP 422).

The parsers are ``custom_nets.bundle.options``' (the command line's and the bundle overrides' too); this module holds
what HTTP adds: numbers and flags also as strings (some clients send them), a choice sent back as MONAI Label's list
of choices, the GPU names MONAI Label lists, and the 422.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from fastapi import HTTPException

import custom_nets.bundle.options as shared
from custom_nets.bundle.options import Nullable, ValueRejected, shown

__all__ = [
    "INFER_OPTIONS",
    "TRAIN_OPTIONS",
    "Flag",
    "Nullable",
    "Number",
    "OptionError",
    "Word",
    "parse_json_params",
    "parse_options",
]


class OptionError(HTTPException):
    """An option the app does not take, or a value outside its type or range: HTTP 422 naming the option."""

    def __init__(self, name: str, problem: str):
        super().__init__(status_code=422, detail=f"option {name!r}: {problem}")
        self.name = name

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True)
class Number(shared.Number):
    """``Number(kind, low, high)``: an ``int`` or ``float`` in ``[low, high]``, also as a numeric string."""

    strings: bool = True


@dataclass(frozen=True)
class Flag(shared.Flag):
    """``true`` or ``false``, also as the strings ``"true"``, ``"false"``."""

    strings: bool = True


@dataclass(frozen=True)
class Word(shared.Word):
    """A string matching ``pattern`` in full. MONAI Label advertises a choice as the list of its values (first: the
    default) and its tasks take the first one when a client sends the list back: so does this."""

    def parse(self, name: str, value: Any) -> str:
        if isinstance(value, list):
            value = value[0] if value else ""
        return super().parse(name, value)


def _choice(*words: str) -> Word:
    return Word("|".join(re.escape(w) for w in words), " or ".join(repr(w) for w in words))


@dataclass(frozen=True)
class Device(Word):
    """``cpu``, ``cuda``, ``cuda:N`` or a GPU name MONAI Label lists (a list: its first item)."""

    pattern: str = r"cpu|cuda(:\d{1,2})?"
    describe: str = "'cpu', 'cuda', 'cuda:N' or a GPU name"

    def parse(self, name: str, value: Any) -> str:
        from monailabel.utils.others.generic import device_map

        first = (value[0] if value else "") if isinstance(value, list) else value
        if isinstance(first, str) and first in device_map():
            return first
        return super().parse(name, value)


DEVICE = Device()
EMPTY = Word(r"", "an empty string (not supported by this app)")

TRAIN_OPTIONS: dict[str, Any] = {
    # read by MONAI Label's BundleTrainTask
    "device": DEVICE,
    "pretrained": Flag(),
    "max_epochs": Number(int, 1, 100_000),
    "val_split": Number(float, -1.0, 0.9),
    "multi_gpu": Flag(),
    "force_multi_gpu": Flag(),
    "gpus": Word(r"all|\d{1,2}(,\d{1,2}){0,15}", "'all' or GPU indices like '0,1'"),
    "tracking": _choice("None", "none", ""),
    "tracking_uri": EMPTY,
    "tracking_experiment_name": EMPTY,
    "tracking_run_name": EMPTY,
    "run_id": _choice("run", ""),
    "model_filename": _choice("model.pt", ""),
    # passed to the bundle's train.json by this app's trainer
    "learning_rate": Number(float, 1e-8, 1.0),
    "num_workers": Number(int, 0, 32),
    "cache_rate": Number(float, 0.0, 1.0),
    "num_samples": Number(int, 1, 64),
    "val_interval": Number(int, 1, 100_000),
    # MONAI Label's clients
    "client_id": Nullable(Word(r"[A-Za-z0-9_.:\-]{0,128}", "a client id of letters, digits, '_', '-', '.' and ':'")),
}

INFER_OPTIONS: dict[str, Any] = {
    "device": DEVICE,
    "result_extension": _choice(".nii.gz", ".nii", ".nrrd", ".mha"),
    "result_dtype": _choice("uint8", "uint16", "int16", "int32", "float32"),
    "result_compress": Flag(),
    "save_label": Flag(),
    "label_tag": _choice("original"),  # an inference never overwrites the annotators' "final" labels
    "skip_writer": Flag(),
    "restore_label_idx": Flag(),  # the OHIF panel always sends it
    "logging": _choice("DEBUG", "INFO", "WARNING", "ERROR"),
    "client_id": TRAIN_OPTIONS["client_id"],
}


def parse_options(options: Mapping[str, Any] | None, allowed: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with every value parsed by its entry in ``allowed``.

    Raises:
        OptionError: an option not in ``allowed``, or a value out of its type or range.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise OptionError("params", f"expected a JSON object of options, got {type(options).__name__}")
    parsed = {}
    for name, value in options.items():
        if name not in allowed:
            raise OptionError(str(name)[:60], f"not an option of this app (options: {', '.join(sorted(allowed))})")
        try:
            parsed[name] = allowed[name].parse(name, value)
        except ValueRejected as e:
            raise OptionError(name, f"expected {e.expected}, got {shown(e.value)}") from None
    return parsed


def parse_json_params(text: str | None, field: str = "params") -> dict[str, Any]:
    """The JSON object in a form field; HTTP 422 naming the field if it is not one."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise HTTPException(status_code=422, detail=f"{field} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise HTTPException(status_code=422, detail=f"{field} must be a JSON object, got {type(value).__name__}")
    return value
