"""The label app under load: N inferences at once against a small bundle, and how fast the server answers meanwhile.

    python -m benchmarks.label_load [--parallel=6] [--rounds=2] [--workers=1] [--queue=4] [--budget_s=600]
                                    [--out=benchmarks/results/label_load]

A server on 127.0.0.1 only (a free port) serves the spleen bundle narrowed as in the tests (``SMALL_SPLEEN``:
feature size 8, 3 mm voxels, random weights) with the shipped small CT crop in its datastore. Each round sends
``parallel`` inferences at once (plain HTTP, JSON output) while one client polls ``/info/`` every 0.25 s; a
request refused by the bounded queue (503) is retried after its ``Retry-After``. Recorded: inference wall time per
request (p50, p95, queued time included), 503 answers, ``/info`` latency (p50, p95, max), and the server's resident
memory (RSS now and peak, VmHWM). Bounded: at most ``rounds * parallel`` inferences, and the run stops after
``budget_s`` seconds.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

from benchmarks.report import environment, write_atomic

ROOT = Path(__file__).resolve().parents[1]
CT = ROOT / "data" / "totalseg_ct_abdomen" / "example_ct_sm.nii.gz"
MODEL = "spleen_ct_segresmamba"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))], 3)


def memory_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: int(next(line.split()[1] for line in status if line.startswith(f"{key}:"))) for key in ("VmRSS", "VmHWM")}


def run(
    parallel: int = 6,
    rounds: int = 2,
    workers: int = 1,
    queue: int = 4,
    budget_s: float = 600.0,
    out: str | None = None,
) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "apps" / "segresmamba"))
    from label_server import LabelServer, small_bundles
    from custom_nets.bundle import find_bundles

    deadline = time.monotonic() + budget_s
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        studies = folder / "studies"
        studies.mkdir()
        (studies / "ct.nii.gz").write_bytes(CT.read_bytes())
        bundle = find_bundles(small_bundles(folder / "bundles"))[MODEL]
        bundle.weights.parent.mkdir()
        torch.manual_seed(0)
        torch.save(bundle.parser("inference").get_parsed_content("network_def").state_dict(), bundle.weights)

        server = LabelServer(
            studies,
            {"bundles": str(bundle.path.parent), "infer_workers": str(workers), "infer_queue": str(queue)},
            folder / "server.log",
        ).start()  # binds 127.0.0.1
        url = server.url
        try:
            idle = memory_kib(server.process.pid)
            requests.post(f"{url}/infer/{MODEL}", params={"image": "ct", "output": "json"}, timeout=600)  # warm-up
            warm = memory_kib(server.process.pid)

            stop = threading.Event()
            info_latencies: list[float] = []

            def poll_info():
                while not stop.is_set():
                    began = time.perf_counter()
                    requests.get(f"{url}/info/", timeout=60)
                    info_latencies.append(time.perf_counter() - began)
                    stop.wait(0.25)

            refused = 0
            refused_lock = threading.Lock()

            def one_inference() -> float | None:
                nonlocal refused
                began = time.perf_counter()
                while time.monotonic() < deadline:
                    answer = requests.post(
                        f"{url}/infer/{MODEL}", params={"image": "ct", "output": "json"}, timeout=600
                    )
                    if answer.status_code != 503:
                        answer.raise_for_status()
                        return time.perf_counter() - began
                    with refused_lock:
                        refused += 1
                    time.sleep(float(answer.headers.get("Retry-After", "1")))
                return None

            infer_times: list[float] = []
            poller = threading.Thread(target=poll_info, daemon=True)
            poller.start()
            for _ in range(rounds):
                if time.monotonic() >= deadline:
                    break
                with ThreadPoolExecutor(parallel) as pool:
                    infer_times += [t for t in pool.map(lambda _: one_inference(), range(parallel)) if t is not None]
            stop.set()
            poller.join()
            loaded = memory_kib(server.process.pid)
        finally:
            server.stop()

    results = {
        "environment": environment("cpu"),
        "model": f"{MODEL} narrowed (tests/label_server.py SMALL_SPLEEN), random weights",
        "image": str(CT.relative_to(ROOT)),
        "parallel": parallel,
        "rounds": rounds,
        "infer_workers": workers,
        "infer_queue": queue,
        "inferences_done": len(infer_times),
        "inferences_refused_503": refused,
        "infer_wall_s": {"p50": percentile(infer_times, 50), "p95": percentile(infer_times, 95),
                         "max": percentile(infer_times, 100)},  # fmt: skip
        "info_during_load_s": {"count": len(info_latencies), "p50": percentile(info_latencies, 50),
                               "p95": percentile(info_latencies, 95), "max": percentile(info_latencies, 100)},  # fmt: skip
        "server_memory_mib": {
            "rss_idle": round(idle["VmRSS"] / 1024),
            "rss_after_warm_up": round(warm["VmRSS"] / 1024),
            "rss_after_load": round(loaded["VmRSS"] / 1024),
            "peak_VmHWM": round(loaded["VmHWM"] / 1024),
        },
    }
    out_dir = Path(out) if out else ROOT / "benchmarks" / "results" / "label_load"
    write_atomic(out_dir / "results.json", json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "environment"}, indent=2))
    return results


if __name__ == "__main__":
    import fire

    fire.Fire(run)
