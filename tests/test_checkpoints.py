"""Checkpoints: crash-safe files (a failed save keeps the last good one), the training state a run resumes from, and
its curves."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events

from custom_nets.handlers import AtomicCheckpointSaver, AtomicDiskSaver


def test_failed_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    saver = AtomicDiskSaver(tmp_path, filename="model.pt")
    saver({"w": torch.ones(3)}, "ignored_name.pt")
    saver.remove("ignored_name.pt")  # what ignite does before it saves a better model under the same name

    def crash(obj, f, *args, **kwargs):
        with open(f, "wb") as stream:
            stream.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        saver({"w": torch.zeros(3)}, "ignored_name.pt")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], torch.ones(3))
    saver({"w": torch.zeros(3)}, "ignored_name.pt")
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], torch.zeros(3))


def test_rotating_checkpoints_delete_the_old_file_only_after_the_new_one_landed(tmp_path):
    saver = AtomicDiskSaver(tmp_path)
    saver({"w": torch.ones(1)}, "model_epoch=1.pt")
    saver.remove("model_epoch=1.pt")
    assert (tmp_path / "model_epoch=1.pt").exists()
    saver({"w": torch.ones(1)}, "model_epoch=2.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["model_epoch=2.pt"]


def test_checkpoint_saver_uses_the_atomic_disk_saver(tmp_path):
    network = torch.nn.Linear(2, 2)
    saver = AtomicCheckpointSaver(
        str(tmp_path), {"model": network}, save_key_metric=True, key_metric_filename="model.pt", save_final=True,
    )
    for checkpoint in (saver._key_metric_checkpoint, saver._final_checkpoint):
        assert isinstance(checkpoint.save_handler, AtomicDiskSaver)
    assert saver._key_metric_checkpoint.save_handler.filename == "model.pt"


def _linear_training(tmp_path, resume=False, max_epochs=2):
    """A tiny ignite trainer (Linear model, Adam, step scheduler) with a TrainingCheckpoint and TrainingCurves."""
    from ignite.engine import Engine

    from custom_nets.handlers import TrainingCheckpoint, TrainingCurves

    torch.manual_seed(0)
    network = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    data = [(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(3)]

    def step(engine, batch):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(network(batch[0]), batch[1])
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()}

    trainer = Engine(step)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: scheduler.step())
    curves = TrainingCurves(tmp_path / "eval")
    curves.attach(trainer)
    handler = TrainingCheckpoint(
        tmp_path / "models" / "checkpoint.pt",
        {"model": network, "optimizer": optimizer, "lr_scheduler": scheduler, "curves": curves}, resume=resume,
    )
    handler.attach(trainer)
    return trainer, data, network, optimizer, scheduler


def test_training_checkpoint_holds_the_whole_state_and_resumes_from_it(tmp_path):
    trainer, data, network, optimizer, scheduler = _linear_training(tmp_path)
    trainer.run(data, max_epochs=2)
    checkpoint = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert set(checkpoint) == {"model", "optimizer", "lr_scheduler", "curves", "trainer"}
    assert checkpoint["trainer"]["iteration"] == 6 and checkpoint["trainer"]["epoch_length"] == 3
    assert torch.equal(checkpoint["model"]["weight"], network.weight.detach())
    assert checkpoint["lr_scheduler"]["last_epoch"] == 2
    assert sorted(checkpoint["curves"]["loss_sums"]) == [1, 2]
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["checkpoint.pt"]  # one file, replaced

    trainer, data, network, optimizer, scheduler = _linear_training(tmp_path, resume="true", max_epochs=3)
    epochs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs.append(engine.state.epoch))
    trainer.run(data, max_epochs=3)
    assert epochs == [3]  # epochs 1 and 2 were restored, not trained again
    assert scheduler.last_epoch == 3 and optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    rows = (tmp_path / "eval" / "curves.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["epoch", "1", "2", "3"]  # the history travels with the state


def test_resume_without_checkpoint_and_bad_flags_are_refused(tmp_path):
    from custom_nets.handlers import TrainingCheckpoint, parse_flag

    with pytest.raises(FileNotFoundError, match="no training checkpoint at"):
        _linear_training(tmp_path, resume=True)
    for value, expected in ((True, True), ("false", False), ("True", True), ("0", False)):
        assert parse_flag(value, "resume") is expected
    for value in ("maybe", 2, None, ""):
        with pytest.raises(ValueError, match="resume must be true or false"):
            parse_flag(value, "resume")
    with pytest.raises(ValueError, match="must not hold 'trainer'"):
        TrainingCheckpoint(tmp_path / "c.pt", {"trainer": torch.nn.Linear(1, 1)})


def test_curves_without_matplotlib_write_the_csv_and_say_so(tmp_path, monkeypatch, caplog):
    import sys

    trainer, data, *_ = _linear_training(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with caplog.at_level("WARNING"):
        trainer.run(data, max_epochs=1)
    assert "matplotlib is not installed: no curves.png" in caplog.text
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["curves.csv"]


def test_curves_png_and_csv_hold_the_mean_loss_per_epoch(tmp_path):
    trainer, data, *_ = _linear_training(tmp_path)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: losses.append(float(engine.state.output["loss"])))
    trainer.run(data, max_epochs=2)
    rows = [row.split(",") for row in (tmp_path / "eval" / "curves.csv").read_text().splitlines()[1:]]
    assert [float(row[1]) for row in rows] == pytest.approx([sum(losses[:3]) / 3, sum(losses[3:]) / 3])
    assert all(row[2] == "nan" for row in rows)  # no validator
    assert (tmp_path / "eval" / "curves.png").read_bytes()[:4] == b"\x89PNG"
