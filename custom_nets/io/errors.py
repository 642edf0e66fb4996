"""The error raised for input a user can fix."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input from the user: a missing, unreadable or corrupt image, an image of the wrong kind for the model,
    or a bundle that cannot be used. Its message is one line that names the path and the problem; command line
    tools print it as it is, without a traceback."""
