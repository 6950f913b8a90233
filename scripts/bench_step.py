"""Train-step time per method, interleaved in one run: frozen floor, LoRA r=8 under each optimizer, SoRA r_max=8
(paper with torch AdamW, code with the release's transformers-4.x AdamW, as the CLI runs them), AdaLoRA 12->8, on
all-MiniLM-L6-v2 (real weights) and a DeBERTa-v3-base-shaped model (random weights).

A step is the CLI's own ``sora.train.step.train_step``: forward (+ SoRA code's L1 term, inside autocast) + backward
+ clip + optimizer.step + the method's after-step (SoRA's prox, AdaLoRA's update_and_allocate) + zero_grad, on a
fixed batch of 16 x 128 tokens. Repeats are interleaved (A B C ..., A B C ..., ...) so drift hits every method alike;
ratios are medians of per-repeat (paired) ratios, each SoRA variant over LoRA with the same optimizer. Writes
results/bench/step_time.{json,md}; a model benchmarked again replaces its own row, the others are kept.
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

from sora.device import autocast_factory, slow_bf16  # noqa: E402
from sora.models import load_model  # noqa: E402
from sora.optim import build_optimizer  # noqa: E402
from sora.train.step import train_step  # noqa: E402
from sora.tuners.methods import build_method  # noqa: E402

COMMON = dict(targets="all", head="trainable", lora_dropout=0.0)
METHODS = {  # name -> (method node, optimizer)
    "lora_r8": (dict(name="lora", r=8, lora_alpha=16), "adamw"),
    "lora_r8_legacy": (dict(name="lora", r=8, lora_alpha=16), "adamw_hf_legacy"),
    "sora_paper_r8": (dict(name="sora", r_max=8, lora_alpha=16, xi=0.5, variant="paper", gate_init=None,
                           l1_coef=0.0, gate_lr=None), "adamw"),
    "sora_code_r8": (dict(name="sora", r_max=8, lora_alpha=16, xi=1e-3, variant="code", gate_init=None,
                          l1_coef=10.0, gate_lr=None), "adamw_hf_legacy"),
    "adalora_12to8": (dict(name="adalora", init_r=12, target_r=8, lora_alpha=32, tinit=0, tfinal=0, deltaT=1,
                           beta1=0.85, beta2=0.85, orth_reg_weight=0.1, ref_steps=None), "adamw"),
}
PAIRS = {"sora_paper_over_lora": ("sora_paper_r8", "lora_r8"),  # each SoRA variant beside LoRA, same optimizer
         "sora_code_over_lora_legacy": ("sora_code_r8", "lora_r8_legacy"),
         "sora_paper_over_adalora": ("sora_paper_r8", "adalora_12to8"),
         "lora_over_floor": ("lora_r8", "frozen_floor")}
TARGET = 1.02  # issue 26: SoRA / LoRA on CPU, each variant with its own optimizer


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
    def __init__(self, model, spec, optimizer: str, total_steps: int, autocast):
        self.autocast = autocast
        self.method = build_method(model, OmegaConf.create({**COMMON, **spec}), total_steps=total_steps)
        self.trainable = [p for p in self.method.model.parameters() if p.requires_grad]
        self.opt = build_optimizer(self.method.param_groups(1e-4, 0.01, 1e-8), (0.9, 0.999), torch.device("cpu"),
                                   optimizer)
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
    for name, (spec, optimizer) in METHODS.items():
        runners[name] = Adapted(backbone(kind), spec, optimizer, total_steps=10 * total, autocast=autocast)
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

    return {"settings": {"repeats": repeats, "warmup": warmup, "batch": [batch, seq], "precision": precision,
                         "optimizers": {n: o for n, (_, o) in METHODS.items()}},
            "median_s": {n: statistics.median(v) for n, v in times.items()}, "times_s": times,
            "ratios": {name: paired(a, b) for name, (a, b) in PAIRS.items()}}


def markdown(result: dict) -> str:
    names = list(next(iter(result["models"].values()))["median_s"])
    lines = ["# Train-step time on CPU (the CLI's train_step; median of interleaved repeats)", "",
             f"Machine: {result['machine']['platform']}, {result['machine']['cpu_threads']} torch threads, torch "
             f"{result['machine']['torch']}.", "",
             "| model | precision, repeats | " + " | ".join(names) + " | " + " | ".join(PAIRS) + " |",
             "|---|---|" + "---|" * (len(names) + len(PAIRS))]
    for kind, r in result["models"].items():
        s = r["settings"]
        lines.append(f"| {kind} | {s['precision']}, {s['repeats']} | "
                     + " | ".join(f"{r['median_s'][n]:.3f} s" for n in names) + " | "
                     + " | ".join(f"{r['ratios'][p]:.3f}" for p in PAIRS) + " |")
    lines += ["", f"Ratios are medians of per-repeat ratios (paired). Each SoRA variant is over LoRA with its own "
              f"optimizer (paper: torch AdamW; code: the release's transformers-4.x AdamW). Target (issue 26): "
              f"SoRA / LoRA <= {TARGET} on MiniLM."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="*", default=["minilm", "deberta_v3_base_shape"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="auto: bf16 autocast where this CPU runs it natively, fp32 where it is emulated (~14x "
                         "slower, sora.device.slow_bf16)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = ap.parse_args()
    cpu = torch.device("cpu")
    precision = args.precision
    if precision == "auto":
        precision = "fp32" if slow_bf16("bf16", cpu) else "bf16"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "step_time.json"
    kept = json.loads(path.read_text()).get("models", {}) if path.exists() else {}
    kept = {k: v for k, v in kept.items() if "settings" in v}  # rows of this script's current layout only
    result = {"machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                          "torch": torch.__version__, "device": "cpu"}, "models": kept}
    for kind in args.models:
        print(f"benchmarking {kind} ({precision}) ...", flush=True)
        result["models"][kind] = bench(kind, args.repeats, args.warmup, args.batch, args.seq, precision)
        path.write_text(json.dumps(result, indent=2) + "\n")
        (out / "step_time.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
