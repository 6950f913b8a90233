"""A run's plan, computed once from its config and its number of training rows: how long it is, its stages, its
learning-rate schedule, when it evaluates, which rows measure memorization. The loop follows it and the cost
estimate (``make estimate``) counts it, so the two cannot disagree about a run's length or eval cadence."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sora.data.glue import SELECT_SEED
from sora.optim import SchedulePlan, schedule_plan
from sora.train.sparsify import Stage, stage_plan

MEMORIZATION_ROWS = 1000  # the fixed shuffled train subset the scheduler measures memorization on


@dataclass(frozen=True)
class RunPlan:
    steps_per_epoch: int
    total_steps: int  # the dense phase
    eval_every: int   # the dense phase's cadence (each stage: min(eval_every, its length))
    stages: list      # [dense stage, sparsifying stages...]
    schedule: SchedulePlan  # the dense phase's

    @property
    def end(self) -> int:
        return self.stages[-1].end

    @property
    def sparsifying(self) -> bool:
        return len(self.stages) > 1

    def is_eval_step(self, stage: Stage, step: int) -> bool:
        """The loop evaluates after ``step`` (1-based count of steps done) every ``min(eval_every, stage
        length)`` steps of a stage and at its end."""
        every = min(self.eval_every, stage.end - stage.start)
        return (step - stage.start) % every == 0 or step == stage.end

    def n_evals(self) -> int:
        """Evaluation points of the whole run: the cadence above, plus once on entering the first sparsifying
        stage (the curve's 100% / 100% point)."""
        n = 1 if self.sparsifying else 0
        for stage in self.stages:
            length = stage.end - stage.start
            if length > 0:
                every = min(self.eval_every, length)
                n += length // every + (1 if length % every else 0)
        return n


def run_length(train_cfg, n_train: int) -> tuple[int, int]:
    """(steps per epoch, optimizer steps of the dense phase): epochs x ceil(n / bsz), as the Trainer loops."""
    steps_per_epoch = math.ceil(n_train / train_cfg.batch_size)
    total = train_cfg.max_steps if train_cfg.max_steps > 0 else math.ceil(steps_per_epoch * train_cfg.epochs)
    return steps_per_epoch, total


def run_schedule(train_cfg, run_steps: int, n_train: int) -> SchedulePlan:
    return schedule_plan(train_cfg.get("schedule", "standard"), train_cfg.warmup, run_steps, n_train,
                         train_cfg.batch_size, train_cfg.epochs)


def run_plan(cfg, n_train: int) -> RunPlan:
    steps_per_epoch, total = run_length(cfg.train, n_train)
    every = cfg.train.eval_steps if cfg.train.eval_steps > 0 else steps_per_epoch
    return RunPlan(steps_per_epoch=steps_per_epoch, total_steps=total, eval_every=min(every, total),
                   stages=stage_plan(cfg.get("scheduler"), total, steps_per_epoch),
                   schedule=run_schedule(cfg.train, total, n_train))


def memorization_rows(n: int) -> np.ndarray:
    """The release's memorization subset, ``train.shuffle(seed=42).select(range(1000))`` (``run_glue.py:664``):
    ``datasets`` shuffles with ``np.random.default_rng(seed).permutation(n)``."""
    return np.random.default_rng(SELECT_SEED).permutation(n)[:MEMORIZATION_ROWS]
