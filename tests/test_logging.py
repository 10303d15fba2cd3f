"""mpc_policy.agents.train.logging: a resumed run's tensorboard curve keeps every epoch, however
quickly it resumes (tensorboard reads event files in name order, and the names' counter does
not sort as a number)."""

from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from mpc_policy.agents.train.logging import TrainingLog


def _next_file_counter(folder) -> int:
    """The process-wide counter that the next event file's name will end with."""
    SummaryWriter(str(folder)).close()
    newest = max(folder.iterdir(), key=lambda path: int(path.name.rsplit(".", 1)[1]))
    return int(newest.name.rsplit(".", 1)[1]) + 1


def test_a_quick_resume_keeps_every_epoch(tmp_path):
    # bring the counter to 10^k - 1, so the two runs' files end in ".9" and ".10" (or
    # ".99" and ".100"), which sort the wrong way round
    counter = _next_file_counter(tmp_path / "other")
    target = 10 ** len(str(counter + 1)) - 1
    for i in range(target - counter):
        SummaryWriter(str(tmp_path / "other" / str(i))).close()
    run = tmp_path / "run"
    log = TrainingLog(run, progress=False)
    log.start(first_epoch=0, total_epochs=3)
    for epoch in (0, 1):
        log.scalars(epoch, {"loss/val": 1.0 / (epoch + 1)})
    log.close()
    log = TrainingLog(run, progress=False)
    log.start(first_epoch=2, total_epochs=3)
    log.scalars(2, {"loss/val": 0.3})
    log.close()
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0})
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("loss/val")] == [0, 1, 2]
