"""One parser of user values (``custom_nets.bundle.options``) behind the demo's options, the bundle overrides of
``segresmamba predict`` and the label app's request options."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from custom_nets.bundle.options import Flag, Nullable, Number, Numbers, ValueRejected, Word, parser_like
from custom_nets.io import InputError

APP = Path(__file__).resolve().parents[1] / "apps" / "segresmamba"

# what a config would evaluate or resolve, or what is not a number at all
HOSTILE = ["$__import__('os').system('x')", "@network_def", "%configs/train.json#x", "nan", None, [1], {"a": 1}]


def rejected(parser, value, got=None) -> str:
    """What ``parser`` says it expected when it refused ``value`` (or, in a list, the item ``got``)."""
    with pytest.raises(ValueRejected) as error:
        parser.parse("x", value)
    assert error.value.name == "x" and isinstance(error.value, InputError)
    assert error.value.value is (value if got is None else got)
    return error.value.expected


def test_number_kind_range_and_strings():
    positive = Number(int, 0, low_open=True)
    assert positive.parse("x", 3) == 3 and positive.parse("x", 2.0) == 2 and type(positive.parse("x", 2.0)) is int
    assert rejected(positive, 0) == rejected(positive, -1) == rejected(positive, True) == "a positive int"
    assert rejected(positive, "3") == "a positive int"  # a command line string is not a number
    assert rejected(positive, 1.5) == "a whole number"
    for value in (math.inf, math.nan, *HOSTILE):
        rejected(positive, value)
    bounded = Number(float, -1.0, 0.9, strings=True)
    assert bounded.parse("x", "0.5") == 0.5 and bounded.parse("x", -1) == -1.0
    assert rejected(bounded, "0.95") == rejected(bounded, "nan") == "a number in [-1.0, 0.9]"
    assert Number(float, 0).describe() == "a finite number >= 0"


def test_flag_word_nullable_numbers():
    assert Flag().parse("x", False) is False and rejected(Flag(), "true") == "true or false"
    assert Flag(strings=True).parse("x", "TRUE") is True
    assert rejected(Flag(strings=True), 1) == "true or false"
    word = Word(r"cpu|cuda", "'cpu' or 'cuda'")
    assert word.parse("x", "cpu") == "cpu"
    assert rejected(word, "cpu; rm") == rejected(word, ["cpu"]) == "'cpu' or 'cuda'"
    assert Nullable(word).parse("x", None) is None and Nullable(word).parse("x", "cuda") == "cuda"
    pixdim = Numbers((1.5, 1.5, 2.0))
    assert pixdim.parse("x", [1, 2, 3]) == [1.0, 2.0, 3.0]
    assert rejected(pixdim, [1, 2]) == "a list of 3 numbers like [1.5, 1.5, 2.0]"
    assert rejected(pixdim, [1, -2, 3], got=-2) == "a finite number >= 0"


def test_config_settings_get_the_parser_of_their_kind():
    assert parser_like(True) == Flag() and parser_like(2) == Number(int, 0) and parser_like(0.5) == Number(float, 0)
    assert parser_like([96, 96, 96]) == Numbers((96, 96, 96))
    for not_plain in ("$@device.type == 'cuda'", "@network_def", {"_target_": "x"}, [], ["a"], None):
        assert parser_like(not_plain) is None


def test_every_surface_refuses_what_a_config_would_evaluate(tmp_path):
    """The demo's options, a bundle override and a label-app option all go through the same parsers."""
    from monai.bundle import ConfigParser

    from custom_nets.__main__ import _positive
    from custom_nets.bundle import checked_overrides

    sys.path.insert(0, str(APP))
    from lib.options import TRAIN_OPTIONS, OptionError, parse_options

    config = ConfigParser({"sw_batch_size": 4, "amp": "$@device.type == 'cuda'"})
    for value in HOSTILE:
        with pytest.raises(InputError, match="--epochs must be a positive int"):
            _positive("epochs", value)
        with pytest.raises(InputError, match="setting sw_batch_size takes a finite number >= 0"):
            checked_overrides(config, {"sw_batch_size": value})
        with pytest.raises(OptionError, match="option 'max_epochs': expected a number in"):
            parse_options({"max_epochs": value}, TRAIN_OPTIONS)
    assert _positive("epochs", 3) == 3
    assert checked_overrides(config, {"sw_batch_size": 2.0}) == {"sw_batch_size": 2}
    assert parse_options({"max_epochs": "3", "pretrained": "false"}, TRAIN_OPTIONS) == {"max_epochs": 3, "pretrained": False}
    with pytest.raises(InputError, match="unknown setting 'amp'"):
        checked_overrides(config, {"amp": True})
