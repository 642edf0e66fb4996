"""Values from users (command line options, bundle config overrides, the label app's request options), parsed into
their type and range before they go anywhere.

A bundle config evaluates strings (``$`` runs Python, ``@`` and ``%`` refer to other entries), so a value a user
gives is accepted only as what its parser takes: a number in a range, true or false, a list of numbers, a word
matching a pattern. A parser's ``parse(name, value)`` returns the value in its type or raises ``ValueRejected``,
which says what was expected; each surface phrases that for its users (``--epochs must be ...``, ``setting
sw_batch_size takes ...``, the label app's HTTP 422 ``option 'max_epochs': expected ...``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Protocol

from ..io import InputError

__all__ = ["Flag", "Nullable", "Number", "Numbers", "Parser", "ValueRejected", "Word", "parser_like"]


class ValueRejected(InputError):
    """A value its parser does not take.

    Args:
        name: the option or setting.
        expected: what the parser takes, as a phrase (``"a positive int"``, ``"true or false"``).
        value: the value given.
    """

    def __init__(self, name: str, expected: str, value: Any):
        super().__init__(f"{name}: expected {expected}, got {shown(value)}")
        self.name, self.expected, self.value = name, expected, value


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: a value from a user may be long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Parser(Protocol):
    def parse(self, name: str, value: Any) -> Any: ...


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Number:
    """A finite ``int`` or ``float`` in ``[low, high]`` (``(low, high]`` when ``low_open``).

    Args:
        kind: ``int`` (a float with a whole value is accepted as one) or ``float``.
        low, high: the range.
        low_open: ``low`` itself is refused (``Number(int, 0, low_open=True)``: a positive int).
        strings: also read numeric strings (some HTTP clients send numbers as strings); never on a command line,
            where a string is what a user typed instead of a number.
    """

    kind: type = float
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    strings: bool = False

    def describe(self) -> str:
        if self.low == 0 and self.low_open and self.high == math.inf:
            return f"a positive {self.kind.__name__}"
        if self.high == math.inf:
            return f"a finite number {'>' if self.low_open else '>='} {self.low}"
        return f"a number in {'(' if self.low_open else '['}{self.low}, {self.high}]"

    def parse(self, name: str, value: Any) -> int | float:
        number = value
        if self.strings and isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise ValueRejected(name, self.describe(), value) from None
        if not _is_number(number) or not math.isfinite(number):
            raise ValueRejected(name, self.describe(), value)
        if self.kind is int and number != int(number):
            raise ValueRejected(name, "a whole number", value)
        if not (self.low < number if self.low_open else self.low <= number) or number > self.high:
            raise ValueRejected(name, self.describe(), value)
        return self.kind(number)


@dataclass(frozen=True)
class Flag:
    """``true`` or ``false``; with ``strings`` also the strings ``"true"`` and ``"false"`` (any case)."""

    strings: bool = False

    def parse(self, name: str, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if self.strings and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueRejected(name, "true or false", value)


@dataclass(frozen=True)
class Word:
    """A string matching ``pattern`` in full, described to users as ``describe``."""

    pattern: str
    describe: str

    def parse(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(self.pattern, value):
            raise ValueRejected(name, self.describe, value)
        return value


@dataclass(frozen=True)
class Nullable:
    """``None`` (JSON ``null``), or what ``parser`` takes."""

    parser: Any

    def parse(self, name: str, value: Any) -> Any:
        return None if value is None else self.parser.parse(name, value)


@dataclass(frozen=True)
class Numbers:
    """A list of as many values as ``like``, each parsed by the parser ``parser_like`` gives for its item."""

    like: tuple

    def parse(self, name: str, value: Any) -> list:
        if not isinstance(value, (list, tuple)) or len(value) != len(self.like):
            raise ValueRejected(name, f"a list of {len(self.like)} numbers like {list(self.like)}", value)
        return [parser_like(item).parse(name, v) for item, v in zip(self.like, value)]


def parser_like(current: Any) -> Parser | None:
    """The parser of a bundle config's plain setting, from its value in the config: true/false for a bool, a finite
    number >= 0 of its kind for a number, a list of as many such for a non-empty list of numbers; None for anything
    else (an expression, a reference, a string, a mapping), which no user value may replace."""
    if isinstance(current, bool):
        return Flag()
    if _is_number(current):
        return Number(int if isinstance(current, int) else float, 0)
    if isinstance(current, (list, tuple)) and current and all(_is_number(v) for v in current):
        return Numbers(tuple(current))
    return None
