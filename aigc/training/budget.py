"""The budget plan: how many epochs fill train.budget_minutes, replanned after every epoch.

`plan_epochs` is the whole decision: a pure function of the seconds spent and the epochs' measured
paces, so it is tested with made-up times. `Plan` is the thin Keras callback around it: it measures
each epoch, asks for a plan, moves the schedule's end there and stops training at the planned step.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras

from aigc.config import TrainConfig
from aigc.training.schedules import PlannedSchedule

PLAN = "plan.json"  # the plan and the paces measured, beside the resume backup: a resumed run keeps them
RECENT = 3  # the next epochs are assumed to take the median of this many latest ones: a load change shows
#             within two epochs, one odd epoch (a neighbour's burst) moves nothing
MIN_PART = 0.1  # a last partial epoch with less than this share of an epoch's batches is not worth its validation
SLACK = 0.1  # of an epoch, kept free: the last epoch may run this much slower than the median before the
#              budget's hard stop cuts it short of the schedule's end
PROBE_BATCHES = 8  # the first epoch is planned provisionally after this many steady batches (onecycle's warm-up)
SAVE_SECONDS = 5.0  # a kill mid-epoch loses at most this much of the budget's account
CLOCK = time.perf_counter  # what a Plan made by aigc's fit reads (seconds, monotonic): tests put a fake one here


@dataclass(frozen=True)
class Pace:
    """One epoch's seconds: `train`, its batches at the steady pace (a first batch's tracing left out), and
    `fixed`, the rest (validation, checkpoints, callbacks), which a partial epoch pays in full."""

    train: float
    fixed: float = 0.0


def plan_epochs(elapsed: float, paces: Sequence[Pace], budget: float, max_epochs: float, done: float = 0.0) -> float:
    """The epochs (a fraction past the last whole one) that end training as `budget` seconds run out.

    `elapsed` seconds have gone on `done` epochs, whose `paces` were measured. The epochs to come are
    assumed to take the median of the latest RECENT; whole ones fill what is left but SLACK of an epoch,
    then a partial one (a share of the batches, plus its whole fixed cost) fills the rest when at least
    MIN_PART of an epoch fits. So what stays unused is under SLACK + MIN_PART of an epoch plus one
    validation, whatever the pace: the plan grows when epochs speed up and shrinks when they slow down.
    Never fewer than `done`, nor more than `max_epochs`.
    """
    recent = paces[-RECENT:]
    train = max(statistics.median(pace.train for pace in recent), 1e-9)
    fixed = statistics.median(pace.fixed for pace in recent)
    left = budget - elapsed - SLACK * (train + fixed)
    whole = max(0, int(left // (train + fixed)))
    part = (left - whole * (train + fixed) - fixed) / train
    planned = done + whole + (min(part, 1.0) if part >= MIN_PART else 0.0)
    return float(min(max_epochs, max(done, planned)))


class Ends:
    """The batch ends of one pass (an epoch's training, or its validation), for its steady pace."""

    def __init__(self, start: float):
        self.start, self.first, self.last, self.count = start, start, start, 0

    def add(self, now: float) -> None:
        self.first = now if self.count == 0 else self.first  # the first batch traces: the pace is taken after it
        self.last, self.count = now, self.count + 1

    def steady(self, batches: int) -> float:
        """Seconds `batches` batches take at the pace measured after the first (or all of it, with one batch)."""
        if self.count > 1:
            return (self.last - self.first) * batches / (self.count - 1)
        return (self.last - self.start) * batches / max(self.count, 1)


class Plan(keras.callbacks.Callback):
    """Fits training into train.budget_minutes and ends a PlannedSchedule with it.

    After every epoch it measures the epoch's pace and re-plans (`plan_epochs`), moving the schedule's end
    to the planned step; training stops there, mid-epoch when the plan ends in a partial epoch (Keras
    still validates it). Should the epochs turn far slower than planned, a batch past the budget stops
    training there (and the validation of that partial epoch runs past it). The plan, the paces and the seconds spent are saved in `workdir`, so a resumed run
    keeps its plan and spends only what is left. `clock`: seconds, monotonic (default CLOCK; tests pass a fake one).
    """

    def __init__(self, train: TrainConfig, workdir: Path, images_per_epoch: int, steps_per_epoch: int,
                 schedule: PlannedSchedule | None, clock: Callable[[], float] | None = None):
        super().__init__()
        self.budget = train.budget_minutes * 60 if train.budget_minutes else None
        self.max_epochs, self.warmup_epochs = train.epochs, train.warmup_epochs
        self.images, self.steps, self.schedule, self.clock = images_per_epoch, steps_per_epoch, schedule, clock or CLOCK
        self.path = Path(workdir) / PLAN
        self.plan = json.loads(self.path.read_text()) if self.path.is_file() else {"seconds_used": 0.0, "paces": []}

    @property
    def planned_steps(self) -> int:
        """The step training ends at."""
        return round(self.plan.get("planned_epochs", self.max_epochs) * self.steps)

    def _shape(self) -> None:
        """Move the schedule's end (and a onecycle's warm-up) to the planned step."""
        if self.schedule is not None:
            total = self.planned_steps
            warmup = self.warmup_epochs * self.steps if self.warmup_epochs else (
                0.3 * total if self.schedule.kind == "onecycle" else 0)
            self.schedule.set(total, int(warmup))

    def _replan(self, now: float, done: float, paces: list[Pace], provisional: bool = False) -> None:
        before = self.planned_steps if "planned_epochs" in self.plan else None
        shown = self.plan.get("shown_epochs")
        planned = plan_epochs(now - self.started, paces, self.budget, self.max_epochs, done)
        planned = int(planned * self.steps + 1e-6) / self.steps  # whole steps, rounded down: a part never runs over
        self.plan.update(planned_epochs=planned, images_per_second=self.images / paces[-1].train)
        if before is not None and self.planned_steps != before:
            self.plan["replans"] = self.plan.get("replans", 0) + 1
        self._shape()
        if not provisional and (shown is None or abs(planned - shown) >= 1):  # as it is made, and big moves
            self.plan["shown_epochs"] = planned
            print(f"aigc: budget {self.budget / 60:g} min: {self.plan['images_per_second']:.0f} images/s, "
                  f"{paces[-1].train + paces[-1].fixed:.1f} s an epoch -> {planned:.1f} epochs "
                  f"({now - self.started:.0f} s used)", flush=True)

    def on_train_begin(self, logs=None):
        self.saved = self.clock()
        self.started = self.saved - self.plan["seconds_used"]  # a resumed run has spent some already
        self.last_end = None  # this process's previous epoch end: from the second epoch on, paces run end to end
        self._shape()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = self.clock()
        self.first_step = int(self.model.optimizer.iterations.numpy())
        self.train_ends, self.test_ends = Ends(self.epoch_start), Ends(self.epoch_start)

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        self.train_ends.add(now)
        if not self.budget:
            return
        if batch == PROBE_BATCHES and not self.plan["paces"]:  # a fresh run: plan the first epoch as it goes
            self._replan(now, 0.0, [Pace(self.train_ends.steady(self.steps))], provisional=True)
        if self.first_step + batch + 1 >= self.planned_steps:
            self.model.stop_training = True  # the plan's end, mid-epoch where it ends in a partial epoch
        elif now - self.started > self.budget:  # far slower than planned: the budget wins, and fit still
            self.model.stop_training = True  # validates this partial epoch (past the budget by that much)
            self.plan["stopped_by_budget"] = True
        if now - self.saved > SAVE_SECONDS:
            self.plan["seconds_used"] = now - self.started
            self._save(now)

    def on_test_begin(self, logs=None):
        self.test_ends = Ends(self.clock())

    def on_test_batch_end(self, batch, logs=None):
        self.test_ends.add(self.clock())

    def on_epoch_end(self, epoch, logs=None):
        now = self.clock()
        ran = int(self.model.optimizer.iterations.numpy()) - self.first_step
        if ran and not self.model.stop_training:
            self.steps = ran  # a whole epoch's batches (known before only where the dataset's cardinality is)
        train = self.train_ends.steady(self.steps)
        if self.last_end is None:  # this process's first epoch traced: its validation at the steady pace
            fixed = self.test_ends.steady(self.test_ends.count) if self.test_ends.count else 0.0
        else:  # end to end: validation, checkpoints and callbacks between the epochs all count
            fixed = max(0.0, now - self.last_end - train * ran / self.steps)
        self.last_end = now
        self.plan["paces"].append([train, fixed])
        done = (self.first_step + ran) / self.steps
        self.plan.update(seconds_used=now - self.started, actual_epochs=done)
        if self.budget:
            ended = "planned_epochs" in self.plan and self.first_step + ran >= self.planned_steps  # its last epoch ran
            if not ended and not self.plan.get("stopped_by_budget"):
                self._replan(now, done, [Pace(*pace) for pace in self.plan["paces"]])
            if self.first_step + ran >= self.planned_steps:
                self.model.stop_training = True
        self._save(now)

    def _save(self, now: float) -> None:
        temporary = self.path.with_name(f".tmp-{self.path.name}")
        temporary.write_text(json.dumps(self.plan))
        os.replace(temporary, self.path)
        self.saved = now


def budget_record(workdir: Path) -> tuple[dict, dict]:
    """(metrics, tags) saying what a budgeted fit planned and did; empty when it had no budget."""
    path = Path(workdir) / PLAN
    plan = json.loads(path.read_text()) if path.is_file() else {}
    if "planned_epochs" not in plan:
        return {}, {}
    metrics = {"budget_planned_epochs": plan["planned_epochs"], "budget_actual_epochs": plan["actual_epochs"],
               "budget_replans": plan.get("replans", 0), "budget_images_per_second": plan["images_per_second"],
               "budget_seconds_used": plan["seconds_used"]}
    return metrics, {"aigc.budget_stopped_by_budget": str(bool(plan.get("stopped_by_budget"))).lower()}
