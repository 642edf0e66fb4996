import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"  # the sample cases shipped with the project (data/README.md)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside the tests (label_server, orthanc, ...)


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs ``-n 2``), each worker gets its share of the cores as torch threads,
    and so do the processes it starts (label servers, command lines): workers x threads stays within the cores,
    where more OpenMP threads than cores run torch several times slower."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch  # here, not at the top: the xdist controller loads this file too, and runs no test

        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


@pytest.fixture(scope="session")
def shared_label_server(tmp_path_factory):
    """One MONAI Label server of apps/segresmamba for the whole session (a ``label_server.LabelServer``, started on
    first use), shared by the app tests that need no settings of their own: starting a server costs a MONAI import.

    It serves ``label_server.small_bundles`` (the narrow spleen bundle, without weights at the start) from a local
    datastore (``Path(server.studies)``; the bundles in ``Path(server.conf["bundles"])``), with the app's default
    settings and no authentication. Its users share that datastore and those weights, so each of them:

    - uploads images under ids of its own (its module's name as a prefix) and asserts only about those;
    - assumes nothing about the model's weights it did not cause itself (a trained model may be there, or none);
    - labels what it uploads unless unlabelled images are what it tests: ``next_sample`` answers from every
      unlabelled image (test_label_app.py's active-learning test counts on its two being the only ones);
    - never stops or kills it.

    A test that needs other settings (authentication, a DICOMweb datastore, a server it kills, a known empty
    datastore or an untrained model) starts a ``LabelServer`` of its own. Under pytest-xdist (``make test``: ``-n 2
    --dist loadfile``, each test file on one worker) each worker that runs a user of it starts its own.
    """
    pytest.importorskip("monailabel")
    from label_server import LabelServer, small_bundles

    root = tmp_path_factory.mktemp("shared_label_server")
    studies = root / "studies"
    studies.mkdir()
    bundles = small_bundles(root / "bundles")
    server = LabelServer(studies, {"bundles": str(bundles)}, root / "server.log").start()
    yield server
    server.stop()
