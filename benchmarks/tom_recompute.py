"""CPU peak memory of one SegResMamba training step with and without ToM recompute (``tom_recompute``).

``python -m benchmarks.tom_recompute run --out benchmarks/results/tom_recompute`` runs each setting in ``processes``
fresh processes, alternating, with ``MALLOC_MMAP_THRESHOLD_=65536`` (see ``benchmarks.memory``). A process builds
the network (1 -> 2 channels, feature size 48, torch scan backend, float32, batch 1) and a random image and label,
then measures one forward, DiceCE loss and backward (the peak RSS increase over the RSS before it), and after it,
in a forward pass of its own, the bytes autograd keeps for backward (``profile.saved_tensor_bytes_per_module``:
activations only, each storage once; a checkpoint's inside is not kept, so not counted).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import fire
import torch

from custom_nets.io.atomic import atomic_output

from .memory import CpuPeakMeter
from .profile import saved_tensor_bytes_per_module

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def case(recompute: bool, size: int = 64, feature_size: int = 48, threads: int | None = None, seed: int = 0) -> None:
    """One measured forward+backward in this process, printed as JSON. ``threads``: torch's intra-op threads
    (default: torch's choice)."""
    from monai.losses import DiceCELoss

    from custom_nets import SegResMamba

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = SegResMamba(in_channels=1, out_channels=2, feature_size=feature_size, scan_backend="torch",
                      tom_recompute=bool(recompute)).train()
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 1, size, size, size, generator=generator)
    label = torch.randint(0, 2, (1, 1, size, size, size), generator=generator).float()
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    meter = CpuPeakMeter()
    meter.start()
    start = time.perf_counter()
    loss_function(net(image), label).backward()
    seconds = time.perf_counter() - start
    peak = meter.stop()
    net.zero_grad(set_to_none=True)
    saved = saved_tensor_bytes_per_module(net, lambda: loss_function(net(image), label), depth=1)
    print(json.dumps(dict(
        recompute=bool(recompute), size=size, feature_size=feature_size, peak_rss_increase_mib=peak / MIB,
        saved_for_backward_mib=sum(saved.values()) / MIB, step_seconds=seconds, load_average=os.getloadavg()[0],
        threads=torch.get_num_threads(),
    )))


def run(
    out: str = "benchmarks/results/tom_recompute", size: int = 64, processes: int = 3, threads: int | None = None
) -> None:
    """Measure both settings in fresh processes and write ``results.json`` and ``results.md`` under ``out``.
    ``threads`` 1 keeps a machine that others share from spinning threads that wait for each other."""
    records = []
    for index in range(processes):
        for recompute in (False, True):
            command = [sys.executable, "-m", "benchmarks.tom_recompute", "case", str(recompute), f"--size={size}"]
            command += [f"--threads={threads}"] if threads else []
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
            record = json.loads(done.stdout.strip().splitlines()[-1])
            print(record, flush=True)
            records.append(record)
    out_dir = Path(out)
    environment = dict(
        when=datetime.now(timezone.utc).isoformat(timespec="seconds"), torch=torch.__version__,
        python=platform.python_version(), cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
        commit=subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip(),
    )
    with atomic_output(out_dir / "results.json") as temporary:
        temporary.write_text(json.dumps(dict(environment=environment, records=records), indent=1))
    with atomic_output(out_dir / "results.md") as temporary:
        temporary.write_text(_table(records, environment, size))


def _table(records: list[dict], environment: dict, size: int) -> str:
    lines = [
        f"# ToM recompute: one SegResMamba forward+backward at {size}^3, CPU",
        "",
        f"{environment['when']}, commit {environment['commit']}, torch {environment['torch']}, "
        f"{environment['cores']} cores, {records[0]['threads']} torch thread(s). Feature size 48, 1 -> 2 channels, batch 1, float32, torch scan backend, "
        "DiceCE loss. Each process measured one step after building the network (peak RSS increase, "
        "MALLOC_MMAP_THRESHOLD_=65536). Step times ran beside other work on the machine (load average in the "
        "json): not a timing benchmark.",
        "",
        "| tom_recompute | peak RSS increase (MiB), per process | median | kept for backward (MiB) |",
        "|---|---|---:|---:|",
    ]
    for recompute in (False, True):
        rows = [r for r in records if r["recompute"] == recompute]
        peaks = [r["peak_rss_increase_mib"] for r in rows]
        lines.append(
            f"| {recompute} | {', '.join(f'{p:.0f}' for p in peaks)} | {statistics.median(peaks):.0f} | "
            f"{statistics.median(r['saved_for_backward_mib'] for r in rows):.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    fire.Fire({"case": case, "run": run})
