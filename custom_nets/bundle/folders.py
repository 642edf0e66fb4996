"""Where the files shipped with the project are: the bundles and the sample data.

In a source checkout (or an editable install) they are the repository's ``bundles/`` and ``data/``. A regular
``pip install .`` copies them to ``<prefix>/share/segresmamba/`` (the wheel's data files), found through the
installed distribution's file list. An environment variable points elsewhere: ``SEGRESMAMBA_BUNDLES`` for the
bundles folder, ``SEGRESMAMBA_DATA`` for the sample data.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

__all__ = ["DISTRIBUTION", "ENVIRONMENT_VARIABLES", "bundles_folder", "shipped_folder"]

DISTRIBUTION = "segresmamba"
# folder name -> the environment variable that replaces it
ENVIRONMENT_VARIABLES = {"bundles": "SEGRESMAMBA_BUNDLES", "data": "SEGRESMAMBA_DATA"}
SHARE = ("share", DISTRIBUTION)  # where the wheel installs its data files, below the installation prefix


def _checkout_folder(name: str) -> Path | None:
    """``<repository>/<name>`` when this package is imported from a source checkout (``setup.cfg`` beside it)."""
    root = Path(__file__).resolve().parents[2]
    folder = root / name
    return folder if (root / "setup.cfg").is_file() and (root / "custom_nets").is_dir() and folder.is_dir() else None


def _installed_folder(name: str) -> Path | None:
    """``<prefix>/share/segresmamba/<name>`` as the installed distribution records it (any installation scheme)."""
    try:
        files = metadata.distribution(DISTRIBUTION).files or []
    except metadata.PackageNotFoundError:
        return None
    marker = (*SHARE, name)
    for file in files:
        parts = file.parts
        for i in range(len(parts) - len(marker)):
            if parts[i : i + len(marker)] == marker:
                located = Path(file.locate()).resolve()
                folder = located.parents[len(parts) - i - len(marker) - 1]
                if folder.is_dir():
                    return folder
    return None


def shipped_folder(name: str) -> Path:
    """The folder ``name`` (``"bundles"`` or ``"data"``) shipped with the project.

    Looked for in order: the environment variable (``SEGRESMAMBA_BUNDLES``, ``SEGRESMAMBA_DATA``), the source
    checkout this package is imported from, the installed distribution's data files.

    Raises:
        ValueError: an unknown name.
        FileNotFoundError: the environment variable names no folder, or the folder is nowhere to be found.
    """
    if name not in ENVIRONMENT_VARIABLES:
        raise ValueError(f"unknown shipped folder {name!r} (use {' or '.join(ENVIRONMENT_VARIABLES)})")
    variable = ENVIRONMENT_VARIABLES[name]
    if os.environ.get(variable):
        folder = Path(os.environ[variable]).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"{variable}={os.environ[variable]} is not a folder")
        return folder.resolve()
    folder = _checkout_folder(name) or _installed_folder(name)
    if folder is None:
        raise FileNotFoundError(
            f"the project's {name}/ folder is neither beside the custom_nets package (a source checkout) nor "
            f"installed with the {DISTRIBUTION} distribution (share/{DISTRIBUTION}/{name}); set {variable} to it"
        )
    return folder


def bundles_folder() -> Path:
    """The folder of the project's bundles (``shipped_folder("bundles")``)."""
    return shipped_folder("bundles")
