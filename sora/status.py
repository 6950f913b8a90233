"""What a sweep's runs are doing, from files alone (records, checkpoints, locks, progress): works on a login node
with no Slurm API.

Every multirun leaves ``<results_dir>/hydra/sweeps/<start time>/multirun.yaml`` (Hydra writes it at launch), so
the runs a sweep should produce are known even when some never started: the sweeper's parameters and the
command line are expanded as Hydra's basic sweeper expands them, each job's config composed and its run id
computed. A run is then ``finished`` (record), ``failed`` (record, with its reason), ``running`` (its lock is
held; step k of n - from ``progress.json`` or the last checkpoint's ``step.json``, whichever is later - and the
last selection metric), ``interrupted`` (a checkpoint, no lock: re-running resumes it), ``started`` (a folder,
no checkpoint yet) or ``missing``.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import shlex
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from sora.records import CorruptRecord, read_record


@dataclass
class RunStatus:
    run_id: str
    state: str
    detail: str = ""
    overrides: list[str] = field(default_factory=list)
    slurm: str | None = None


def split_sweep_value(value: str) -> list[str]:
    """``a,b,[1,2]`` -> ``['a', 'b', '[1,2]']``: commas inside brackets or quotes do not split."""
    out, depth, cur, quote = [], 0, "", None
    for ch in value:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        cur += ch
    return [*out, cur]


def sweep_jobs(multirun_yaml: Path) -> list[list[str]]:
    """The override list of every job of one multirun, in Hydra's basic-sweeper order."""
    cfg = OmegaConf.load(multirun_yaml)
    params = cfg.hydra.sweeper.get("params")
    params = OmegaConf.to_container(params) if params is not None else {}
    args = [f"{k}={v}" for k, v in params.items()] + list(cfg.hydra.overrides.task)
    final: OrderedDict[str, list[str]] = OrderedDict()
    for arg in args:
        key, _, value = arg.partition("=")
        final[key] = [f"{key}={v}" for v in split_sweep_value(value)]
    return [list(job) for job in itertools.product(*final.values())]


def launch_overrides(multirun_yaml: Path) -> list[str]:
    """The multirun's ``hydra...`` overrides (``hydra/launcher=slurm``, its partition...): a rerun launches alike."""
    cfg = OmegaConf.load(multirun_yaml)
    return [o for o in cfg.hydra.overrides.get("hydra", []) if not o.startswith("hydra.mode=")]


def expected_runs(results_dir: Path) -> dict[str, list[str]]:
    """run id -> overrides (the job's, then its sweep's hydra ones), for every job of every multirun recorded
    under ``results_dir``."""
    from sora.config import load_config
    from sora.records import run_id

    out = {}
    for path in sorted(results_dir.glob("hydra/sweeps/*/multirun.yaml")):
        launch = launch_overrides(path)
        for job in sweep_jobs(path):
            try:
                out[run_id(load_config(job))] = job + launch
            except Exception:  # a job whose config does not compose fails at launch and says why there
                continue
    return out


def _locked(run_dir: Path) -> bool:
    lock = run_dir / ".lock"
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def run_status(run_dir: Path) -> RunStatus:
    rid = run_dir.name
    progress = _json(run_dir / "progress.json")
    slurm = progress.get("slurm_job")
    if (run_dir / "record.json").exists():
        try:
            rec = read_record(run_dir / "record.json")
        except CorruptRecord as exc:
            return RunStatus(rid, "failed", f"corrupt record: {exc.why}", slurm=slurm)
        slurm = (rec.get("runtime") or {}).get("slurm_job") or slurm
        if rec.get("status") == "finished":
            best = rec["best"]
            return RunStatus(rid, "finished", f"{best['main_metric']} {best['main']:.4f} at step {best['step']}",
                             slurm=slurm)
        return RunStatus(rid, "failed", rec.get("error") or "failed", slurm=slurm)
    step, saved = progress.get("step", "?"), _json(run_dir / "checkpoint" / "step.json").get("step")
    if isinstance(saved, int) and not (isinstance(step, int) and step >= saved):
        step = saved  # the last checkpoint is newer than the last evaluation
    where = f"step {step} of {progress.get('total', '?')}"
    if progress.get("select") is not None:
        where += f", last {progress.get('select_metric')} {progress['select']:.4f}"
    if _locked(run_dir):
        return RunStatus(rid, "running", where, slurm=slurm)
    if (run_dir / "checkpoint" / "state.pt").exists():
        return RunStatus(rid, "interrupted", f"resumable at {where.split(',')[0]}", slurm=slurm)
    return RunStatus(rid, "started", "no checkpoint yet (re-running starts it over)", slurm=slurm)


def sweep_status(results_dir: str | Path) -> list[RunStatus]:
    results_dir = Path(results_dir)
    expected = expected_runs(results_dir)
    seen = {}
    for run_dir in sorted(results_dir.glob("records/*")):
        if run_dir.is_dir():
            seen[run_dir.name] = run_status(run_dir)
            seen[run_dir.name].overrides = expected.get(run_dir.name, [])
    missing = [RunStatus(rid, "missing", "never started", job) for rid, job in expected.items() if rid not in seen]
    return [*seen.values(), *missing]


def rerun_commands(statuses: list[RunStatus]) -> list[str]:
    """One multirun per group of failed/missing/started configs that differ only in their seed."""
    groups: OrderedDict[tuple, list[str]] = OrderedDict()
    for s in statuses:
        if s.state in ("failed", "missing", "started") and s.overrides:
            rest = tuple(o for o in s.overrides if not o.startswith("seed="))
            seed = next((o.split("=", 1)[1] for o in s.overrides if o.startswith("seed=")), None)
            groups.setdefault(rest, []).append(seed)
    cmds = []
    for rest, seeds in groups.items():
        seed_arg = [f"seed={','.join(s for s in seeds if s is not None)}"] if any(seeds) else []
        cmds.append(" ".join(["python scripts/train.py -m", *map(shlex.quote, [*rest, *seed_arg])]))
    return cmds


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
