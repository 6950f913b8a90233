"""Wall time of a training epoch + evaluation on real MRPC and SST-2 (all-MiniLM-L6-v2, LoRA r=8, CPU):
the harness's batching (length-grouped training batches, dynamic padding, length-sorted evaluation) vs the
released code's static padding to the task's max_len in file/random order. Same run, same rows, interleaved.

The "epoch" is the first --train-rows rows of the train split (the whole split takes minutes per config on
2 cores); evaluation is the full dev split. Writes results/bench/e2e.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from sora.data.batching import encode, train_batches  # noqa: E402
from sora.data.glue import read_split  # noqa: E402
from sora.data.tasks import get_task  # noqa: E402
from sora.device import autocast_factory  # noqa: E402
from sora.metrics import compute_metrics  # noqa: E402
from sora.models import load_model, load_tokenizer  # noqa: E402
from sora.optim import build_optimizer  # noqa: E402
from sora.train.evaluate import predict  # noqa: E402
from sora.tuners.methods import build_method  # noqa: E402

MAX_LEN = {"mrpc": 320, "sst2": 128}  # the scripts' max_len per task
LORA = OmegaConf.create(dict(name="lora", r=8, lora_alpha=16, targets="all", head="trainable", lora_dropout=0.0))


def run(task_name: str, harness: bool, train_rows: int, data_dir: str, batch_size: int,
        precision: str = "bf16") -> dict:
    task = get_task(task_name)
    model_cfg = OmegaConf.load(ROOT / "conf" / "model" / "minilm.yaml")
    tok = load_tokenizer(model_cfg)
    max_len = MAX_LEN[task_name]
    train = encode(read_split(task, "train", data_dir).head(train_rows), task, tok, max_len)
    dev = encode(read_split(task, "validation", data_dir), task, tok, max_len)
    pad_to = None if harness else max_len
    method = build_method(load_model(model_cfg, task.num_labels, seed=0), LORA, total_steps=1000)
    model = method.model
    opt = build_optimizer(method.param_groups(5e-4, 0.01, 1e-8), (0.9, 0.999), torch.device("cpu"))
    autocast = autocast_factory(precision, torch.device("cpu"))
    t0 = time.perf_counter()
    tokens = real = 0
    for idx in train_batches(len(train), train.lengths, batch_size, seed=0, epoch=0, group_by_length=harness):
        batch = train.batch(idx, tok.pad_token_id, pad_to)
        tokens += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum())
        model.train()
        with autocast():
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = predict(model, dev, task, 64, tok.pad_token_id, "cpu", autocast,
                    sort_by_length=harness, pad_to=pad_to)
    t_eval = time.perf_counter() - t0
    return {"train_s": t_train, "eval_s": t_eval, "total_s": t_train + t_eval,
            "padding_waste_train": 1 - real / tokens, "metrics": compute_metrics(task.metrics, preds, dev.labels)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", nargs="*", default=["mrpc", "sst2"])
    ap.add_argument("--train-rows", type=int, default=640)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data-dir", default=str(ROOT / "data" / "glue_sample"))
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16",
                    help="bf16 autocast is the CPU default: it kept the metrics (results/bench/cpu_precision.md)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = ap.parse_args()
    result = {"model": "all-MiniLM-L6-v2 + peft LoRA r=8", "device": "cpu", "precision": args.precision,
              "threads": torch.get_num_threads(),
              "train_rows": args.train_rows, "batch_size": args.batch_size, "tasks": {}}
    for task in args.tasks:
        print(f"{task}: static padding to {MAX_LEN[task]} (released) ...", flush=True)
        static = run(task, False, args.train_rows, args.data_dir, args.batch_size, args.precision)
        print(f"{task}: harness batching ...", flush=True)
        harness = run(task, True, args.train_rows, args.data_dir, args.batch_size, args.precision)
        result["tasks"][task] = {
            "static": static, "harness": harness,
            "speedup_vs_static": static["total_s"] / harness["total_s"],
            "train_speedup": static["train_s"] / harness["train_s"],
            "eval_speedup": static["eval_s"] / harness["eval_s"],
        }
        print(json.dumps(result["tasks"][task], indent=1), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "e2e.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# One epoch ({args.train_rows} train rows, batch {args.batch_size}) + full-dev evaluation, "
             f"MiniLM + LoRA r=8, {args.precision}, CPU {torch.get_num_threads()} threads", "",
             "| task | static train / eval (s) | harness train / eval (s) | speedup train+eval | train | eval "
             "| padding waste static → harness | metrics static | metrics harness |", "|---|" + "---|" * 8]
    for task, r in result["tasks"].items():
        s, h = r["static"], r["harness"]
        lines.append(f"| {task} | {s['train_s']:.1f} / {s['eval_s']:.1f} | {h['train_s']:.1f} / {h['eval_s']:.1f} | "
                     f"{r['speedup_vs_static']:.2f}× | {r['train_speedup']:.2f}× | {r['eval_speedup']:.2f}× | "
                     f"{s['padding_waste_train']:.0%} → {h['padding_waste_train']:.0%} | "
                     + ", ".join(f"{k} {v:.4f}" for k, v in s["metrics"].items()) + " | "
                     + ", ".join(f"{k} {v:.4f}" for k, v in h["metrics"].items()) + " |")
    lines += ["", "Targets: speedup_vs_static >= 3 (train+eval, MRPC); eval alone >= 4x. The metrics differ a little "
              "because the two runs see the same rows in different batches (grouped vs file order)."]
    (out / "e2e.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
