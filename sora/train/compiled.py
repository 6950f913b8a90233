"""``train.compile``: the training forward compiled — ``off``, ``default`` or ``reduce-overhead`` (CUDA graphs) —
with the graphs it compiled counted for the record.

With ``data.pad_buckets`` the model sees a bounded set of shapes (one per length bucket at the fixed batch size,
plus the epoch's shorter last batch), so it is compiled with static shapes: a handful of graphs, each one a CUDA
graph under ``reduce-overhead``. Without buckets nearly every batch has its own length, so only a dynamic-shape
compile makes sense, and ``reduce-overhead`` is refused (``sora.validate``). Weights, evaluation and checkpoints use
the module itself.
"""

from __future__ import annotations

import torch

from sora.records import COMPILE_ALIASES

MODES = ("off", "default", "reduce-overhead")
BACKEND = "inductor"  # the tests swap in "eager": dynamo's graph capture and counts without a C++ build


def compile_mode(value) -> str:
    return COMPILE_ALIASES[value] if isinstance(value, bool) else str(value)


class CompiledForward:
    """The model the training step calls, and how many graphs compiling it has produced so far."""

    def __init__(self, model: torch.nn.Module, mode, bucketed: bool):
        self.mode = compile_mode(mode)
        self._start = _counts()
        if self.mode == "off":
            self.module = model
            return
        options = {"dynamic": not bucketed}
        if self.mode == "reduce-overhead" and BACKEND == "inductor":
            options["mode"] = "reduce-overhead"
        self.module = torch.compile(model, backend=BACKEND, **options)

    def graphs(self) -> dict | None:
        """Graphs compiled and graph breaks since this forward was built (None when nothing is compiled): a
        handful of graphs and no break is what CUDA graphs need."""
        if self.mode == "off":
            return None
        graphs, breaks = _counts()
        return {"graphs": graphs - self._start[0], "graph_breaks": breaks - self._start[1]}


def _counts() -> tuple[int, int]:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values()))
