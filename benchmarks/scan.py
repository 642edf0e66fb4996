"""CPU benchmark of the torch selective scan against a step-by-step loop.

``python -m benchmarks.scan run --out benchmarks/results/scan_cpu`` measures, for d_state 16, d_inner in
{96, 192, 384, 768} and L in {512, 4096, 32768}, batch 1, the forward and the forward+backward time and peak memory
of ``custom_nets.selective_scan(backend="torch")`` and of the plain loop the tests trust
(``backend="reference"``). Each case runs in a fresh process (``case`` command) with
``MALLOC_MMAP_THRESHOLD_=65536`` for memory (the peak RSS increase over the inputs, ``benchmarks.memory``) and
in another with the default malloc for time.
Inputs follow mamba-ssm's initialisation (A = -(1..16), time steps log-uniform in [1e-3, 1e-1]).
"""

from __future__ import annotations

import json
import math
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

from .memory import CpuPeakMeter
from .report import write_atomic

ROOT = Path(__file__).resolve().parents[1]
D_INNER = (96, 192, 384, 768)
LENGTHS = (512, 4096, 32768)
D_STATE = 16
# The loop's backward runs an autograd node per step (about 5 ms a step here): it is timed up to this d_inner x L.
LOOP_BACKWARD_MAX_SIZE = 96 * 4096


def _inputs(d_inner: int, length: int, requires_grad: bool) -> dict:
    generator = torch.Generator().manual_seed(0)
    dt = torch.exp(torch.rand(d_inner, generator=generator) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    inputs = dict(
        u=torch.randn(1, d_inner, length, generator=generator),
        delta=0.1 * torch.randn(1, d_inner, length, generator=generator),
        A=-torch.arange(1.0, D_STATE + 1).repeat(d_inner, 1),
        B=torch.randn(1, D_STATE, length, generator=generator),
        C=torch.randn(1, D_STATE, length, generator=generator),
        D=torch.ones(d_inner),
        z=torch.randn(1, d_inner, length, generator=generator),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
    )
    return {name: t.requires_grad_(requires_grad) for name, t in inputs.items()}


def _scan_function(impl: str):
    from custom_nets import selective_scan

    backend = "torch" if impl == "chunked" else "reference"
    return lambda **kw: selective_scan(**kw, delta_softplus=True, backend=backend)


def case(
    impl: str, d_inner: int, length: int, mode: str, measure: str = "time", repeats: int = 3, warmups: int = 1
) -> None:
    """Measure one case in this process and print it as JSON.

    ``mode``: ``forward`` or ``forward_backward``; ``measure``: ``time`` (median of ``repeats`` after ``warmups``
    untimed runs) or ``memory`` (peak RSS increase of one step; run with ``MALLOC_MMAP_THRESHOLD_=65536``).
    """
    scan = _scan_function(impl)
    backward = mode == "forward_backward"
    inputs = _inputs(d_inner, length, requires_grad=backward)

    def step() -> None:
        with torch.set_grad_enabled(backward):
            out = scan(**inputs)
            if backward:
                out.sum().backward()
                for t in inputs.values():
                    t.grad = None

    record = dict(impl=impl, d_inner=d_inner, length=length, mode=mode)
    if measure == "memory":
        meter = CpuPeakMeter()
        meter.start()
        step()
        record.update(peak_bytes=meter.stop(), memory_measure=meter.measure)
    else:
        for _ in range(warmups):
            step()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        record.update(seconds=statistics.median(times), repeats=repeats, warmups=warmups)
    print(json.dumps(record))


def _run_case(impl: str, d_inner: int, length: int, mode: str, repeats: int, warmups: int, processes: int) -> dict:
    """Time in ``processes`` fresh processes (default malloc; the median of their medians, since one process can
    run 40% slower than the next throughout), memory in another (freed memory returned to the OS)."""
    record, process_seconds = {}, []
    runs = [("time", {})] * processes + [("memory", {"MALLOC_MMAP_THRESHOLD_": "65536"})]
    for measure, extra_env in runs:
        command = [sys.executable, "-m", "benchmarks.scan", "case", impl, str(d_inner), str(length), mode,
                   f"--measure={measure}", f"--repeats={repeats}", f"--warmups={warmups}"]
        done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, **extra_env), capture_output=True, text=True)
        if done.returncode:
            return dict(impl=impl, d_inner=d_inner, length=length, mode=mode,
                        error=(done.stderr.strip().splitlines() or ["failed"])[-1])
        record.update(json.loads(done.stdout.strip().splitlines()[-1]))
        if measure == "time":
            process_seconds.append(record["seconds"])
    return dict(record, seconds=statistics.median(process_seconds), process_seconds=process_seconds)


def run(out: str = "benchmarks/results/scan_cpu") -> None:
    """Run every case, each in a fresh process, and write ``scan_cpu.json`` and ``scan_cpu.md`` into ``out``."""
    records = []
    for d_inner in D_INNER:
        for length in LENGTHS:
            small = d_inner * length <= 96 * 4096  # these vary most from run to run and from process to process
            for mode in ("forward", "forward_backward"):
                impls = ["chunked"]
                if mode == "forward" or d_inner * length <= LOOP_BACKWARD_MAX_SIZE:
                    impls.append("stepwise")
                for impl in impls:
                    slow = impl == "stepwise" and mode == "forward_backward"  # 17-26 s a run at 96 x 4096
                    # small cases: steady state, as in a network that calls the scan hundreds of times a step
                    # (the first few calls of a process are up to 30% slower while malloc adapts)
                    repeats, warmups, processes = (9, 5, 5) if small and not slow else (3, 1, 1) if small else (1, 1, 1)
                    record = _run_case(impl, d_inner, length, mode, repeats, warmups, processes)
                    print(json.dumps(record), flush=True)
                    records.append(record)
    stamp = dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=platform.machine(),
        processor=_cpu_name(),
        cpus=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        python=platform.python_version(),
        torch=torch.__version__,
    )
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "scan_cpu.json", json.dumps(dict(stamp=stamp, records=records), indent=1) + "\n")
    write_atomic(folder / "scan_cpu.md", _markdown(stamp, records))
    print(_markdown(stamp, records))


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _markdown(stamp: dict, records: list[dict]) -> str:
    index = {(r["impl"], r["d_inner"], r["length"], r["mode"]): r for r in records}

    def cell(impl, d_inner, length, mode, key):
        record = index.get((impl, d_inner, length, mode))
        if record is None:
            return "not run"
        if "error" in record:
            return "error"
        return f"{record['seconds']:.3f}" if key == "seconds" else f"{record['peak_bytes'] / 2**20:.0f}"

    lines = [
        "# Selective scan on CPU: chunked torch backend vs step-by-step loop",
        "",
        f"{stamp['date']}, {stamp['processor']}, {stamp['cpus']} CPUs, {stamp['torch_threads']} torch threads, "
        f"Python {stamp['python']}, torch {stamp['torch']}. Batch 1, d_state 16, float32. Time: median seconds "
        "(default malloc; up to d_inner x L = 96 x 4096, the median over 5 fresh processes of the median of 9 runs "
        "after 5 warm-up runs each, except the loop's backward: 3 runs after 1, 1 process; above that, 1 run after "
        "1); memory: peak RSS increase over "
        "the inputs, MiB (MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave the RSS), in one more process. "
        "The loop's backward (an autograd node per step) is run up to d_inner x L = 96 x 4096.",
        "",
        "| d_inner | L | fwd chunked s | fwd loop s | speed-up | fwd+bwd chunked s | fwd+bwd loop s | "
        "fwd+bwd chunked MiB | fwd+bwd loop MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d_inner in D_INNER:
        for length in LENGTHS:
            fast = index.get(("chunked", d_inner, length, "forward"), {})
            slow = index.get(("stepwise", d_inner, length, "forward"), {})
            ratio = f"{slow['seconds'] / fast['seconds']:.1f}x" if "seconds" in fast and "seconds" in slow else "-"
            lines.append(
                f"| {d_inner} | {length} | {cell('chunked', d_inner, length, 'forward', 'seconds')} | "
                f"{cell('stepwise', d_inner, length, 'forward', 'seconds')} | {ratio} | "
                f"{cell('chunked', d_inner, length, 'forward_backward', 'seconds')} | "
                f"{cell('stepwise', d_inner, length, 'forward_backward', 'seconds')} | "
                f"{cell('chunked', d_inner, length, 'forward_backward', 'mib')} | "
                f"{cell('stepwise', d_inner, length, 'forward_backward', 'mib')} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    fire.Fire({"run": run, "case": case})
