"""Runnable demonstrations on the sample case shipped in ``data/``."""
