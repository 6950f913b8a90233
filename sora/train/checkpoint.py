"""Resume state: exactly what an interrupted run needs to continue bit-for-bit, and nothing more.

Trainable weights (the frozen backbone is rebuilt from its source), optimizer and scheduler state, the
method's own state (AdaLoRA's importance scores), the RNGs, and the loop's bookkeeping. The data order
is a pure function of (seed, epoch), so the step number fixes where in the epoch to continue.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from sora.errors import UserError
from sora.records import atomic_write_text


def save_checkpoint(ckpt_dir: Path, model, optimizer, scheduler, method, state: dict, rid: str, elapsed: float) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "run_id": rid,
        "weights": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "method": method.extra_state(),
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "state": {**state, "elapsed": elapsed},
    }
    tmp = ckpt_dir / "state.pt.tmp"
    try:  # a full disk must leave the previous checkpoint as it was, and no half-written file beside it
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, ckpt_dir / "state.pt")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _note_step(ckpt_dir, state["step"])


def _note_step(ckpt_dir: Path, step: int) -> None:
    """``step.json`` beside the checkpoint: `make status` shows the step a run resumes from without loading it
    (progress.json moves only at evaluations). Informational: a full disk here costs nothing."""
    try:
        atomic_write_text(ckpt_dir / "step.json", json.dumps({"step": step, "saved": time.time()}) + "\n")
    except OSError:
        pass


def read_checkpoint(ckpt_dir: Path, rid: str) -> dict | None:
    """The saved payload, or None when there is none (read first: it says which stage's optimizer to build)."""
    path = ckpt_dir / "state.pt"
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a torn or foreign file
        why = type(exc).__name__
        raise UserError(f"checkpoint {path} is unreadable ({why}); delete it to restart the run") from None
    if payload.get("run_id") != rid:
        raise UserError(f"checkpoint {path} belongs to run {payload.get('run_id')!r}, not {rid!r}; delete it")
    return payload


def restore_checkpoint(payload: dict, model, optimizer, scheduler, method, where: Path | None = None) -> dict:
    named = dict(model.named_parameters())
    foreign = sorted(set(payload["weights"]) - set(named))
    if foreign:  # e.g. a SoRA checkpoint from before the gate bank (a parameter per gate, 6c034db)
        raise UserError(f"checkpoint {where or ''} was written by another parameter layout ({len(foreign)} unknown "
                        f"weights, e.g. {foreign[0]}); delete it to restart the run, or resume with the code that "
                        "wrote it")
    with torch.no_grad():
        for n, w in payload["weights"].items():
            named[n].copy_(w.to(named[n].device))
    try:
        optimizer.load_state_dict(payload["optimizer"])
    except ValueError as exc:
        raise UserError(f"checkpoint {where or ''} holds another optimizer layout ({exc}); delete it to restart "
                        "the run") from None
    scheduler.load_state_dict(payload["scheduler"])
    method.load_extra_state(payload["method"])
    rng = payload["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return payload["state"]
