"""Start-up and inference time of the MONAI Label app with a full-size bundle, on the shipped CT.

    python -m benchmarks.label_app [--model=spleen_ct_segresmamba] [--repeats=1] [--out=benchmarks/results/label_app]

The bundle is the repository's, copied with freshly initialised weights (none are shipped; the time of an
inference does not depend on the weights' values). Measured through MONAILabelClient as 3D Slicer calls it:
server start until /info answers, then ``repeats`` /infer calls on the CT (the first loads the weights; upload
not included).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import environment, write_atomic

ROOT = Path(__file__).resolve().parents[1]
CT = ROOT / "data" / "totalseg_ct_abdomen" / "example_ct.nii.gz"


def run(model: str = "spleen_ct_segresmamba", out: str | None = None, repeats: int = 1) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "apps" / "segresmamba"))
    from label_server import LabelServer
    from custom_nets.bundle import find_bundles
    from monailabel.client import MONAILabelClient

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        bundles, studies = folder / "bundles", folder / "studies"
        studies.mkdir()
        shutil.copytree(ROOT / "bundles" / model, bundles / model, ignore=shutil.ignore_patterns("models", "eval"))
        bundle = find_bundles(bundles)[model]
        (bundle.path / "models").mkdir()
        torch.save(bundle.parser("inference").get_parsed_content("network_def").state_dict(), bundle.weights)

        server = LabelServer(studies, {"bundles": str(bundles), "models": model}, folder / "server.log")
        started = time.perf_counter()
        server.start()
        start_s = time.perf_counter() - started
        try:
            client = MONAILabelClient(server.url, tmpdir=str(folder))
            client.upload_image(str(CT), image_id="ct")
            timings = []
            for _ in range(repeats):
                began = time.perf_counter()
                _, params = client.infer(model, "ct", {"result_extension": ".nrrd", "result_dtype": "uint8"})
                timings.append({"wall_s": round(time.perf_counter() - began, 2), "server": params["latencies"]})
        finally:
            server.stop()
    results = {"environment": environment("cpu"), "model": model, "image": str(CT.relative_to(ROOT)),
               "start_to_info_s": round(start_s, 2), "infer": timings}
    out_dir = Path(out) if out else ROOT / "benchmarks" / "results" / "label_app"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "results.json", json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "environment"}, indent=2))
    return results


if __name__ == "__main__":
    import fire

    fire.Fire(run)
