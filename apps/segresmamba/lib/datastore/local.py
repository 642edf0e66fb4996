"""MONAI Label's local datastore, with checked input and writes that survive a crash or a kill."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore

from custom_nets.io.atomic import atomic_output
from custom_nets.io.header import MAX_VOXELS
from lib.datastore.checks import checked_id, read_geometry


def replace_atomically(write, dest: str | Path) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``dest``, then rename it over ``dest``
    (``custom_nets.io.atomic_output``): readers and a restart after a kill see the old file or the new one, never
    half of one. The temporary name ends in ``.part``, not an image extension: the folder scan never picks it up."""
    with atomic_output(dest) as tmp:
        write(tmp)


class CheckedLocalDatastore(LocalDatastore):
    """A folder of images and labels (``labels/<tag>/``) indexed by ``datastore_v2.json`` in that folder.

    Unlike the stock one it answers bad uploads with HTTP 4xx (ids with path characters, files that are not
    readable 3D images, labels whose grid differs from their image's) and writes images, labels and the index
    through a temporary file and an atomic rename. The stock index is changed without a lock from the request
    threads and from the folder watcher's thread (a refresh iterating it while another removes an entry fails with
    "dictionary changed size during iteration"); here one lock orders every change and refresh of the index.

    Args:
        max_voxels: the largest image or label accepted (voxels times channels), checked from its header before any
            voxel is read.
        args, kwargs: those of ``LocalDatastore``.
    """

    def __init__(self, *args, max_voxels: int = MAX_VOXELS, **kwargs):
        self.max_voxels = max_voxels
        self._index_lock = threading.RLock()  # taken before the file lock, never after it
        super().__init__(*args, **kwargs)

    def refresh(self) -> None:
        with self._index_lock:
            super().refresh()

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        derived_id, ext = self._to_id(os.path.basename(image_filename))
        image_id = checked_id(image_id or derived_id)
        if f"*{ext}" not in self._extensions:
            raise HTTPException(
                status_code=415,
                detail=f"unsupported image file type {ext!r}; this datastore takes {sorted(self._extensions)}",
            )
        read_geometry(image_filename, f"uploaded image {image_id!r}", self.max_voxels)

        name = self._filename(image_id, ext)
        with self._index_lock, FileLock(self._lock_file):
            replace_atomically(lambda tmp: shutil.copyfile(image_filename, tmp), Path(self._datastore.image_path(), name))
            info = {**(image_info or {}), "ts": int(time.time()), "name": name}
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        self.check_label(image_id, label_filename, label_tag)
        return self.store_label(image_id, label_filename, label_tag, label_info)

    def check_label(self, image_id: str, label_filename: str, label_tag: str) -> None:
        """HTTP 4xx unless the ids are safe, the image is known and the label is a readable image on its grid."""
        checked_id(image_id)
        checked_id(label_tag, "label tag")
        image_uri = self.get_image_uri(image_id)
        if not image_uri:
            raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")
        label = read_geometry(label_filename, f"label for {image_id!r}", self.max_voxels)
        image = read_geometry(image_uri, f"image {image_id!r}", self.max_voxels)
        if not label.matches(image):
            raise HTTPException(
                status_code=422,
                detail=f"label geometry does not match image {image_id!r}: label {label.describe()}; "
                f"image {image.describe()}",
            )

    def store_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Write a checked label and its index entry (``check_label`` first)."""
        _, ext = self._to_id(os.path.basename(label_filename))
        name = self._filename(image_id, ext)
        label_dir = Path(self._datastore.label_path(label_tag))
        with self._index_lock, FileLock(self._lock_file):
            label_dir.mkdir(parents=True, exist_ok=True)
            replace_atomically(lambda tmp: shutil.copyfile(label_filename, tmp), label_dir / name)
            info = {**(label_info or {}), "ts": int(time.time()), "name": name}
            self._datastore.objects[image_id].labels[label_tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)
        return image_id

    def _update_datastore_file(self, lock: bool = True) -> None:
        def write(tmp: Path) -> None:
            tmp.write_text(json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str))

        def update() -> None:
            self._ignore_event_config = True
            replace_atomically(write, self._datastore_config_path)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        with self._index_lock:
            if lock:
                with FileLock(self._lock_file):
                    update()
            else:
                update()
