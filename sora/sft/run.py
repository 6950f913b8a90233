"""One SFT run through a stock ``transformers.Trainer``, with the GLUE runs' conventions: a run id from
everything that changes its numbers, a lock, resume from the last Trainer checkpoint, one self-describing
``record.json``, ``metrics.jsonl``, the (pruned) adapter and a rank heatmap beside it."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from sora.errors import UserError
from sora.hf_trainer import DIAGNOSTICS_FILE
from sora.models import load_tokenizer
from sora.records import (
    RunLock,
    atomic_write_text,
    drop_launch_keys,
    git_state,
    json_line,
    package_versions,
    read_record,
    write_record,
)
from sora.run_schema import SftSchema, check_run_schema
from sora.sft.adapters import attach_method, method_optimizer
from sora.sft.data import Collator, eos_id, fingerprint, load_sft_data
from sora.sft.model import load_causal_lm
from sora.sft.ranks import plot_rank_grid, rank_grid
from sora.tuners.methods import Batches, build_method, count_params
from sora.validate import validate_device


def sft_identity(cfg, data_fingerprint: str) -> dict:
    """The resolved config without launch-only keys; the data files replaced by the fingerprint of their bytes."""
    ident = drop_launch_keys(OmegaConf.to_container(cfg, resolve=True))
    for key in ("path", "eval_path"):
        if str(ident["data"].get(key) or "").endswith(".jsonl"):
            ident["data"][key] = Path(ident["data"][key]).name  # where the file lies is not part of it
    ident["data"]["fingerprint"] = data_fingerprint
    return ident


def sft_run_id(cfg, data_fingerprint: str) -> str:
    digest = hashlib.sha1(json.dumps(sft_identity(cfg, data_fingerprint), sort_keys=True).encode()).hexdigest()[:10]
    return f"sft-{cfg.method.name}-{cfg.lm.name}-s{cfg.seed}-{digest}"


def total_steps(cfg, n_train: int) -> int:
    """The Trainer's count (``max_steps``, else epochs x ceil(batches / accumulation)): AdaLoRA needs it first."""
    if cfg.train.max_steps > 0:
        return int(cfg.train.max_steps)
    batches = math.ceil(n_train / cfg.train.batch_size)
    return int(cfg.train.epochs) * max(1, math.ceil(batches / cfg.train.grad_accum))


def training_args(cfg, out_dir: Path, device: str) -> TrainingArguments:
    t = cfg.train
    report = [cfg.logger.name] if cfg.logger.name != "none" else "none"
    return TrainingArguments(
        output_dir=str(out_dir), seed=cfg.seed, per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size, gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, warmup_steps=t.warmup,
        num_train_epochs=t.epochs, max_steps=t.max_steps, lr_scheduler_type="linear", bf16=t.precision == "bf16",
        gradient_checkpointing=t.gradient_checkpointing, logging_steps=t.log_steps, eval_strategy="steps",
        eval_steps=t.eval_steps, save_strategy="steps", save_steps=t.save_steps, save_total_limit=2,
        report_to=report, run_name=out_dir.parent.name, use_cpu=device == "cpu", remove_unused_columns=False,
        disable_tqdm=not cfg.progress)


@torch.no_grad()
def token_perplexity(model, rows: list[dict], collator: Collator, batch_size: int) -> dict:
    """Exact per-token loss over the eval rows (the Trainer's eval_loss averages batch means instead)."""
    model.eval()
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collator(rows[i:i + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        nll, count = nll + loss.item(), count + int((labels != -100).sum())
    return {"loss": nll / count, "perplexity": math.exp(nll / count), "tokens": count}


def run_sft(cfg) -> dict | None:
    """Train (or resume, or skip when finished) one run; returns its record."""
    check_run_schema(cfg, SftSchema)  # every value before any folder exists
    validate_device(cfg.device)
    data_fingerprint = fingerprint(cfg.data)  # the files' bytes: a finished run is skipped before tokenising
    rid = sft_run_id(cfg, data_fingerprint)
    run_dir = Path(cfg.results_dir).expanduser() / "records" / rid
    if (run_dir / "record.json").exists():
        print(f"[sora] {rid}: finished, skipped")
        return read_record(run_dir / "record.json")
    with RunLock(run_dir) as lock:
        if not lock.acquired:
            raise UserError(f"run {rid} is being trained by another process ({run_dir}/.lock)")
        print(f"[sora] {rid}: training")
        return _train(cfg, rid, run_dir, data_fingerprint)


def _train(cfg, rid: str, run_dir: Path, data_fingerprint: str) -> dict:
    t0, tokenizer = time.time(), load_tokenizer(cfg.lm)
    data = load_sft_data(cfg.data, tokenizer)
    steps = total_steps(cfg, len(data.train))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id(tokenizer)
    collator = Collator(pad_id)
    device = "cpu" if cfg.device == "cpu" or not torch.cuda.is_available() else "cuda"
    method = build_method(load_causal_lm(cfg.lm, len(tokenizer), pad_id, cfg.seed), cfg.method, steps)
    args = training_args(cfg, run_dir / "trainer", device)
    if args.gradient_checkpointing:
        method.model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need grads
    eval_bsz = args.per_device_eval_batch_size
    before = token_perplexity(method.model.to(args.device), data.eval, collator, eval_bsz)
    if method.data_batches:  # a data-driven init (EVA) on the first training batches, before the optimizer
        loader = DataLoader(data.train, batch_size=args.per_device_train_batch_size, collate_fn=collator)
        method.init_from_data(Batches(loader, args.device, method.data_batches))
    trainer = Trainer(model=method.model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                      data_collator=collator, optimizers=(method_optimizer(method, args, cfg.train, cfg.method), None))
    checkpoint = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    attach_method(trainer, method, checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    with method.eval_context():  # the model as exported (AdaLoRA: under its budget mask)
        after = token_perplexity(method.model, data.eval, collator, eval_bsz)
    ranks = method.ranks()
    method.export(run_dir / "adapter", cfg.lm.get("source"))
    grid = rank_grid(ranks)
    r_max = cfg.method.get("r_max") or cfg.method.get("init_r") or cfg.method.get("r")
    plot_rank_grid(grid, r_max, f"{rid}: kept rank per matrix x layer", run_dir / "ranks.png")
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json_line(h) for h in trainer.state.log_history))
    params = count_params(method, method.model.base_model.model.config.hidden_size)
    record = _record(cfg, rid, data, data_fingerprint, before, after, ranks, grid, trainer, time.time() - t0)
    record["params"] = {"retained_adapter": params["retained"], "trainable": params["trainable"]}
    diagnostics = Path(args.output_dir) / DIAGNOSTICS_FILE  # SoRA: SoraCallback's gates-vs-null verdict
    if diagnostics.exists():
        record["gate_diagnostics"] = json.loads(diagnostics.read_text())
    write_record(run_dir / "record.json", record)
    shutil.rmtree(run_dir / "trainer", ignore_errors=True)  # resume checkpoints: not needed once finished
    return read_record(run_dir / "record.json")


def _record(cfg, rid, data, data_fingerprint, before, after, ranks, grid, trainer, wall) -> dict:
    train_logs = [h for h in trainer.state.log_history if "train_loss" in h]
    return {"run_id": rid, "kind": "sft", "status": "finished", "method": cfg.method.name, "model": cfg.lm.name,
            "seed": cfg.seed, "identity": sft_identity(cfg, data_fingerprint),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "data": {"train_rows": len(data.train), "eval_rows": len(data.eval), "dropped_too_long": data.dropped},
            "eval_before": before, "eval": after, "train_loss": train_logs[-1]["train_loss"] if train_logs else None,
            "steps": trainer.state.global_step, "ranks": ranks, "total_rank": sum(ranks.values()),
            "rank_grid": {m: {str(k): v for k, v in row.items()} for m, row in grid.items()},
            "runtime": {"wall_s": wall, "device": str(trainer.args.device)}, "versions": package_versions(),
            "git": git_state()}
