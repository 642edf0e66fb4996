"""custom_nets.io.atomic_output, the one writer of every file the project saves: whole or nothing, durable, the
process umask left alone, and no temporary file left behind by a killed writer once the target is written again."""

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from custom_nets.io import atomic, atomic_output


def hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_success_replaces_the_target_and_syncs_before_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "report.json"
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    with atomic_output(target, suffix=".json") as temporary:
        assert temporary.parent == target.parent and temporary.name.endswith(".part.json")
        temporary.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new" and hidden(target.parent) == []
    assert calls == ["fsync", "replace", "fsync"]  # the file's data, the rename, then the folder


def test_failure_keeps_the_previous_file(tmp_path):
    target = tmp_path / "model.pt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as temporary:
            temporary.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and hidden(tmp_path) == []


def test_mode_follows_the_umask_without_changing_it(tmp_path, monkeypatch):
    previous = os.umask(0o027)
    try:
        # a server's other threads create files meanwhile: the writer must never set the process umask
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("atomic_output changed the process umask"))
        with atomic_output(tmp_path / "a.txt") as temporary:
            temporary.write_text("x")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640


def test_concurrent_writers_of_one_target_do_not_disturb_each_other(tmp_path):
    target, inside, errors = tmp_path / "index.json", threading.Event(), []

    def slow_writer():
        try:
            with atomic_output(target) as temporary:
                temporary.write_text("slow")
                inside.set()
                release.wait(10)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    release = threading.Event()
    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert inside.wait(10)
    with atomic_output(target) as temporary:  # a live writer's temporary file is not stale: it stays
        temporary.write_text("fast")
    release.set()
    thread.join()
    assert errors == [] and target.read_text() == "slow" and hidden(tmp_path) == []


def test_a_killed_writer_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "mask.nii.gz"
    target.write_text("saved before")
    (tmp_path / ".mask.nii.gz.notes").write_text("not ours")  # look-alike names of other files stay
    # the module loaded from its file: importing the package would import MONAI first (15 s)
    writer = textwrap.dedent(f"""
        import importlib.util, time
        spec = importlib.util.spec_from_file_location("atomic", {str(atomic.__file__)!r})
        atomic = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(atomic)
        with atomic.atomic_output({str(target)!r}, suffix=".nii.gz") as temporary:
            with open(temporary, "wb") as stream:
                stream.write(b"half")
                stream.flush()
                print(temporary.name, flush=True)
                time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    left = process.stdout.readline().strip()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert hidden(tmp_path) == sorted([left, ".mask.nii.gz.notes"]) and str(process.pid) in left
    assert target.read_text() == "saved before"
    with atomic_output(target, suffix=".nii.gz") as temporary:
        temporary.write_text("new")
    assert target.read_text() == "new" and hidden(tmp_path) == [".mask.nii.gz.notes"]
