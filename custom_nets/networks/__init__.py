"""Networks of this project."""

from .segresmamba import SegResMamba

__all__ = ["SegResMamba"]
