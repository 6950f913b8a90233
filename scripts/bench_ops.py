"""Aten ops in one full training step, LoRA vs SoRA, counted on CPU (issue 26): SoRA's step on a GPU is host-bound,
so its cost beyond LoRA is its extra kernel launches, and those can be counted on any machine.

One step = ``sora.train.step.train_step`` as the CLI runs it: forward (+ the method's extra loss), backward, global
grad-norm clip, optimizer step, the method's after-step hook (SoRA's prox), scheduler, zero_grad. Every aten op
dispatched in it is counted with a ``TorchDispatchMode`` (backward ops included: the autograd engine runs them under
the caller's dispatch modes on CPU). Each SoRA variant is compared with LoRA under the same optimizer, in the
implementation a GPU runs: torch AdamW ``fused=True`` for the paper variant, the release's multi-tensor legacy AdamW
for the code variant. A tiny DeBERTa-v2 (conf/model/tiny.yaml) at 2 and 12 layers, batch 4 x 16, fp32 and bf16
autocast. The extra ops are fitted as ``per_module x gated modules + per_step`` from the two depths (6 gated
modules per layer). Target (issue 26): per_module <= 2 and per_step <= 20. Writes results/bench/op_count.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from sora.device import autocast_factory  # noqa: E402
from sora.models import load_model  # noqa: E402
from sora.optim import LegacyAdamW  # noqa: E402
from sora.train.step import train_step  # noqa: E402
from sora.tuners.methods import build_method  # noqa: E402

COMMON = dict(targets="all", head="trainable", lora_dropout=0.0)
LORA = dict(name="lora", r=8, lora_alpha=16)
SORA = {"paper": dict(name="sora", r_max=8, lora_alpha=16, xi=0.5, variant="paper", gate_init=None, l1_coef=0.0,
                      gate_lr=None, prox=None),
        "code": dict(name="sora", r_max=8, lora_alpha=16, xi=1e-3, variant="code", gate_init=None, l1_coef=10.0,
                     gate_lr=None, prox=None)}
OPTIMIZER = {"paper": "adamw_fused", "code": "adamw_hf_legacy"}
TARGET_PER_MODULE, TARGET_PER_STEP = 2, 20
# ops that only make a new view of a tensor's metadata: dispatched, but they launch no kernel on a GPU
VIEW_OPS = {"aten.view", "aten.detach", "aten.expand", "aten.select", "aten.alias", "aten._unsafe_view", "aten.t",
            "aten.transpose", "aten.as_strided", "aten.unsqueeze", "aten.squeeze", "aten.slice", "aten.permute",
            "aten.split", "aten.split_with_sizes", "aten.reshape", "aten._reshape_alias", "aten.unbind"}


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched while active, by overload packet (``aten.mm``, ``aten._foreach_add_``...)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def optimizer(groups, kind: str):
    if kind == "adamw_fused":
        return torch.optim.AdamW(groups, betas=(0.9, 0.999), fused=True)
    return LegacyAdamW(groups, betas=(0.9, 0.999))


def count_step(spec: dict, layers: int, precision: str, opt_kind: str) -> tuple[Counter, int]:
    """The ops of the second step (the first creates the optimizer state), and the number of adapted modules."""
    cfg = OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml")
    cfg.config.num_hidden_layers = layers
    method = build_method(load_model(cfg, 2, seed=0), OmegaConf.create({**COMMON, **spec}), total_steps=100)
    model = method.model
    opt = optimizer(method.param_groups(1e-3, 0.01, 1e-8), opt_kind)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, 1000, (4, 16), generator=g), "attention_mask": torch.ones(4, 16,
             dtype=torch.long), "labels": torch.randint(0, 2, (4,), generator=g)}
    autocast = autocast_factory(precision, torch.device("cpu"))
    train_step(model, batch, method, opt, sched, 0, trainable, 1.0, autocast)
    with OpCounter() as counter:
        train_step(model, batch, method, opt, sched, 1, trainable, 1.0, autocast)
    return counter.counts, len(method.ranks())


def fit(extra_small: float, modules_small: int, extra_large: float, modules_large: int) -> tuple[float, float]:
    """extra = per_module x modules + per_step, through the two depths."""
    per_module = (extra_large - extra_small) / (modules_large - modules_small)
    return per_module, extra_small - per_module * modules_small


def measure(layers=(2, 12), precisions=("fp32", "bf16")) -> list[dict]:
    rows = []
    for variant, spec in SORA.items():
        for precision in precisions:
            cells = {}
            for n_layers in layers:
                lora, modules = count_step(LORA, n_layers, precision, OPTIMIZER[variant])
                sora, _ = count_step(spec, n_layers, precision, OPTIMIZER[variant])
                extra = Counter(sora)
                extra.subtract(lora)
                cells[n_layers] = {"lora": sum(lora.values()), "sora": sum(sora.values()), "modules": modules,
                                   "extra_by_op": {k: v for k, v in extra.most_common() if v}}
            small, large = (cells[n] for n in layers)
            per_module, per_step = fit(small["sora"] - small["lora"], small["modules"],
                                       large["sora"] - large["lora"], large["modules"])
            compute = [sum(v for k, v in c["extra_by_op"].items() if k not in VIEW_OPS) for c in (small, large)]
            per_module_compute, per_step_compute = fit(compute[0], small["modules"], compute[1], large["modules"])
            rows.append({"variant": variant, "optimizer": OPTIMIZER[variant], "precision": precision,
                         "per_module": per_module, "per_step": per_step, "by_layers": cells,
                         "per_module_without_views": per_module_compute, "per_step_without_views": per_step_compute,
                         "pass": per_module <= TARGET_PER_MODULE and per_step <= TARGET_PER_STEP})
    return rows


def render(rows: list[dict]) -> str:
    lines = ["# Aten ops per training step: SoRA beyond LoRA (same optimizer), counted on CPU", "",
             f"Made by `python scripts/bench_ops.py` (torch {torch.__version__}, {platform.machine()}). Tiny "
             "DeBERTa-v2, batch 4 x 16, one full `train_step` after a first step; extra = SoRA ops - LoRA ops, "
             "fitted as per_module x gated modules + per_step over 2 and 12 layers (12 and 72 gated modules). "
             f"Target: per_module <= {TARGET_PER_MODULE}, per_step <= {TARGET_PER_STEP}.", "",
             "| variant | optimizer | precision | LoRA ops (2 / 12 layers) | SoRA ops (2 / 12 layers) | extra per "
             "gated module | extra per step | without view ops: per module / per step | target |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, b = (r["by_layers"][k] for k in sorted(r["by_layers"], key=int))
        lines.append(f"| {r['variant']} | {r['optimizer']} | {r['precision']} | {s['lora']} / {b['lora']} | "
                     f"{s['sora']} / {b['sora']} | {r['per_module']:.2f} | {r['per_step']:.1f} | "
                     f"{r['per_module_without_views']:.2f} / {r['per_step_without_views']:.1f} | "
                     f"{'PASS' if r['pass'] else 'FAIL'} |")
    lines += ["", "Largest extra ops at 12 layers (SoRA - LoRA):", ""]
    for r in rows:
        top = list(max(r["by_layers"].items(), key=lambda kv: int(kv[0]))[1]["extra_by_op"].items())[:8]
        lines.append(f"- {r['variant']} {r['precision']}: " + ", ".join(f"{k} {v:+d}" for k, v in top))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "op_count"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = measure()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    Path(args.out + ".md").write_text(render(rows))
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
