"""Nothing saved is lost when the MONAI Label server dies in the middle of a label save (a SIGKILL at the worst
moments, made deterministic in a child process), and the datastore's index stays whole when two threads refresh it.
A server killed during a training run: tests/test_label_app_training.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from label_server import APP, ROOT

pytest.importorskip("monailabel")

CT = ROOT / "data" / "totalseg_ct_abdomen" / "example_ct.nii.gz"
SEG = ROOT / "data" / "totalseg_ct_abdomen" / "example_ct_seg_total_v1.nii.gz"

# Runs in a child: saves a new label through the app's datastore, and SIGKILLs itself at the chosen moment.
KILLED_SAVE = """
import os, shutil, signal, sys
sys.path.insert(0, sys.argv[1])
import lib.datastore.local as local
from lib.datastore import CheckedLocalDatastore

studies, label, moment = sys.argv[2], sys.argv[3], sys.argv[4]
copyfile, replace = shutil.copyfile, os.replace

def half_copy_then_die(src, dst):
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

def die_before_index(src, dst):
    if str(dst).endswith(".json"):
        os.kill(os.getpid(), signal.SIGKILL)
    replace(src, dst)

if moment == "label_copy":
    local.shutil.copyfile = half_copy_then_die
else:
    local.os.replace = die_before_index
CheckedLocalDatastore(studies, extensions=("*.nii.gz",)).save_label("ct", label, "final", {})
"""


def spleen_label(path: Path, value: int = 1) -> Path:
    seg = nib.load(SEG)
    nib.save(nib.Nifti1Image((np.asarray(seg.dataobj).round() == value).astype(np.uint8), seg.affine), path)
    return path


def labelled_store(folder: Path, tags=("final",)):
    """The app's local datastore in ``folder/studies`` holding the CT and its spleen label under each of ``tags``."""
    sys.path.insert(0, str(APP))
    from lib.datastore import CheckedLocalDatastore

    studies = folder / "studies"
    studies.mkdir()
    store = CheckedLocalDatastore(str(studies), extensions=("*.nii.gz",))
    store.add_image("ct", str(CT), {})
    label = spleen_label(folder / "first.nii.gz")
    for tag in tags:
        store.save_label("ct", str(label), tag, {})
    return store, studies, label


@pytest.mark.parametrize("moment", ["label_copy", "index_write"])
def test_kill_during_label_save_keeps_the_saved_label(tmp_path, moment):
    store, studies, first = labelled_store(tmp_path)
    saved = studies / "labels" / "final" / "ct.nii.gz"
    index = studies / "datastore_v2.json"
    index_before = index.read_text()

    second = spleen_label(tmp_path / "second.nii.gz", value=6)  # the liver: a different label
    child = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(APP), str(studies), str(second), moment],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr

    json.loads(index.read_text())  # the index is whole
    if moment == "label_copy":
        assert saved.read_bytes() == first.read_bytes() and index.read_text() == index_before
    else:  # the new label landed whole before the kill; the index still names it
        assert saved.read_bytes() == second.read_bytes()
    reopened = type(store)(str(studies), extensions=("*.nii.gz",))
    assert reopened.get_labeled_images("final") == ["ct"]
    assert nib.load(reopened.get_label_uri("ct", "final")).get_fdata().sum() > 0


def test_index_refreshes_from_two_threads_take_turns(tmp_path, monkeypatch):
    """A removal's refresh (request thread) while the folder watcher's refresh walks the index: MONAI Label's
    stock datastore changes the labels being iterated and fails with "dictionary changed size during iteration"
    (a 500 on DELETE /datastore/label, seen in a full test run); the app's takes one refresh at a time."""
    import threading

    import monailabel.datastore.local as stock

    store, studies, _ = labelled_store(tmp_path, tags=("final", "original"))

    walker = threading.current_thread()
    inside, removed = threading.Event(), threading.Event()
    exists = os.path.exists

    def exists_pausing_in_the_label_walk(path):
        # the walking refresh stops at its first label until the other refresh is done (or 3 s, when it must wait)
        if threading.current_thread() is walker and "labels" in str(path) and not inside.is_set():
            inside.set()
            removed.wait(timeout=3)
        return exists(path)

    monkeypatch.setattr(stock.os.path, "exists", exists_pausing_in_the_label_walk)
    errors = []

    def remove_and_refresh():
        inside.wait(timeout=30)
        try:
            (studies / "labels" / "original" / "ct.nii.gz").unlink()
            store.refresh()
        except Exception as error:  # noqa: BLE001 - the test reports it
            errors.append(error)
        finally:
            removed.set()

    remover = threading.Thread(target=remove_and_refresh)
    remover.start()
    store.refresh()
    remover.join(timeout=60)
    assert inside.is_set() and errors == []
    assert store.get_label_uri("ct", "final") and not store.get_label_uri("ct", "original")
