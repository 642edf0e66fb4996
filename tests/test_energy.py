"""custom_nets.handlers.EnergyReport: the energy and CO2 estimate every bundle training run ends with (device power x
time x carbon intensity), written to energy.json whole or not at all."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn


def run_engine(handler, epochs=2, fail=False):
    from ignite.engine import Engine

    def step(engine, batch):
        if fail:
            raise RuntimeError("training broke")
        return batch

    engine = Engine(step)
    handler.attach(engine)
    engine.run([1, 2, 3], max_epochs=epochs)
    return engine


def test_energy_report_writes_json(tmp_path, capsys):
    from custom_nets.handlers import EnergyReport

    handler = EnergyReport(tmp_path / "run", device="cpu", cpu_watts_per_core=12.5, cpu_cores=2)
    run_engine(handler)
    report = json.loads((tmp_path / "run" / "energy.json").read_text())
    assert report["power_watts"] == 25.0 and report["iterations"] == 6 and report["epochs"] == 2
    assert report["energy_kwh"] == pytest.approx(25.0 * report["seconds"] / 3.6e6, rel=1e-3, abs=1e-12)
    assert report["co2_kg"] == pytest.approx(report["energy_kwh"] * 0.61)
    assert "Energy estimate" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["energy.json"]


def test_energy_report_defaults_and_arguments(tmp_path):
    from custom_nets.handlers import EnergyReport
    from custom_nets.handlers.energy import DEFAULT_GPU_WATTS

    gpu = EnergyReport(tmp_path).estimate(3600.0, torch.device("cuda"))
    assert gpu["power_watts"] == DEFAULT_GPU_WATTS == 250.0
    assert gpu["energy_kwh"] == pytest.approx(0.25) and gpu["co2_kg"] == pytest.approx(0.25 * 0.61)
    given = EnergyReport(tmp_path, power_watts=400, carbon_intensity=0.2).estimate(1800.0, torch.device("cpu"))
    assert given["energy_kwh"] == pytest.approx(0.2) and given["co2_kg"] == pytest.approx(0.04)
    for bad in ({"power_watts": 0}, {"carbon_intensity": -1}, {"cpu_cores": 0}, {"cpu_watts_per_core": -5}):
        with pytest.raises(ValueError):
            EnergyReport(tmp_path, **bad)


def test_energy_report_nothing_on_failure(tmp_path):
    from custom_nets.handlers import EnergyReport

    with pytest.raises(RuntimeError, match="training broke"):
        run_engine(EnergyReport(tmp_path / "run", device="cpu"), fail=True)
    assert not (tmp_path / "run").exists()


def test_energy_report_in_monai_trainer(tmp_path):
    from monai.engines import SupervisedTrainer

    from custom_nets.handlers import EnergyReport

    network = nn.Conv3d(1, 2, 1)
    data = [{"image": torch.randn(1, 1, 4, 4, 4), "label": torch.randn(1, 2, 4, 4, 4)} for _ in range(2)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1), loss_function=nn.MSELoss(),
        train_handlers=[EnergyReport(tmp_path, cpu_cores=1)],
    )
    trainer.run()
    report = json.loads((tmp_path / "energy.json").read_text())
    assert report["device"] == "cpu" and report["power_watts"] == 10.0 and report["iterations"] == 2
