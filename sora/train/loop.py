"""One GLUE run, start to finish: data -> model -> the step loop -> best checkpoint -> record + adapter.

The step order lives in one place, ``sora.train.step.train_step``; this module is the run around it:
setup, the stage/step loop (``_Training.stages``), evaluation and best checkpoint, resume, the record.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import random
import resource
import shutil
import signal
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from sora.attention import set_attention
from sora.data.batching import encode, length_buckets, train_batches
from sora.data.glue import data_fingerprint, protocol_splits
from sora.data.prefetch import ahead
from sora.data.tasks import get_task
from sora.device import autocast_factory, device_facts, resolve_device, resolve_precision, slow_bf16
from sora.errors import UserError
from sora.models import load_model, load_tokenizer
from sora.optim import group_lrs, schedule_plan
from sora.rank_patterns import sora_rank_pattern
from sora.records import (
    CorruptRecord,
    RunLock,
    atomic_write_text,
    finished_equivalent,
    git_state,
    identity,
    json_line,
    package_versions,
    read_record,
    run_id,
    write_record,
)
from sora.tracking import make_tracker, ranks_by_matrix
from sora.train.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint
from sora.train.compiled import CompiledForward, capturable_tail, compile_mode, tail_captured
from sora.train.evaluate import evaluate
from sora.train.interrupt import Interrupts, interruptible
from sora.train.plan import RunPlan, memorization_rows, run_plan
from sora.train.sparsify import Stage, normalise_curve
from sora.train.step import make_optimizer_and_schedule, optimizer_kind, optimizer_tail, train_step
from sora.tuners.methods import METHODS, Batches, build_method, count_params
from sora.validate import validate_run_config

log = logging.getLogger("sora")


class NonFiniteLoss(Exception):
    pass


def validate_config(cfg) -> None:
    """Kept for callers of the old name: every value is checked in ``sora.validate``."""
    validate_run_config(cfg)


@interruptible  # USR2/SIGTERM are the run's from here: none loses it (sora/train/interrupt.py)
def train(cfg) -> dict | None:
    """Run (or resume, or skip) the run this config names; return its record (None if another process has it)."""
    validate_config(cfg)
    task = get_task(cfg.task.name)
    fingerprint = data_fingerprint(task, cfg.data.dir, cfg.data.get("revision"))
    rid = run_id(cfg, fingerprint)
    run_dir = Path(cfg.results_dir) / "records" / rid
    _check_writable(Path(cfg.results_dir))
    with RunLock(run_dir) as lock:
        if not lock.acquired:
            print(f"[sora] {rid}: another process is running this config; skipping")
            return None
        record_path = run_dir / "record.json"
        if record_path.exists():
            try:
                existing = read_record(record_path)
            except CorruptRecord as exc:
                raise UserError(f"existing record is corrupt: {exc}; move it away to re-run this config") from None
            if existing.get("status") == "finished":
                print(f"[sora] {rid}: finished record exists at {record_path}; not overwriting")
                return existing
        elif (twin := finished_equivalent(cfg.results_dir, cfg, fingerprint)) is not None:
            print(f"[sora] {rid}: this configuration and seed finished as {twin.parent.name}; not re-running")
            return read_record(twin)
        handler = _log_to(run_dir / "log.txt")
        # one line that names the run: a Slurm task's own log file says which run it was
        print(f"[sora] {rid}: training (log {run_dir / 'log.txt'}; slurm job {slurm_job() or '-'})", flush=True)
        tracker = make_tracker(cfg, rid, run_dir)
        record = None
        try:
            record = _run(cfg, task, rid, run_dir, record_path, tracker, fingerprint)
            return record
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            ckpt = read_checkpoint(run_dir / "checkpoint", rid)
            where = f"step {ckpt['state']['step']}" if ckpt else "the start (no checkpoint yet)"
            raise UserError(f"disk full under {cfg.results_dir} ({exc.strerror}); the last checkpoint is intact: "
                            f"free space and re-run the same command to resume from {where}") from None
        finally:
            # always finish the tracker's run, also on failure, so a multirun in one process keeps going
            tracker.finish(summary=(record or {}).get("best"), failed=record is None)
            logging.getLogger("sora").removeHandler(handler)
            handler.close()


@dataclass
class Setup:
    """Everything a run builds before its first step."""

    data: dict
    pad_id: int
    pad_to: int | tuple[int, ...] | None  # one width (data.pad_to_max_len), length buckets, or the longest row
    plan: RunPlan  # length, stages, schedule, eval cadence (sora.train.plan: the cost estimate reads it too)


def _run(cfg, task, rid: str, run_dir: Path, record_path: Path, tracker, fingerprint: str) -> dict:
    t0 = time.time()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    device = resolve_device(cfg.device)
    _seed_everything(cfg.seed)
    if device.type == "cuda" and cfg.train.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    precision = resolve_precision(cfg.train.precision, device)
    autocast = autocast_factory(precision, device)
    log.info("run %s on %s, precision %s", rid, device, precision)
    if (why := slow_bf16(precision, device)) is not None:
        log.warning("%s", why)
        print(f"[sora] {rid}: warning: {why}", flush=True)

    setup = _prepare(cfg, task)
    extra = {}
    if cfg.method.get("rank_pattern_from"):  # the LoRA control with the ranks a SoRA run kept
        extra["rank_pattern"] = sora_rank_pattern(cfg, fingerprint)
    base = load_model(cfg.model, task.num_labels, cfg.seed)
    base = set_attention(base, cfg.train.get("attention", "eager"), device)
    _set_head_dropout(base, cfg.train.get("cls_dropout"))
    method = build_method(base, cfg.method, setup.plan.total_steps, **extra)
    model = method.model.to(device)
    hidden = model.base_model.model.config.hidden_size
    for warning in method.config_warnings(cfg):
        log.warning("%s", warning)
        print(f"[sora] {rid}: warning: {warning}", flush=True)
    if method.data_batches:  # a data-driven init (EVA), before the optimizer sees the parameters
        method.init_from_data(Batches(_first_batches(cfg, setup), device, method.data_batches, drop=("labels",)))

    state = {"step": 0, "stage": 0, "evals": [], "best": None, "best_weights": None, "elapsed": 0.0, "curve_raw": [],
             "trace": []}
    if (values := method.trace_point()) is not None:  # the init, before any step (SoRA: the gates)
        state["trace"].append({"step": 0, "values": values})
    payload = read_checkpoint(run_dir / "checkpoint", rid)
    write_progress(run_dir, payload["state"]["step"] if payload else 0, setup.plan.end)
    stage_now = setup.plan.stages[payload["state"].get("stage", 0)] if payload else setup.plan.stages[0]
    optimizer, scheduler = _optimizer_for(cfg, method, device, setup, stage_now)
    if payload:
        state = restore_checkpoint(payload, model, optimizer, scheduler, method, run_dir / "checkpoint")
        log.info("resumed %s at step %d (stage %d)", rid, state["step"], state.get("stage", 0))
    # evaluations after the checkpoint (all of them, with none) are replayed: drop their lines, each step once
    _rewrite_jsonl(run_dir / "metrics.jsonl", state["evals"])
    if stage_now.xi is not None:
        method.config.xi = stage_now.xi

    run = _Training(cfg, task, rid, run_dir, setup, method, model, device, autocast, tracker, state, t0)
    with run.interrupts:  # up to the record: a signal after the last step is noted and the run finishes instead
        try:
            run.stages(optimizer, scheduler)
        except NonFiniteLoss as exc:
            run.progress.close()
            write_record(record_path, _record(cfg, task, rid, fingerprint, state, None, None, time.time() - t0,
                                              status="failed", error=str(exc)))
            raise UserError(f"{exc}; the record is marked failed at {record_path}; lower train.lr or use "
                            f"train.precision=fp32") from None
        run.progress.close()
        if state["best"] is None:
            why = f"the selection metric {task.select_metric} was NaN at every evaluation (constant predictions?)"
            write_record(record_path, _record(cfg, task, rid, fingerprint, state, None, None, time.time() - t0,
                                              status="failed", error=why))
            raise UserError(f"{why}; the record is marked failed at {record_path}; try another train.lr or more "
                            f"steps")
        return _finish(cfg, task, rid, fingerprint, run_dir, record_path, setup, method, model, device, hidden,
                       tracker, state, t0)


def _epoch_order(cfg, setup: Setup, epoch: int) -> list:
    """One epoch's batches of training rows, as ``sora.data.batching.train_batches`` orders them for this run."""
    train_set = setup.data["train"]
    return train_batches(len(train_set), train_set.lengths, cfg.train.batch_size, cfg.seed, epoch,
                         cfg.data.group_by_length)


def _first_batches(cfg, setup: Setup):
    """The first epoch's training batches in the order training will see them."""
    for idx in _epoch_order(cfg, setup, 0):
        yield setup.data["train"].batch(idx, setup.pad_id, setup.pad_to)


def _prepare(cfg, task) -> Setup:
    tokenizer = load_tokenizer(cfg.model)
    splits = protocol_splits(task, cfg.data.dir, cfg.eval.protocol, cfg.data.get("revision"))
    cache = cfg.data.get("cache_dir")
    encoded = {}  # best_on_dev selects and reports on the same dev rows: encoded (and evaluated) once
    for df in splits.values():
        if id(df) not in encoded:
            encoded[id(df)] = encode(df, task, tokenizer, cfg.data.max_len, cache)
    data = {name: encoded[id(df)] for name, df in splits.items()}
    plan = run_plan(cfg, len(data["train"]))
    if plan.sparsifying:
        _check_scheduler(cfg)
        rows = memorization_rows(len(splits["train"]))
        data["memorization"] = encode(splits["train"].iloc[rows].reset_index(drop=True), task, tokenizer,
                                      cfg.data.max_len, cache)
    pad_to = cfg.data.max_len if cfg.data.pad_to_max_len else length_buckets(cfg.data.max_len,
                                                                               cfg.data.get("pad_buckets", 0))
    return Setup(data=data, pad_id=tokenizer.pad_token_id, pad_to=pad_to, plan=plan)


def _optimizer_for(cfg, method, device, setup: Setup, stage: Stage):
    """Dense phase (and every shrink_only stage): one optimizer and one schedule over the dense steps, so
    shrink_only stages run at lr 0 exactly as released. retrain: a fresh optimizer and schedule per stage."""
    capturable = tail_captured(cfg.train.get("compile", "off"), method)
    plan = setup.plan.schedule
    if stage.index > 0 and cfg.scheduler.mode == "retrain":
        plan = schedule_plan("standard", cfg.train.warmup, stage.end - stage.start, 0, 1, 1)
    return make_optimizer_and_schedule(method, cfg.train, device, plan, cfg.method, capturable)


class _Training:
    """The stage and step loop of one run, with evaluation, best-checkpoint and resume bookkeeping."""

    def __init__(self, cfg, task, rid, run_dir, setup, method, model, device, autocast, tracker, state, t0):
        self.cfg, self.task, self.rid, self.run_dir, self.setup = cfg, task, rid, run_dir, setup
        self.method, self.model, self.device, self.autocast, self.tracker = method, model, device, autocast, tracker
        self.state, self.t0 = state, t0
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.compiled = CompiledForward(model, cfg.train.get("compile", "off"), bucketed=setup.pad_to is not None)
        self.tail = capturable_tail(optimizer_tail) if tail_captured(self.compiled.mode, method) else None
        self.sparsify = setup.plan.sparsifying
        self.step = state["step"]
        self.progress = _progress(setup.plan.end, self.step, enabled=cfg.progress, desc=rid)
        # the loss window since the last log line (restored on resume so logged means match an uninterrupted run)
        self.running_loss = torch.tensor(state.get("running_loss", 0.0), device=device)
        self.running_n = state.get("running_n", 0)
        self.interrupts = Interrupts()
        self.last_save = time.monotonic()
        self.clock = time.perf_counter()  # training-only time: evaluations and checkpoints are off it

    def stages(self, optimizer, scheduler) -> None:
        cfg, state, train_set = self.cfg, self.state, self.setup.data["train"]
        for stage in self.setup.plan.stages:
            if stage.index < state["stage"] or self.step >= stage.end:
                continue
            if stage.index > state["stage"]:  # entering a stage (a resumed run may already be inside it)
                optimizer, scheduler = self._off_the_clock(self._enter, stage, optimizer, scheduler)
            while self.step < stage.end:
                epoch, offset = divmod(self.step, self.setup.plan.steps_per_epoch)
                host = (train_set.batch(idx, self.setup.pad_id, self.setup.pad_to)
                        for idx in _epoch_order(cfg, self.setup, epoch)[offset:])
                for batch, tokens in ahead(host, self.device):
                    loss, lrs = train_step(self.compiled.module, batch, self.method, optimizer, scheduler, self.step,
                                           self.trainable, cfg.train.max_grad_norm, self.autocast, self.tail)
                    self.step += 1
                    state["train_tokens"] = state.get("train_tokens", 0) + tokens
                    self._log_loss(loss, lrs, stage)
                    if self.setup.plan.is_eval_step(stage, self.step):
                        self._off_the_clock(self._evaluate, stage, lrs)
                    self._maybe_checkpoint(optimizer, scheduler)
                    if self.step >= stage.end:
                        break
            if stage.index > 0:  # the pruned adapter at the end of each stage
                self._off_the_clock(self.method.export, self.run_dir / "stages" / f"stage_{stage.index}",
                                    _backbone_name(cfg))
        self._off_the_clock(lambda: None)  # the clock stops with the last step's kernels
        graphs = self.compiled.graphs()  # None when nothing is compiled
        state["compile_graphs"] = graphs and {**graphs, "optimizer_tail": "captured" if self.tail else "eager"}

    def _off_the_clock(self, fn, *args):
        """Run an evaluation, checkpoint or export outside the training-only clock (the throughput the record
        states: ``runtime.train_tokens_per_s``); the device is synced first, as each of them syncs anyway."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.state["train_seconds"] = self.state.get("train_seconds", 0.0) + time.perf_counter() - self.clock
        try:
            return fn(*args)
        finally:
            self.clock = time.perf_counter()

    def _enter(self, stage: Stage, optimizer, scheduler):
        state, method = self.state, self.method
        state["stage"] = stage.index
        method.config.xi = stage.xi
        if stage.index == 1:  # every stage descends from the dense best checkpoint
            _load_weights(self.model, state["best_weights"], self.device)
        if self.cfg.scheduler.mode == "retrain":
            optimizer, scheduler = _optimizer_for(self.cfg, method, self.device, self.setup, stage)
        if stage.index == 1:  # the first stage starts from the references themselves: 100% / 100%
            self._point(stage, group_lrs(optimizer, scheduler))
        log.info("stage %d: xi=%g, steps %d..%d (%s)", stage.index, stage.xi, stage.start, stage.end,
                 self.cfg.scheduler.mode)
        return optimizer, scheduler

    def _log_loss(self, loss, lrs: dict, stage: Stage) -> None:
        self.running_loss += loss.float()
        self.running_n += 1
        if self.step % self.cfg.train.log_steps == 0 or self.step == stage.end:
            mean_loss = (self.running_loss / self.running_n).item()  # the only host sync between evaluations
            if not math.isfinite(mean_loss):
                raise NonFiniteLoss(f"non-finite loss at step {self.step - self.running_n + 1}..{self.step}")
            self.progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lrs.get('adapter', 0):.2e}")
            self.state["last_loss"] = mean_loss
            self.running_loss.zero_()
            self.running_n = 0
        self.progress.update(1)

    def _point(self, stage: Stage, lrs: dict) -> dict:
        """Evaluate every split now; a point of the run's history (and of the scheduler's curve)."""
        cfg, task, method, state = self.cfg, self.task, self.method, self.state
        s = self.setup
        with method.eval_context():
            point = _evaluate_all(cfg, task, self.model, s.data, s.pad_id, s.pad_to, self.device, self.autocast)
        ranks = method.ranks()
        point.update(step=self.step, epoch=self.step / s.plan.steps_per_epoch, stage=stage.index, lr=lrs,
                     loss=state.get("last_loss"), total_rank=sum(ranks.values()),
                     ranks_by_matrix=ranks_by_matrix(ranks), xi=getattr(getattr(method, "config", None), "xi", None),
                     nonzero_params=count_params(method, self.model.base_model.model.config.hidden_size)["retained"])
        self.tracker.log_eval(point, self.step)
        if self.sparsify:
            state["curve_raw"].append({
                "stage": stage.index, "step": self.step, "xi": method.config.xi, "lr": lrs.get("gate", 0.0),
                "nonzero_params": point["nonzero_params"], "total_rank": point["total_rank"], "ranks": ranks,
                "dev": point["report"][task.dev_splits[0]][task.main_metric],
                "train": point["memorization"][task.main_metric]})
        return point

    def _evaluate(self, stage: Stage, lrs: dict) -> None:
        state, select_key = self.state, self.task.select_metric
        point = self._point(stage, lrs)
        state["evals"].append(point)
        if stage.index == 0 and (values := self.method.trace_point()) is not None:
            state.setdefault("trace", []).append({"step": self.step, "values": values})
        _append_jsonl(self.run_dir / "metrics.jsonl", point)
        write_progress(self.run_dir, self.step, self.setup.plan.end, select_key, point["select"][select_key])
        value = point["select"][select_key]
        best = state["best"]
        if stage.index == 0 and _better(value, None if best is None else best["select"][select_key]):
            state["best"] = point
            state["best_weights"] = {n: p.detach().cpu().clone()
                                     for n, p in self.model.named_parameters() if p.requires_grad}
            state["best_method_state"] = self.method.snapshot()  # e.g. AdaLoRA's budget mask at that step
        log.info("step %d (stage %d): select %s=%.4f report %s ranks %d", self.step, stage.index, select_key,
                 float("nan") if value is None else value, point["report"], point["total_rank"])

    def _maybe_checkpoint(self, optimizer, scheduler) -> None:
        """Every ``train.save_steps`` steps or ``train.save_minutes`` minutes, and at once on USR2/SIGTERM."""
        t = self.cfg.train
        due = (t.save_steps > 0 and self.step % t.save_steps == 0) or (
            t.get("save_minutes", 0) > 0 and time.monotonic() - self.last_save >= 60 * t.save_minutes)
        if (due or self.interrupts.requested) and self.step < self.setup.plan.end:
            self._off_the_clock(self._save, optimizer, scheduler)
        if self.interrupts.requested and self.step < self.setup.plan.end:  # at the end: just finish
            log.info("interrupted by %s after step %d; checkpoint at step %d",
                     signal.Signals(self.interrupts.signum).name, self.step, self.step)
            self.progress.close()
            self.interrupts.hand_over()


    def _save(self, optimizer, scheduler) -> None:
        self.state.update(step=self.step, running_loss=self.running_loss.item(), running_n=self.running_n)
        save_checkpoint(self.run_dir / "checkpoint", self.model, optimizer, scheduler, self.method, self.state,
                        self.rid, elapsed=self.state["elapsed"] + time.time() - self.t0)
        self.last_save = time.monotonic()


def write_progress(run_dir: Path, step: int, total: int, metric: str | None = None, value=None) -> None:
    """``progress.json``: what `make status` shows for a running run (step k of n, last selection metric)."""
    atomic_write_text(run_dir / "progress.json", json_line({
        "step": step, "total": total, "select_metric": metric, "select": value, "updated": time.time(),
        "slurm_job": slurm_job()}))


def slurm_job() -> str | None:
    """``<array job>_<task>`` or ``<job>`` when running under Slurm (for the status view and the record)."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return env.get("SLURM_JOB_ID")


def _finish(cfg, task, rid, fingerprint, run_dir, record_path, setup, method, model, device, hidden, tracker, state,
            t0) -> dict:
    """Load the (dense) best checkpoint, export it, count it, write the record."""
    extra = {}
    if setup.plan.sparsifying:
        ref = state["best"]
        extra["curve"] = normalise_curve(state["curve_raw"], ref["report"][task.dev_splits[0]][task.main_metric],
                                         ref["memorization"][task.main_metric])
        extra["scheduler"] = {"mode": cfg.scheduler.mode, "xis": [s.xi for s in setup.plan.stages],
                              "stage_steps": [s.end - s.start for s in setup.plan.stages]}
    if state["best_weights"] is not None:
        _load_weights(model, state["best_weights"], device)
        method.restore_snapshot(state.get("best_method_state"))
    ranks = method.ranks()
    params = count_params(method, hidden)
    adapter_dir = run_dir / "adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    method.export(adapter_dir, _backbone_name(cfg))
    elapsed = state["elapsed"] + time.time() - t0
    record = _record(cfg, task, rid, fingerprint, state, ranks, params, elapsed, status="finished",
                     schedule=getattr(method, "schedule", None), total_steps=setup.plan.total_steps,
                     n_warmup=setup.plan.schedule.warmup, formulas=formulas(cfg, method, setup),
                     data={"fingerprint": fingerprint, "rows": {name: len(d) for name, d in setup.data.items()}},
                     runtime=runtime(cfg, device, state), **extra)
    method.annotate_record(record, state.get("trace", []))
    write_record(record_path, record)
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)  # finished: only the record and adapter are kept
    if tracker.active:
        from sora.results.plots import plot_record_ranks

        tracker.log_image("rank_heatmap", plot_record_ranks(record, run_dir / "plots"))
    log.info("finished %s: best %s", rid, record["best"]["metrics"])
    return record


def formulas(cfg, method, setup: Setup) -> dict:
    """Which formulas ran, so two runs that differ only here are never pooled."""
    out = {"optimizer": optimizer_kind(cfg.train, cfg.method), "schedule": cfg.train.get("schedule", "standard"),
           **{f"schedule_{k}": v for k, v in setup.plan.schedule.as_dict().items()}}
    sora_cfg = getattr(method, "config", None)
    if sora_cfg is not None:
        out.update(prox=sora_cfg.prox, threshold="xi" if sora_cfg.variant == "code" else "lr*xi",
                   l1_coef=sora_cfg.l1_coef, gate_init=sora_cfg.gate_init)
    return out


def runtime(cfg, device: torch.device, state: dict | None = None) -> dict:
    """What actually ran (``device=auto`` and ``train.precision=auto`` hide it): device, driver, CUDA and torch
    versions, the resolved precision, the compile mode and graphs compiled, and the training-only throughput (non-pad
    tokens per second of optimizer steps, evaluations and checkpoints off the clock; compiling is on it). Tables
    treat a different device like a different config."""
    state = state or {}
    seconds = state.get("train_seconds") or 0.0
    return {**device_facts(device), "precision": resolve_precision(cfg.train.precision, device),
            "tf32": bool(device.type == "cuda" and cfg.train.tf32), "eval_batch_size": cfg.eval.batch_size,
            "torch_threads": torch.get_num_threads(), "slurm_job": slurm_job(),
            "compile": {"mode": compile_mode(cfg.train.get("compile", "off")), **(
                state.get("compile_graphs") or {"graphs": None, "graph_breaks": None, "cudagraph_skips": None})},
            "pad_buckets": cfg.data.get("pad_buckets", 0),
            "train_seconds": seconds, "train_tokens": state.get("train_tokens"),
            "train_tokens_per_s": state["train_tokens"] / seconds if seconds and state.get("train_tokens") else None}


def sweep_info() -> dict | None:
    """The experiment and seed list of the Hydra multirun this run belongs to (the seeds a table expects)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except Exception:  # not under Hydra's CLI
        return None
    seeds = (hc.sweeper.get("params") or {}).get("seed")
    return {"experiment": hc.runtime.choices.get("experiment"),
            "seeds": [int(s) for s in str(seeds).split(",")] if seeds is not None else None}


def _backbone_name(cfg) -> str:
    return cfg.model.get("hub_id") or cfg.model.source


def _evaluate_all(cfg, task, model, data, pad_id, pad_to, device, autocast) -> dict:
    kw = dict(batch_size=cfg.eval.batch_size, pad_id=pad_id, device=device, autocast=autocast,
              sort_by_length=cfg.data.sort_eval_by_length, pad_to=pad_to)
    done = {}

    def once(split) -> dict:  # the same rows (select = report/<dev> under best_on_dev): one pass, same numbers
        if id(split) not in done:
            done[id(split)] = evaluate(model, split, task, **kw)
        return dict(done[id(split)])

    point = {"select": once(data["select"]),
             "report": {name.split("/", 1)[1]: once(d) for name, d in data.items() if name.startswith("report/")}}
    if "memorization" in data:
        point["memorization"] = once(data["memorization"])
    return point


def _load_weights(model, weights: dict, device) -> None:
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, w in weights.items():
            named[n].copy_(w.to(device))


def _check_scheduler(cfg) -> None:
    if not METHODS[cfg.method.name].sparsifiable:
        raise UserError(f"scheduler=sparsify needs a method with a threshold to raise, e.g. method=sora (got "
                        f"method={cfg.method.name}); or drop scheduler=sparsify")
    METHODS[cfg.method.name].check_scheduler(cfg.method, cfg.scheduler)


def _better(value, best) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or (isinstance(best, float) and math.isnan(best)) or value > best


def _record(cfg, task, rid, fingerprint, state, ranks, params, elapsed, status, error=None, **extra) -> dict:
    best = state.get("best")
    report_split = task.dev_splits[0]
    return {
        "run_id": rid,
        "status": status,
        "error": error,
        "task": task.name,
        "method": cfg.method.name,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "variant": cfg.method.get("variant"),
        "protocol": cfg.eval.protocol,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "identity": identity(cfg, fingerprint),
        "sweep": sweep_info(),
        "versions": package_versions(),
        "git": git_state(),
        "evals": state["evals"],
        "best": None if best is None else {
            "step": best["step"],
            "rule": f"max {task.select_metric} on the selection split ({cfg.eval.protocol}); "
                    f"metrics are the report split(s) at that step",
            "select": best["select"],
            "metrics": best["report"],
            "main_metric": task.main_metric,
            "main": best["report"][report_split][task.main_metric],
        },
        "ranks": ranks,
        "params": params,
        "wall_time_s": elapsed,
        "peak_memory_mb": _peak_memory_mb(),
        **extra,
    }


def _set_head_dropout(model, p) -> None:
    """The scripts' ``cls_dropout``: the top-level dropout between pooler and classifier, nothing else (AdaLoRA's
    DeBERTa-v2 code sets only ``self.dropout`` there; the pooler's own dropout stays at ``pooler_dropout``)."""
    if p is None:
        return
    module = getattr(model, "dropout", None)
    if isinstance(module, torch.nn.Dropout):
        module.p = float(p)
    elif type(module).__name__ == "StableDropout":
        module.drop_prob = float(p)


def _check_writable(results_dir: Path) -> None:
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=results_dir, prefix=".write_test.")  # per process: sweeps share the folder
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"results_dir {str(results_dir)!r} is not writable ({exc.strerror}); "
                        f"set results_dir=<a folder you can write>") from None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _peak_memory_mb() -> dict:
    out = {"cpu_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _rewrite_jsonl(path: Path, points: list[dict]) -> None:
    atomic_write_text(path, "".join(json_line(p) for p in points))


def _append_jsonl(path: Path, point: dict) -> None:
    with open(path, "a") as f:
        f.write(json_line(point))


class _RunLogHandler(logging.FileHandler):
    def handleError(self, record) -> None:  # a full disk loses log lines, never prints a traceback
        pass


def _log_to(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _RunLogHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("sora")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc[:40], unit="step", dynamic_ncols=True)
