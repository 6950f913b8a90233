"""One GLUE run, start to finish: data -> model -> the step loop -> best checkpoint -> record + adapter.

The step order, readable in one place (nanoGPT style):
    forward (+ the method's extra loss) -> backward -> clip the global grad norm -> optimizer.step()
    -> method.after_optimizer_step (SoRA prox / AdaLoRA budget) -> scheduler.step() -> zero_grad()
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import random
import resource
import shutil
import subprocess
import time
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from sora.data.batching import collate, encode, train_batches
from sora.data.glue import SELECT_SEED, protocol_splits
from sora.data.tasks import get_task
from sora.errors import UserError
from sora.models import load_model, load_tokenizer
from sora.records import CorruptRecord, RunLock, read_record, run_id, write_record
from sora.tracking import make_tracker, ranks_by_matrix
from sora.train.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint
from sora.train.evaluate import evaluate
from sora.train.optim import build_optimizer, linear_schedule, warmup_steps
from sora.train.sparsify import Stage, normalise_curve, stage_plan
from sora.tuners.methods import build_method, count_params

log = logging.getLogger("sora")
MEMORIZATION_ROWS = 1000  # the fixed shuffled train subset the scheduler measures memorization on
PACKAGES = ("torch", "transformers", "peft", "hydra-core", "datasets", "scikit-learn", "scipy", "numpy")


class NonFiniteLoss(Exception):
    pass


def validate_config(cfg) -> None:
    t = cfg.train
    if not t.lr > 0:
        raise UserError(f"train.lr must be > 0, got {t.lr}; e.g. train.lr=8e-4")
    if not (isinstance(t.batch_size, int) and t.batch_size > 0):
        raise UserError(f"train.batch_size must be a positive integer, got {t.batch_size!r}; e.g. train.batch_size=32")
    if not (t.max_steps == -1 or (isinstance(t.max_steps, int) and t.max_steps > 0)):
        raise UserError(f"train.max_steps must be -1 (use epochs) or a positive integer, got {t.max_steps!r}")
    if t.epochs <= 0 and t.max_steps == -1:
        raise UserError(f"train.epochs must be > 0, got {t.epochs}")


def train(cfg) -> dict | None:
    """Run (or resume, or skip) the run this config names; return its record (None if another process has it)."""
    validate_config(cfg)
    task = get_task(cfg.task.name)
    rid = run_id(cfg)
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
        handler = _log_to(run_dir / "log.txt")
        tracker = make_tracker(cfg, rid, run_dir)
        record = None
        try:
            record = _run(cfg, task, rid, run_dir, record_path, tracker)
            return record
        finally:
            # always finish the tracker's run, also on failure, so a multirun in one process keeps going
            tracker.finish(summary=(record or {}).get("best"), failed=record is None)
            logging.getLogger("sora").removeHandler(handler)
            handler.close()


def _run(cfg, task, rid: str, run_dir: Path, record_path: Path, tracker) -> dict:
    t0 = time.time()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    device = _device(cfg.device)
    _seed_everything(cfg.seed)
    if device.type == "cuda" and cfg.train.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    autocast = _autocast(cfg.train.precision, device)
    log.info("run %s on %s, precision %s", rid, device, cfg.train.precision)

    tokenizer = load_tokenizer(cfg.model)
    splits = protocol_splits(task, cfg.data.dir, cfg.eval.protocol)
    data = {name: encode(df, task, tokenizer, cfg.data.max_len) for name, df in splits.items()}
    pad_id = tokenizer.pad_token_id
    pad_to = cfg.data.max_len if cfg.data.pad_to_max_len else None
    train_set = data["train"]
    steps_per_epoch = math.ceil(len(train_set) / cfg.train.batch_size)
    total_steps = cfg.train.max_steps if cfg.train.max_steps > 0 else int(steps_per_epoch * cfg.train.epochs)
    eval_every = cfg.train.eval_steps if cfg.train.eval_steps > 0 else steps_per_epoch
    eval_every = min(eval_every, total_steps)

    sched = cfg.get("scheduler")
    plan = stage_plan(sched, total_steps, steps_per_epoch)
    sparsify = len(plan) > 1
    if sparsify:
        _check_scheduler(cfg)
        subset = splits["train"].sample(n=min(MEMORIZATION_ROWS, len(splits["train"])), random_state=SELECT_SEED)
        data["memorization"] = encode(subset.reset_index(drop=True), task, tokenizer, cfg.data.max_len)

    base = load_model(cfg.model, task.num_labels, cfg.seed)
    _set_head_dropout(base, cfg.train.get("cls_dropout"))
    method = build_method(base, cfg.method, total_steps)
    model = method.model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    hidden = model.base_model.model.config.hidden_size
    n_warmup = warmup_steps(cfg.train.warmup, total_steps)

    def optimizer_for(stage: Stage):
        """Dense phase (and every shrink_only stage): one optimizer and one schedule over the dense steps, so
        shrink_only stages run at lr 0 exactly as released. retrain: a fresh AdamW and schedule per stage."""
        opt = build_optimizer(method.param_groups(cfg.train.lr, cfg.train.weight_decay, cfg.train.adam_eps),
                              cfg.train.adam_betas, device)
        if stage.index > 0 and sched.mode == "retrain":
            length = stage.end - stage.start
            return opt, linear_schedule(opt, warmup_steps(cfg.train.warmup, length), length)
        return opt, linear_schedule(opt, n_warmup, total_steps)

    state = {"step": 0, "stage": 0, "evals": [], "best": None, "best_weights": None, "elapsed": 0.0, "curve_raw": []}
    ckpt_dir = run_dir / "checkpoint"
    payload = read_checkpoint(ckpt_dir, rid)
    stage_now = plan[payload["state"].get("stage", 0)] if payload else plan[0]
    optimizer, scheduler = optimizer_for(stage_now)
    if payload:
        state = restore_checkpoint(payload, model, optimizer, scheduler, method)
        log.info("resumed %s at step %d (stage %d)", rid, state["step"], state.get("stage", 0))
        # evaluations after the checkpoint are replayed: drop their lines so each step appears once
        _rewrite_jsonl(run_dir / "metrics.jsonl", state["evals"])
    if stage_now.xi is not None:
        method.config.xi = stage_now.xi

    select_key = task.select_metric
    final_step = plan[-1].end
    step = state["step"]
    progress = _progress(final_step, step, enabled=cfg.progress, desc=rid)
    # the loss window since the last log line (restored on resume so logged means match an uninterrupted run)
    running_loss = torch.tensor(state.get("running_loss", 0.0), device=device)
    running_n = state.get("running_n", 0)

    def evaluate_point(stage: Stage, lrs: dict) -> dict:
        point = _evaluate_all(cfg, task, model, data, pad_id, pad_to, device, autocast)
        ranks = method.ranks()
        point.update(step=step, epoch=step / steps_per_epoch, stage=stage.index, lr=lrs,
                     loss=state.get("last_loss"), total_rank=sum(ranks.values()),
                     ranks_by_matrix=ranks_by_matrix(ranks), xi=getattr(getattr(method, "config", None), "xi", None),
                     nonzero_params=count_params(method, hidden)["retained"])
        tracker.log_eval(point, step)
        if sparsify:
            state["curve_raw"].append({
                "stage": stage.index, "step": step, "xi": method.config.xi, "lr": lrs.get("gate", 0.0),
                "nonzero_params": point["nonzero_params"], "total_rank": point["total_rank"], "ranks": ranks,
                "dev": point["report"][task.dev_splits[0]][task.main_metric],
                "train": point["memorization"][task.main_metric]})
        return point

    try:
        for stage in plan:
            if stage.index < state["stage"] or step >= stage.end:
                continue
            if stage.index > state["stage"]:  # entering a stage (a resumed run may already be inside it)
                state["stage"] = stage.index
                method.config.xi = stage.xi
                if stage.index == 1:  # every stage descends from the dense best checkpoint
                    _load_weights(model, state["best_weights"], device)
                if sched.mode == "retrain":
                    optimizer, scheduler = optimizer_for(stage)
                if stage.index == 1:  # the first stage starts from the references themselves: 100% / 100%
                    start_lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
                    evaluate_point(stage, start_lrs)
                log.info("stage %d: xi=%g, steps %d..%d (%s)", stage.index, stage.xi, stage.start, stage.end,
                         sched.mode)
            stage_eval = min(eval_every, stage.end - stage.start)
            while step < stage.end:
                epoch, offset = divmod(step, steps_per_epoch)
                batches = train_batches(len(train_set), train_set.lengths, cfg.train.batch_size, cfg.seed, epoch,
                                        cfg.data.group_by_length)
                for idx in batches[offset:]:
                    model.train()
                    batch = collate([train_set.features[i] for i in idx], train_set.labels[idx], pad_id, pad_to)
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    with autocast():
                        loss = model(**batch).loss
                        extra = method.extra_loss()
                        if extra is not None:
                            loss = loss + extra
                    loss.backward()
                    if cfg.train.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(trainable, cfg.train.max_grad_norm)
                    optimizer.step()
                    method.after_optimizer_step(step, optimizer)
                    lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    running_loss += loss.detach().float()
                    running_n += 1

                    if step % cfg.train.log_steps == 0 or step == stage.end:
                        mean_loss = (running_loss / running_n).item()  # the only host sync between evaluations
                        if not math.isfinite(mean_loss):
                            raise NonFiniteLoss(f"non-finite loss at step {step - running_n + 1}..{step}")
                        progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lrs.get('adapter', 0):.2e}")
                        state["last_loss"] = mean_loss
                        running_loss.zero_()
                        running_n = 0
                    progress.update(1)

                    if (step - stage.start) % stage_eval == 0 or step == stage.end:
                        point = evaluate_point(stage, lrs)
                        state["evals"].append(point)
                        _append_jsonl(run_dir / "metrics.jsonl", point)
                        value = point["select"][select_key]
                        best = state["best"]
                        if stage.index == 0 and (best is None or _better(value, best["select"][select_key])):
                            state["best"] = point
                            state["best_weights"] = {n: p.detach().cpu().clone()
                                                     for n, p in model.named_parameters() if p.requires_grad}
                        log.info("step %d (stage %d): select %s=%.4f report %s ranks %d", step, stage.index,
                                 select_key, float("nan") if value is None else value, point["report"],
                                 point["total_rank"])
                    if cfg.train.save_steps > 0 and step % cfg.train.save_steps == 0 and step < final_step:
                        state.update(step=step, running_loss=running_loss.item(), running_n=running_n)
                        save_checkpoint(ckpt_dir, model, optimizer, scheduler, method, state, rid,
                                        elapsed=state["elapsed"] + time.time() - t0)
                    if step >= stage.end:
                        break
            if stage.index > 0:  # the pruned adapter at the end of each stage
                method.export(run_dir / "stages" / f"stage_{stage.index}", cfg.model.get("hub_id") or cfg.model.source)
    except NonFiniteLoss as exc:
        progress.close()
        record = _record(cfg, task, rid, state, None, None, time.time() - t0, status="failed", error=str(exc))
        write_record(record_path, record)
        raise UserError(f"{exc}; the record is marked failed at {record_path}; lower train.lr or use "
                        f"train.precision=fp32") from None
    progress.close()

    extra = {}
    if sparsify:
        ref = state["best"]
        extra["curve"] = normalise_curve(state["curve_raw"], ref["report"][task.dev_splits[0]][task.main_metric],
                                         ref["memorization"][task.main_metric])
        extra["scheduler"] = {"mode": sched.mode, "xis": [s.xi for s in plan],
                              "stage_steps": [s.end - s.start for s in plan]}
    # the reported model is the (dense) best checkpoint: load it, export it, count it
    if state["best_weights"] is not None:
        _load_weights(model, state["best_weights"], device)
    ranks = method.ranks()
    params = count_params(method, hidden)
    adapter_dir = run_dir / "adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    method.export(adapter_dir, cfg.model.get("hub_id") or cfg.model.source)
    elapsed = state["elapsed"] + time.time() - t0
    record = _record(cfg, task, rid, state, ranks, params, elapsed, status="finished",
                     schedule=getattr(method, "schedule", None), total_steps=total_steps, n_warmup=n_warmup, **extra)
    write_record(record_path, record)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: only the record and adapter are kept
    if tracker.active:
        from sora.results.plots import plot_record_ranks

        tracker.log_image("rank_heatmap", plot_record_ranks(record, run_dir / "plots"))
    log.info("finished %s: best %s", rid, record["best"]["metrics"])
    return record


def _evaluate_all(cfg, task, model, data, pad_id, pad_to, device, autocast) -> dict:
    kw = dict(batch_size=cfg.eval.batch_size, pad_id=pad_id, device=device, autocast=autocast,
              sort_by_length=cfg.data.sort_eval_by_length, pad_to=pad_to)
    select = evaluate(model, data["select"], task, **kw)
    report = {name.split("/", 1)[1]: evaluate(model, d, task, **kw) for name, d in data.items()
              if name.startswith("report/")}
    point = {"select": select, "report": report}
    if "memorization" in data:
        point["memorization"] = evaluate(model, data["memorization"], task, **kw)
    return point


def _load_weights(model, weights: dict, device) -> None:
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, w in weights.items():
            named[n].copy_(w.to(device))


def _check_scheduler(cfg) -> None:
    if cfg.method.name != "sora":
        raise UserError(f"scheduler=sparsify needs method=sora (got method={cfg.method.name}); "
                        f"or drop scheduler=sparsify")
    if cfg.scheduler.mode == "shrink_only" and cfg.method.variant == "paper":
        raise UserError("scheduler.mode=shrink_only runs at lr 0, so the paper variant's threshold lr*xi is 0 "
                        "and nothing prunes; use method.variant=code or scheduler.mode=retrain")


def _better(value, best) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or (isinstance(best, float) and math.isnan(best)) or value > best


def _record(cfg, task, rid, state, ranks, params, elapsed, status, error=None, **extra) -> dict:
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
        "versions": _versions(),
        "git": _git(),
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
    """The scripts' classifier dropout: DeBERTa's pooler/classifier dropouts or BERT's classifier dropout."""
    if p is None:
        return
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and (name.startswith("pooler") or name in ("dropout", "classifier")):
            module.p = float(p)
        elif type(module).__name__ == "StableDropout" and name.startswith("pooler"):
            module.drop_prob = float(p)


def _check_writable(results_dir: Path) -> None:
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        with open(results_dir / ".write_test", "w"):
            pass
        (results_dir / ".write_test").unlink()
    except OSError as exc:
        raise UserError(f"results_dir {str(results_dir)!r} is not writable ({exc.strerror}); "
                        f"set results_dir=<a folder you can write>") from None


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    raise UserError(f"train.precision must be fp32 or bf16, got {precision!r}")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _git() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return {"commit": sha.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _peak_memory_mb() -> dict:
    out = {"cpu_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _rewrite_jsonl(path: Path, points: list[dict]) -> None:
    import json

    from sora.records import _clean, atomic_write_text

    atomic_write_text(path, "".join(json.dumps(_clean(p)) + "\n" for p in points))


def _append_jsonl(path: Path, point: dict) -> None:
    import json

    from sora.records import _clean

    with open(path, "a") as f:
        f.write(json.dumps(_clean(point)) + "\n")


def _log_to(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("sora")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc[:40], unit="step", dynamic_ncols=True)
