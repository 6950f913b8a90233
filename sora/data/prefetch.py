"""Batches handed to the device one step ahead.

A GPU step is host-bound (``docs/speed.md``): a copy from pageable memory blocks the host until it is done, and a
batch built while the card waits is time the card idles. Here batch i + 1 is built, pinned and its copy issued
(``non_blocking``) before batch i is handed over, so the host goes straight on to launching step i's kernels. On a
CPU the batches are the same tensors, untouched: the path is the same one in CI as on a card.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """One host batch on ``device``: pinned and copied asynchronously on CUDA, as it is elsewhere."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def ahead(batches: Iterable[dict[str, torch.Tensor]], device: torch.device) -> Iterator[tuple[dict, int]]:
    """``(batch on device, its non-padding tokens)`` for each host batch, the next one's copy already issued.
    The token count is read from the host mask, so counting throughput costs no device sync."""
    pending = None
    for batch in batches:
        moved = (to_device(batch, device), int(batch["attention_mask"].sum()))
        if pending is not None:
            yield pending
        pending = moved
    if pending is not None:
        yield pending
