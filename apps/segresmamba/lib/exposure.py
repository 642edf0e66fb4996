"""What a server without authentication exposes on a network address, said when it starts."""

from __future__ import annotations

import argparse
import ipaddress

__all__ = ["exposure_warning", "served_host"]


def served_host(argv: list[str]) -> str:
    """The address ``monailabel start_server`` binds (its ``--host``; MONAI Label's default is 0.0.0.0)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-i", "--host", default="0.0.0.0")
    return parser.parse_known_args(argv)[0].host


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def exposure_warning(host: str, port: int, auth: bool) -> str | None:
    """The warning for a server on ``host``:``port`` (None when it binds only loopback or has authentication)."""
    if auth or is_loopback(host):
        return None
    where = "every network interface" if host in ("0.0.0.0", "::") else host
    return (
        f"WARNING: serving on {host}:{port} ({where}) without MONAI Label authentication: anyone who reaches this "
        "port can download every image and label of the datastore, upload images and labels, run inference and "
        "training, and replace or delete model weights. Bind 127.0.0.1 (--host 127.0.0.1) for a single user, or turn "
        "on authentication (MONAI_LABEL_AUTH_ENABLE=true) or put the server behind an authenticating reverse proxy: "
        "see the README, section 'Shared server'."
    )
