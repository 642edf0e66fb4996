"""The clicks of a DeepEdit request, taken out of its options and parsed before anything reaches a bundle config.

3D Slicer's MONAI Label module sends a DeepEdit model's clicks among the request's options: one entry per label the
server lists (every model's labels; an empty list where that segment has no clicks), ``label`` (the segment being
edited) and sometimes ``reset_state``. The clicks go to the model as data, never as config overrides, but are parsed
all the same: label names this model knows, lists of ``[i, j, k]`` integers (``custom_nets.interactive.parse_clicks``;
``DeepEditSegmentation`` checks them against the image's size). Anything else is HTTP 422 naming the problem.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from fastapi import HTTPException

from custom_nets.interactive import ClickError, parse_clicks
from lib.options import Flag, OptionError

__all__ = ["take_clicks"]


def take_clicks(
    params: Mapping[str, Any], click_labels: Mapping[str, int] | None, served_labels: Iterable[str]
) -> tuple[dict[str, list[list[int]]], dict[str, Any]]:
    """Split a request's ``params`` into its clicks and its other options.

    Args:
        params: the request's options (parsed JSON).
        click_labels: the model's click labels (``DeepEditSegmentation.click_labels``); None for a model that takes
            no clicks, whose ``params`` are returned as they are.
        served_labels: every label of every model the server lists (3D Slicer sends them all).

    Returns:
        ``(clicks, options)``: label name -> parsed clicks for each of the model's labels, and the remaining
        options (to be parsed as options).

    Raises:
        HTTPException: 422 for clicks of a label the model does not know, a malformed click, or a ``label`` that is
            not one of the model's.
    """
    if click_labels is None:
        return {}, dict(params)
    served = set(served_labels)
    clicks, options = {}, {}
    for key, value in params.items():
        if key in click_labels:
            clicks[key] = value
        elif key == "label":
            if value not in click_labels:
                raise OptionError("label", f"{str(value)[:60]!r} is not a label of this model ({list(click_labels)})")
        elif key == "reset_state":
            Flag().parse(key, value)
        elif key in served and value in ([], None):
            continue  # another model's label, without clicks
        elif key in served:
            raise HTTPException(
                status_code=422,
                detail=f"clicks for unknown label {key!r}: this model's labels are {list(click_labels)}",
            )
        else:
            options[key] = value
    try:
        return parse_clicks(clicks, click_labels), options
    except ClickError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None
