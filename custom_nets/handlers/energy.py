"""Energy and CO2 estimate of a training run, the way the SegResMamba paper reports it.

The paper used the Machine Learning CO2 Impact calculator (Lacoste et al., 2019): energy = device power (TDP)
x training time, CO2 = energy x carbon intensity of the grid; it reported an A100 PCIe at 250 W and
0.61 kgCO2eq/kWh. This is an estimate from nominal power, not a measurement of drawn power.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..io.atomic import atomic_output

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["EnergyReport", "DEFAULT_CARBON_INTENSITY", "DEFAULT_CPU_WATTS_PER_CORE", "DEFAULT_GPU_WATTS"]

# The paper's setting: ML CO2 impact calculator, A100 PCIe.
DEFAULT_GPU_WATTS = 250.0
DEFAULT_CARBON_INTENSITY = 0.61  # kgCO2eq per kWh
# A server CPU package's TDP divided by its cores is about 5-10 W (e.g. 205 W / 20 cores); 10 W per core used for
# computing keeps the estimate on the high side.
DEFAULT_CPU_WATTS_PER_CORE = 10.0

METHOD = "ML CO2 impact: energy = power x time, CO2 = energy x carbon intensity (nominal power, not measured)"


class EnergyReport:
    """Ignite handler: when training completes, print and save its energy and CO2 estimate.

    The clock starts at ``Events.STARTED`` and stops at ``Events.COMPLETED`` (wall time, validation included).
    At completion it prints one line and writes ``energy.json`` into ``output_dir``. A run that raises never
    reaches completion and writes nothing.

    Args:
        output_dir: folder for ``energy.json`` (created if missing).
        power_watts: power of the devices doing the work, in watts. ``None`` picks by device kind: CUDA
            ``DEFAULT_GPU_WATTS`` (250 W, the paper's A100 PCIe) per GPU used (1); CPU
            ``cpu_watts_per_core`` x ``cpu_cores``.
        carbon_intensity: kgCO2eq per kWh of the grid (0.61 in the paper).
        device: the training device (``"cpu"``, ``"cuda"``, ``"cuda:0"`` or a ``torch.device``); ``None`` takes
            the engine's ``state.device`` when it has one (MONAI engines do), else CUDA when available.
        cpu_watts_per_core: CPU power per core used, for the CPU default.
        cpu_cores: cores computing; ``None`` = ``torch.get_num_threads()``.
        filename: name of the JSON file.

    Example (MONAI bundle config)::

        {"_target_": "custom_nets.handlers.EnergyReport", "output_dir": "@output_dir"}
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        power_watts: float | None = None,
        carbon_intensity: float = DEFAULT_CARBON_INTENSITY,
        device: str | torch.device | None = None,
        cpu_watts_per_core: float = DEFAULT_CPU_WATTS_PER_CORE,
        cpu_cores: int | None = None,
        filename: str = "energy.json",
    ) -> None:
        if power_watts is not None and not power_watts > 0:
            raise ValueError(f"power_watts must be positive, got {power_watts}")
        if not carbon_intensity >= 0:
            raise ValueError(f"carbon_intensity must be >= 0 kgCO2eq/kWh, got {carbon_intensity}")
        if not cpu_watts_per_core > 0:
            raise ValueError(f"cpu_watts_per_core must be positive, got {cpu_watts_per_core}")
        if cpu_cores is not None and cpu_cores < 1:
            raise ValueError(f"cpu_cores must be >= 1, got {cpu_cores}")
        self.output_dir = Path(output_dir)
        self.power_watts = power_watts
        self.carbon_intensity = float(carbon_intensity)
        self.device = torch.device(device) if device is not None else None
        self.cpu_watts_per_core = float(cpu_watts_per_core)
        self.cpu_cores = cpu_cores
        self.filename = filename
        self.logger = logging.getLogger(__name__)
        self._start: float | None = None
        self._started_at: str | None = None
        self.report: dict | None = None

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        self._start = time.perf_counter()
        self._started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def _device(self, engine: Engine) -> torch.device:
        if self.device is not None:
            return self.device
        device = getattr(engine.state, "device", None)
        if device is not None:
            return torch.device(device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _power(self, device: torch.device) -> tuple[float, str]:
        """Watts and how they were chosen."""
        if self.power_watts is not None:
            watts, source = float(self.power_watts), "given"
        elif device.type == "cuda":
            watts, source = DEFAULT_GPU_WATTS, f"default for one GPU ({DEFAULT_GPU_WATTS:g} W, A100 PCIe as in the paper)"
        else:
            cores = self.cpu_cores or torch.get_num_threads()
            watts = self.cpu_watts_per_core * cores
            source = f"default for CPU: {self.cpu_watts_per_core:g} W per core x {cores} core(s)"
        # In a distributed run one rank reports for all of them: every process ran as long as this one.
        processes = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        if processes > 1:
            watts, source = watts * processes, f"{source}, x {processes} processes"
        return watts, source

    def estimate(self, seconds: float, device: torch.device) -> dict:
        """The report for ``seconds`` of work on ``device`` (no engine needed)."""
        watts, source = self._power(device)
        energy_kwh = watts * seconds / 3.6e6
        return {
            "device": str(device),
            "seconds": seconds,
            "power_watts": watts,
            "power_source": source,
            "energy_kwh": energy_kwh,
            "carbon_intensity_kg_per_kwh": self.carbon_intensity,
            "co2_kg": energy_kwh * self.carbon_intensity,
            "method": METHOD,
        }

    def completed(self, engine: Engine) -> None:
        if self._start is None:
            raise RuntimeError("EnergyReport missed Events.STARTED: attach it before running the engine")
        report = self.estimate(time.perf_counter() - self._start, self._device(engine))
        report.update(
            started=self._started_at,
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            epochs=int(engine.state.epoch),
            iterations=int(engine.state.iteration),
        )
        self.report = report
        self._write(report)
        message = (
            f"Energy estimate: {report['energy_kwh']:.4g} kWh, {report['co2_kg']:.4g} kgCO2eq "
            f"({report['power_watts']:g} W x {report['seconds']:.1f} s on {report['device']}, "
            f"{self.carbon_intensity:g} kgCO2eq/kWh) -> {self.output_dir / self.filename}"
        )
        print(message, flush=True)
        self.logger.info(message)

    def _write(self, report: dict) -> None:
        """Write the JSON whole or not at all (``atomic_output``)."""
        with atomic_output(self.output_dir / self.filename) as temporary:
            temporary.write_text(json.dumps(report, indent=2) + "\n")
