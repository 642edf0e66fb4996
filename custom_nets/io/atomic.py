"""Writing a file so that it appears whole or not at all, even across a crash or a kill."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output"]

TEMPORARY_TAG = ".part"  # not an image or config extension: folder scans never mistake a temporary file for data


def _temporary_name(path: Path, suffix: str) -> str:
    """``.<name>.<pid>-<random>.part<suffix>``: hidden, beside the target, and naming the process that writes it."""
    return f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMPORARY_TAG}{suffix}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Remove temporary files of ``path`` left by writers that were killed (their process is gone). Those of
    running processes, this one's other threads included, are writes in progress and stay."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)-[0-9a-f]+" + re.escape(TEMPORARY_TAG))
    for entry in os.scandir(path.parent):
        match = pattern.match(entry.name)
        if match and entry.is_file(follow_symlinks=False) and not _process_alive(int(match.group(1))):
            Path(entry.path).unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


@contextmanager
def atomic_output(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` to write to; when the block succeeds, flush it to disk and
    rename it to ``path`` (atomic within one file system), and when it fails, remove it. A reader, or a restart
    after a kill, sees the old file or the new one, never part of one. Creates the parent folder if needed, and
    first removes temporary files of ``path`` that killed writers left behind.

    The temporary file is created with mode 0o666 less the process umask, as a new file would be (the umask is
    applied by the system, never changed: other threads may be creating files).

    Args:
        path: the final file.
        suffix: the temporary file's suffix, for writers that choose a format by it (e.g. ``".nii.gz"``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    while True:
        temporary = path.parent / _temporary_name(path, suffix)
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield temporary
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
