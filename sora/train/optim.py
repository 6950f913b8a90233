"""AdamW (fused on CUDA) and the linear warmup + linear decay schedule of the HF scripts."""

from __future__ import annotations

import torch


def build_optimizer(groups: list[dict], betas, device: torch.device) -> torch.optim.AdamW:
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, betas=tuple(betas), fused=fused)


def warmup_steps(warmup: float, total_steps: int) -> int:
    """``warmup`` < 1 is a ratio of the total steps, >= 1 a step count (the scripts use both)."""
    return int(round(warmup * total_steps)) if warmup < 1 else int(warmup)


def linear_schedule(optimizer, n_warmup: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Same lambda for every group: gates follow the main schedule from their own base lr."""

    def factor(step: int) -> float:
        if step < n_warmup:
            return step / max(1, n_warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - n_warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
