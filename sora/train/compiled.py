"""``train.compile``: the training forward compiled — ``off``, ``default`` or ``reduce-overhead`` (CUDA graphs) —
with the graphs it compiled counted for the record.

With ``data.pad_buckets`` the model sees a bounded set of shapes (one per length bucket at the fixed batch size,
plus the epoch's shorter last batch), so it is compiled with static shapes: a handful of graphs, each one a CUDA
graph under ``reduce-overhead``. Without buckets nearly every batch has its own length, so only a dynamic-shape
compile makes sense, and ``reduce-overhead`` is refused (``sora.validate``). Weights, evaluation and checkpoints use
the module itself.

``reduce-overhead`` also captures the optimizer tail (clip, optimizer step, the method's after-step) where the
method's after-step can be captured (``Method.capturable_after_step``; AdaLoRA's budget update is host logic): the
optimizer is then built capturable (``sora.optim.build_optimizer``: lrs in device tensors the scheduler fills in
place, step counts on the device), so the graph holds no Python number that changes from step to step.
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
        self._start = compile_counts()
        if self.mode == "off":
            self.module = model
            return
        options = {"dynamic": not bucketed}
        if self.mode == "reduce-overhead" and BACKEND == "inductor":
            options["mode"] = "reduce-overhead"
        self.module = torch.compile(model, backend=BACKEND, **options)

    def graphs(self) -> dict | None:
        """Graphs compiled, graph breaks and CUDA-graph skips since this forward was built (None when nothing is
        compiled): a handful of graphs, no break and, under ``reduce-overhead`` on a GPU, no skip (inductor's count
        of graphs it ran without a CUDA graph, e.g. "mutated inputs"; on a CPU every graph counts: no CUDA)."""
        if self.mode == "off":
            return None
        return {name: value - self._start[name] for name, value in compile_counts().items()}


def compile_counts() -> dict[str, int]:
    """torch's process-wide compile counters (graphs, graph breaks, graphs run without a CUDA graph): callers
    difference them over the span they measure."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"])}


def tail_captured(mode, method) -> bool:
    """Whether this run compiles its optimizer tail (and so builds its optimizer capturable)."""
    return compile_mode(mode) == "reduce-overhead" and method.capturable_after_step


def capturable_tail(tail, backend: str | None = None):
    """``sora.train.step.optimizer_tail`` compiled: one graph for every step (the lr and τ are device tensors),
    a CUDA graph with inductor on a GPU. ``backend``: this module's ``BACKEND`` unless a benchmark says."""
    backend = backend or BACKEND
    options = {"mode": "reduce-overhead"} if backend == "inductor" else {}
    compiled = torch.compile(tail, backend=backend, **options)

    def run(method, optimizer, *args):
        optimizer._opt_called = True  # the LR scheduler's "step was called" flag: a host attribute, set on the host
        compiled(method, optimizer, *args)

    return run
