"""Command line commands: plain functions for ``fire``, and ``user_errors_as_exit`` to turn their ``InputError``
into a one-line message and a non-zero exit."""

from __future__ import annotations

import functools
import sys

from ..io import InputError
from .predict import predict

__all__ = ["predict", "predict_command", "user_errors_as_exit"]


def user_errors_as_exit(command):
    """Wrap a command so that an ``InputError`` prints ``error: <message>`` on stderr and exits with status 1,
    without a traceback (other errors are bugs and keep theirs)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None

    return run


predict_command = user_errors_as_exit(predict)
