"""Starting and stopping the MONAI Label server of apps/segresmamba from tests, on 127.0.0.1 and a free port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "segresmamba"

# A spleen bundle small enough to train in seconds on a CPU: the real configs with the narrowest network, voxels so
# coarse (8 mm) that the shipped CTs and the DICOM series take a few windows (at 3 mm the full CT took 27 of 64^3),
# and 64 x 32 x 32 patches and windows, which the network takes as they are with min_size 32 (a quarter of the
# voxels of 64^3, the smallest input it pads to by default).
SMALL_SPLEEN = {"feature_size": 8, "patch_size": [64, 32, 32], "pixdim": [8.0, 8.0, 8.0], "num_workers": 0,
                "sw_batch_size": 4}
SMALL_NETWORK = {"min_size": 32}
SMALL_SPLEEN_TRAIN = {"learning_rate": 3e-3, "num_samples": 1, "cache_rate": 1.0}


def small_bundles(folder: Path) -> Path:
    """A copy of bundles/spleen_ct_segresmamba in ``folder``, narrowed to ``SMALL_SPLEEN`` and ``SMALL_NETWORK``."""
    bundle = folder / "spleen_ct_segresmamba"
    shutil.copytree(ROOT / "bundles" / "spleen_ct_segresmamba", bundle, ignore=shutil.ignore_patterns("models", "eval"))
    for name, extra in (("inference.json", {}), ("train.json", SMALL_SPLEEN_TRAIN)):
        path = bundle / "configs" / name
        config = json.loads(path.read_text())
        config.update(SMALL_SPLEEN, **extra)
        config["network_def"].update(SMALL_NETWORK)
        path.write_text(json.dumps(config, indent=4))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelServer:
    """``monailabel start_server --app apps/segresmamba`` in its own process group (so that a kill reaches the
    training processes it starts too), logging to ``log``; ``headers`` go with its own requests (a token when
    authentication is on)."""

    def __init__(
        self,
        studies: str | Path,
        conf: dict[str, str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        headers: dict[str, str] | None = None,
    ):
        self.studies, self.conf, self.log, self.cwd, self.headers = str(studies), conf, log, cwd, headers or {}
        self.env = {**os.environ, "MONAI_LABEL_AUTO_UPDATE_SCORING": "false", **(env or {})}
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 180.0) -> "LabelServer":
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP),
                   "--studies", self.studies, "--host", "127.0.0.1", "--port", str(port)]
        for key, value in self.conf.items():
            command += ["--conf", key, value]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True, cwd=self.cwd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/info/", headers=self.headers, timeout=5).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(1)
        raise TimeoutError(f"server not up after {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the server and everything it started: the worst case, no clean-up runs."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def peak_memory_kib(self) -> int:
        """The server process's peak resident memory so far (VmHWM, KiB)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def wait_for_training(self, timeout: float = 600.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = requests.get(f"{self.url}/train/", headers=self.headers, timeout=10).json()
            if status.get("status") not in ("SUBMITTED", "QUEUED", "RUNNING"):
                return status
            time.sleep(2)
        raise TimeoutError(f"training still running after {timeout} s")
