"""Files uploaded with a request: copied to a temporary file that is removed on every way out of the request."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import HTTPException, UploadFile

__all__ = ["IMAGE_UPLOAD_SUFFIXES", "saved_upload", "upload_suffix"]

IMAGE_UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def upload_suffix(upload: UploadFile, allowed: tuple[str, ...], kind: str = "image") -> str:
    """The suffix of the uploaded file's name among ``allowed`` (HTTP 415 naming the ``kind`` of file expected
    otherwise); ``allowed[0]`` if unnamed."""
    name = (upload.filename or "").lower()
    if not name:
        return allowed[0]
    suffix = next((s for s in allowed if name.endswith(s)), None)
    if suffix is None:
        shown = re.sub(r"[^\w.\-]", "_", Path(name).name)[-60:]
        raise HTTPException(status_code=415, detail=f"unsupported {kind} file type {shown!r}; use {', '.join(allowed)}")
    return suffix


@contextmanager
def saved_upload(upload: UploadFile, suffix: str) -> Iterator[str]:
    """Copy an upload to a new file in the temporary folder (``TMPDIR``) and yield its path; the file is removed
    when the block ends, however it ends.

    MONAI Label's own endpoints copy uploads to a temporary file too, but remove it in a background task that runs
    only after a successful response: every upload that fails its checks stays behind, whole. This app's endpoints
    use this instead.
    """
    fd, path = tempfile.mkstemp(prefix="segresmamba-upload-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out:
            upload.file.seek(0)
            shutil.copyfileobj(upload.file, out, length=1 << 20)
        yield path
    finally:
        Path(path).unlink(missing_ok=True)
