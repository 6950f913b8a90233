"""Train-step time per method, interleaved in one run: frozen floor, LoRA r=8, SoRA r_max=8 (paper, code),
AdaLoRA 12->8, on all-MiniLM-L6-v2 (real weights) and a DeBERTa-v3-base-shaped model (random weights).

A step = forward + backward + clip + optimizer.step + the method's after-step hook (SoRA's prox, AdaLoRA's
update_and_allocate) + zero_grad, on a fixed batch of 16 x 128 tokens. Repeats are interleaved (A B C D E,
A B C D E, ...) so drift hits every method alike; ratios are medians of per-repeat (paired) ratios.
Writes results/bench/step_time.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification  # noqa: E402

from sora.device import autocast_factory  # noqa: E402
from sora.models import load_model  # noqa: E402
from sora.optim import build_optimizer  # noqa: E402
from sora.train.step import train_step  # noqa: E402
from sora.tuners.methods import build_method  # noqa: E402

COMMON = dict(targets="all", head="trainable", lora_dropout=0.0)
METHODS = {
    "lora_r8": dict(name="lora", r=8, lora_alpha=16),
    "sora_paper_r8": dict(name="sora", r_max=8, lora_alpha=16, xi=0.5, variant="paper", gate_init=None,
                          l1_coef=0.0, gate_lr=None),
    "sora_code_r8": dict(name="sora", r_max=8, lora_alpha=16, xi=1e-3, variant="code", gate_init=None,
                         l1_coef=10.0, gate_lr=None),
    "adalora_12to8": dict(name="adalora", init_r=12, target_r=8, lora_alpha=32, tinit=0, tfinal=0, deltaT=1,
                          beta1=0.85, beta2=0.85, orth_reg_weight=0.1, ref_steps=None),
}


def backbone(kind: str):
    if kind == "minilm":
        return load_model(OmegaConf.load(ROOT / "conf" / "model" / "minilm.yaml"), 2, seed=0)
    cfg = json.loads((ROOT / "tests" / "fixtures" / "deberta_v3_base_config.json").read_text())
    torch.manual_seed(0)
    return DebertaV2ForSequenceClassification(DebertaV2Config(**cfg, num_labels=2))


class Floor:
    """The frozen model with gradients flowing through it (inputs_embeds require grad): any adapter pays this."""

    def __init__(self, model, autocast):
        self.model, self.autocast = model.requires_grad_(False), autocast

    def step(self, batch):
        embeds = self.model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_()
        with self.autocast():
            out = self.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()


class Adapted:
    def __init__(self, model, spec, total_steps: int, autocast):
        self.autocast = autocast
        self.method = build_method(model, OmegaConf.create({**COMMON, **spec}), total_steps=total_steps)
        self.trainable = [p for p in self.method.model.parameters() if p.requires_grad]
        self.opt = build_optimizer(self.method.param_groups(1e-4, 0.01, 1e-8), (0.9, 0.999), torch.device("cpu"))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda _: 1.0)
        self.n = 0

    def step(self, batch):
        """The CLI's own step (``sora.train.step.train_step``: extra loss inside autocast, clip 0.1, prox)."""
        train_step(self.method.model, batch, self.method, self.opt, self.sched, self.n, self.trainable, 0.1,
                   self.autocast)
        self.n += 1


def bench(kind: str, repeats: int, warmup: int, batch: int, seq: int, precision: str = "bf16") -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    vocab = 30522 if kind == "minilm" else 128000
    data = {"input_ids": torch.randint(1000, vocab - 1, (batch, seq), generator=gen),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long), "labels": torch.randint(0, 2, (batch,))}
    total = warmup + repeats
    autocast = autocast_factory(precision, torch.device("cpu"))
    runners = {"frozen_floor": Floor(backbone(kind), autocast)}
    for name, spec in METHODS.items():
        runners[name] = Adapted(backbone(kind), spec, total_steps=10 * total, autocast=autocast)
    times = {name: [] for name in runners}
    for rep in range(total):
        for name, runner in runners.items():
            t = time.perf_counter()
            runner.step(data)
            if rep >= warmup:
                times[name].append(time.perf_counter() - t)
        print(f"  {kind} repeat {rep + 1}/{total}: " + ", ".join(f"{n}={v[-1]:.3f}s" for n, v in times.items()
                                                                   if v), flush=True)

    def paired(a, b):
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    med = {n: statistics.median(v) for n, v in times.items()}
    return {
        "median_s": med, "times_s": times,
        "sora_over_lora": {v: paired(v, "lora_r8") for v in ("sora_paper_r8", "sora_code_r8")},
        "sora_over_adalora": {v: paired(v, "adalora_12to8") for v in ("sora_paper_r8", "sora_code_r8")},
        "lora_over_floor": paired("lora_r8", "frozen_floor"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="*", default=["minilm", "deberta_v3_base_shape"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16",
                    help="bf16 autocast is the CPU default: it kept the metrics (results/bench/cpu_precision.md)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    result = {"machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                          "torch": torch.__version__, "device": "cpu", "dtype": args.precision},
              "batch": [args.batch, args.seq], "repeats": args.repeats, "warmup": args.warmup, "models": {}}
    for kind in args.models:
        print(f"benchmarking {kind} ...", flush=True)
        result["models"][kind] = bench(kind, args.repeats, args.warmup, args.batch, args.seq, args.precision)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_time.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Train-step time ({args.batch} x {args.seq} tokens, {args.precision}, CPU, "
             f"{torch.get_num_threads()} threads; "
             f"median of {args.repeats} interleaved repeats)", "",
             "| model | " + " | ".join(next(iter(result["models"].values()))["median_s"]) + " | SoRA/LoRA (paper, code)"
             " | SoRA/AdaLoRA (paper, code) | LoRA/floor |", "|---|" + "---|" * 8]
    for kind, r in result["models"].items():
        lines.append(f"| {kind} | " + " | ".join(f"{v:.3f} s" for v in r["median_s"].values()) +
                     f" | {r['sora_over_lora']['sora_paper_r8']:.3f}, {r['sora_over_lora']['sora_code_r8']:.3f}"
                     f" | {r['sora_over_adalora']['sora_paper_r8']:.3f}, {r['sora_over_adalora']['sora_code_r8']:.3f}"
                     f" | {r['lora_over_floor']:.3f} |")
    lines += ["", "Ratios are medians of per-repeat ratios (paired). Target: sora_over_lora <= 1.05."]
    (out / "step_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
