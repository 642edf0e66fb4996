"""One measurement each: a training step, a sliding-window inference, one inference window, or saved-tensor bytes
per module.

Every function builds its network, measures, and returns a flat record (a dict that JSON can hold). Errors are
turned into records by ``run_case``: ``status`` is ``"ok"``, ``"oom"`` (out of memory), ``"unavailable"``
(the CUDA scan kernel is not installed) or ``"error"``.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import statistics
import time
import traceback
from collections import defaultdict

import torch
import torch.nn as nn

from custom_nets.handlers import StepInBackward

from .memory import CpuPeakMeter, peak_meter, rss_bytes
from .profile import forward_seconds_per_module, part_of, rss_peaks_per_phase, saved_tensor_bytes_per_module
from .zoo import MAMBA_NETWORKS, TASKS, Task, build_network, count_parameters

__all__ = ["KINDS", "measure_infer", "measure_modules", "measure_train", "measure_window", "run_case", "sliding_windows"]

KINDS = ("train", "infer", "window", "modules")
LEARNING_RATE = 1e-4  # the paper's Adam learning rate for every dataset


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: bool):
    # AMP is float16 autocast on CUDA, as MONAI's trainers do with amp=True; CPU runs in float32.
    return torch.autocast("cuda", dtype=torch.float16) if amp and device.type == "cuda" else contextlib.nullcontext()


def _batch(task: Task, patch: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image and a label of the task's kind: class indices (softmax tasks) or region masks (BraTS)."""
    generator = torch.Generator().manual_seed(seed)
    size = (patch,) * 3
    image = torch.randn(1, task.in_channels, *size, generator=generator)
    if task.sigmoid:
        label = (torch.rand(1, task.out_channels, *size, generator=generator) > 0.5).float()
    else:
        label = torch.randint(0, task.out_channels, (1, 1, *size), generator=generator).float()
    return image.to(device), label.to(device)


def _loss(task: Task) -> nn.Module:
    """The losses of the Model Zoo bundles: DiceCE with softmax (spleen, BTCV), squared Dice with sigmoid (BraTS)."""
    from monai.losses import DiceCELoss, DiceLoss

    if task.sigmoid:
        return DiceLoss(smooth_nr=0, smooth_dr=1e-5, squared_pred=True, to_onehot_y=False, sigmoid=True)
    return DiceCELoss(to_onehot_y=True, softmax=True)


def _record(kind: str, network: str, task: Task, device: torch.device, scan_backend: str, amp: bool, **fields):
    return {
        "kind": kind,
        "network": network,
        "scan_backend": scan_backend if network in MAMBA_NETWORKS else None,
        "task": task.name,
        "in_channels": task.in_channels,
        "out_channels": task.out_channels,
        "device": device.type,
        "amp": bool(amp and device.type == "cuda"),
        "threads": torch.get_num_threads(),
        **fields,
    }


def measure_train(
    network: str,
    task: str = "spleen",
    patch: int | None = None,
    device: str = "cpu",
    scan_backend: str = "torch",
    repeats: int = 3,
    amp: bool = True,
    seed: int = 0,
    phases: bool = False,
    step_in_backward: bool = False,
) -> dict:
    """Peak memory and median time of one training step: forward, loss, backward, Adam step; batch 1.

    One warm-up step runs first (Adam allocates its state there, cuDNN picks its algorithms), then gradients
    are released and the meter starts: the figure covers ``repeats`` steps. On CPU it excludes the weights, the
    Adam state and the batch (all in the RSS before the steps); on CUDA it is everything allocated.
    ``phases`` (CPU, ``repeats`` 1): the peak of each phase of the step as well (``forward and loss``,
    ``backward``, ``optimizer step``; ``profile.rss_peaks_per_phase``), whose largest is the step's peak.
    ``step_in_backward``: Adam's update runs inside the backward pass, one parameter at a time
    (``custom_nets.handlers.StepInBackward``, what the bundles do without AMP), so the ``backward`` phase includes it.
    """
    if phases and (torch.device(device).type != "cpu" or repeats != 1):
        raise ValueError("phases are measured on CPU over one step (repeats=1)")
    spec, device = TASKS[task], torch.device(device)
    patch = patch or spec.patch
    torch.manual_seed(seed)
    net = build_network(network, spec, patch, scan_backend).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    loss_function = _loss(spec)
    image, label = _batch(spec, patch, device, seed)
    scaler = torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None
    if step_in_backward and scaler is not None:
        raise ValueError("step_in_backward cannot run beside AMP's GradScaler: measure it with amp off")
    in_backward = StepInBackward(optimizer, enabled=step_in_backward)
    in_backward.start()

    def step(mark=lambda phase: None) -> None:
        with _autocast(device, amp):
            loss = loss_function(net(image), label)
        mark("forward and loss")
        if scaler is None:
            loss.backward()
            mark("backward")
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            mark("backward")
            scaler.step(optimizer)
            scaler.update()
        mark("optimizer step")
        optimizer.zero_grad(set_to_none=True)

    step()
    extra = {}
    if phases:
        baseline, start = rss_bytes(), time.perf_counter()
        per_phase = rss_peaks_per_phase(net, step, depth=0)
        times = [time.perf_counter() - start]
        peak, measure = max(p["peak"] for p in per_phase), CpuPeakMeter.measure
        extra["phases"] = {p["phase"]: p["peak"] for p in per_phase if p["phase"] != "step end"}
    else:
        meter = peak_meter(device)
        meter.start()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - start)
        peak, measure, baseline = meter.stop(), meter.measure, meter.baseline
    in_backward.stop()
    return _record(
        "train", network, spec, device, scan_backend, amp, patch=patch, parameters=count_parameters(net),
        **({"step_in_backward": True} if step_in_backward else {}),
        peak_bytes=peak, peak_measure=measure, baseline_bytes=baseline,
        time_s=statistics.median(times), times_s=times, repeats=repeats, **extra,
    )


def sliding_windows(shape, roi: int, overlap: float) -> int:
    """Number of windows MONAI's sliding-window inference runs over ``shape``."""
    step = max(1, int(roi * (1 - overlap)))
    return math.prod(1 if n <= roi else math.ceil((n - roi) / step) + 1 for n in shape)


@functools.lru_cache(maxsize=2)
def _load_ct_once(path: str, crop: int | None) -> torch.Tensor:
    """The preprocessed CT, read once per process (CUDA runs every inference case in one process)."""
    from .ct import load_ct

    return load_ct(path, crop=crop)


def measure_infer(
    network: str,
    device: str = "cpu",
    scan_backend: str = "torch",
    ct: str | None = None,
    crop: int | None = None,
    roi: int = 96,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    repeats: int = 1,
    amp: bool = True,
) -> dict:
    """Peak memory and median time of sliding-window inference over the shipped CT (spleen task, 1 -> 2).

    The CT is preprocessed like the spleen bundle (``benchmarks.ct.load_ct``); windows ``roi``^3, ``overlap``
    and ``sw_batch_size`` as the bundle's evaluator. One forward on a single window warms up first.
    """
    from monai.inferers import sliding_window_inference

    from .ct import DEFAULT_CT

    spec, device = TASKS["spleen"], torch.device(device)
    volume = _load_ct_once(str(ct or DEFAULT_CT), crop)
    net = build_network(network, spec, roi, scan_backend).to(device).eval()
    image = volume.to(device)
    with torch.no_grad(), _autocast(device, amp):
        net(torch.zeros(1, spec.in_channels, roi, roi, roi, device=device))
    meter = peak_meter(device)
    meter.start()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad(), _autocast(device, amp):
            output = sliding_window_inference(image, (roi,) * 3, sw_batch_size, net, overlap=overlap)
        _sync(device)
        times.append(time.perf_counter() - start)
        del output
    peak = meter.stop()
    shape = list(volume.shape[2:])
    return _record(
        "infer", network, spec, device, scan_backend, amp, volume_shape=shape, cropped=crop is not None,
        roi=roi, overlap=overlap, sw_batch_size=sw_batch_size, windows=sliding_windows(shape, roi, overlap),
        parameters=count_parameters(net), peak_bytes=peak, peak_measure=meter.measure,
        baseline_bytes=meter.baseline, time_s=statistics.median(times), times_s=times, repeats=repeats,
    )


def measure_window(
    network: str,
    task: str = "spleen",
    device: str = "cpu",
    scan_backend: str = "torch",
    patch: int = 96,
    repeats: int = 2,
    amp: bool = True,
    seed: int = 0,
) -> dict:
    """Peak memory and median time of the forward pass over one ``patch``^3 window without gradients (batch 1, the
    task's channels): the unit of the bundles' sliding-window inference. One warm-up pass runs first."""
    spec, device = TASKS[task], torch.device(device)
    torch.manual_seed(seed)
    net = build_network(network, spec, patch, scan_backend).to(device).eval()
    image = torch.randn(1, spec.in_channels, patch, patch, patch, generator=torch.Generator().manual_seed(seed))
    image = image.to(device)

    def forward() -> None:
        with torch.no_grad(), _autocast(device, amp):
            net(image)
        _sync(device)

    forward()
    meter = peak_meter(device)
    meter.start()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    peak = meter.stop()
    return _record(
        "window", network, spec, device, scan_backend, amp, patch=patch, parameters=count_parameters(net),
        peak_bytes=peak, peak_measure=meter.measure, baseline_bytes=meter.baseline,
        time_s=statistics.median(times), times_s=times, repeats=repeats,
    )


def measure_modules(
    network: str = "segresmamba",
    task: str = "spleen",
    patch: int | None = None,
    device: str = "cpu",
    scan_backend: str = "torch",
    depth: int = 3,
    amp: bool = True,
    seed: int = 0,
) -> dict:
    """Where training memory and forward time go: bytes saved for backward per module (forward and loss of one
    training step), exclusive forward time per module (a second forward, without gradients kept), and
    parameters per top-level part."""
    spec, device = TASKS[task], torch.device(device)
    patch = patch or spec.patch
    torch.manual_seed(seed)
    net = build_network(network, spec, patch, scan_backend).to(device).train()
    loss_function = _loss(spec)
    image, label = _batch(spec, patch, device, seed)

    def forward() -> torch.Tensor:
        with _autocast(device, amp):
            return loss_function(net(image), label)

    saved = saved_tensor_bytes_per_module(net, forward, depth=depth)
    with torch.no_grad():
        forward()  # warm-up
        seconds = forward_seconds_per_module(net, forward, depth=depth, device=device)
    parameters: dict[str, int] = defaultdict(int)
    for name, parameter in net.named_parameters():
        parameters[part_of(name)] += parameter.numel()
    return _record(
        "modules", network, spec, device, scan_backend, amp, patch=patch, depth=depth,
        parameters=count_parameters(net), saved_bytes=saved, saved_total_bytes=sum(saved.values()),
        forward_seconds=seconds, forward_total_s=sum(seconds.values()), parameters_per_part=dict(parameters),
    )


MEASURES = {"train": measure_train, "infer": measure_infer, "window": measure_window, "modules": measure_modules}


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def run_case(case: dict, device: str) -> dict:
    """Run one case (``{"kind": ..., "network": ..., **arguments}``) and return its record, failures included."""
    arguments = {key: value for key, value in case.items() if key != "kind"}
    try:
        record = MEASURES[case["kind"]](device=device, **arguments)
        record["status"] = "ok"
        return record
    except Exception as error:  # a failed case is a result too: recorded, and the run goes on
        if _is_oom(error):
            status = "oom"
        elif "scan backend 'cuda'" in str(error):
            status = "unavailable"
        else:
            status = "error"
        message = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        record = {"task": "spleen", **case, "device": torch.device(device).type, "status": status, "error": message}
        if case.get("network") not in MAMBA_NETWORKS:
            record["scan_backend"] = None
        if status == "error":
            record["traceback"] = traceback.format_exc()[-2000:]
        return record
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
