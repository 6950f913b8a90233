"""What a sweep costs before it runs: the tokens our batching processes vs static padding, and the hours.

Budgeting a sweep from "rows x max_len" overstates it several times (GLUE rows are short), so the counts here come
from the training code itself: the sweep is expanded as Hydra's basic sweeper expands it, each job's config is
composed, its splits are the ones ``protocol_splits`` gives, tokenised by ``encode`` (its npz cache included), and
the batches are the ones ``train_batches`` / ``eval_batches`` yield over the run's steps and evaluation points
(``sora.train.plan.run_plan``: the plan the loop itself follows). A batch costs ``rows x width`` tokens, width = its
longest row or ``pad_to``, exactly as ``Encoded.batch`` builds it. Static = the same row passes x ``max_len``.

Where a split is absent (MNLI/QNLI train, QQP, RTE are not in ../shared/glue) its rows are GLUE's published
count and its lengths are resampled from a present split (the same task's other split, else a proxy task of the
same shape); every such row says so. Hours = tokens / a measured tokens/s (``--tokens-per-s`` or a
``results/bench/step_time.json``), to first order: per-token time is taken as constant across sequence lengths.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sora.data.batching import encode, eval_batches, length_buckets, pad_width, train_batches
from sora.data.glue import HELDOUT_TRAIN, protocol_splits, read_split, released_order
from sora.data.tasks import Task, get_task
from sora.errors import UserError

# nyu-mll/glue row counts (the AdaLoRA scripts' ref_steps use the same train counts)
GLUE_ROWS = {
    ("cola", "train"): 8551, ("cola", "validation"): 1043,
    ("sst2", "train"): 67349, ("sst2", "validation"): 872,
    ("mrpc", "train"): 3668, ("mrpc", "validation"): 408,
    ("stsb", "train"): 5749, ("stsb", "validation"): 1500,
    ("qqp", "train"): 363846, ("qqp", "validation"): 40430,
    ("mnli", "train"): 392702, ("mnli", "validation_matched"): 9815, ("mnli", "validation_mismatched"): 9832,
    ("qnli", "train"): 104743, ("qnli", "validation"): 5463,
    ("rte", "train"): 2490, ("rte", "validation"): 277,
    ("wnli", "train"): 635, ("wnli", "validation"): 71,
}
# A task with no split present borrows lengths from the first present task here (same shape: one sentence or a
# pair): an assumption, stated per row with its likely direction where one is known (PROXY_BIAS).
PROXIES = {
    "qqp": ("mnli", "qnli", "stsb", "mrpc"), "rte": ("mrpc", "qnli", "mnli", "stsb"),
    "wnli": ("rte", "mrpc", "stsb", "mnli"), "mnli": ("qnli", "stsb", "mrpc"), "qnli": ("mnli", "mrpc", "stsb"),
    "mrpc": ("stsb", "mnli", "qnli"), "stsb": ("mrpc", "mnli", "qnli"), "cola": ("sst2",), "sst2": ("cola",),
}
PROXY_BIAS = {
    ("qqp", "mnli"): "Quora question pairs are likely a little shorter than MNLI premise/hypothesis pairs: leans high",
    ("rte", "mrpc"): "RTE premises are often longer than MRPC's news sentences: leans low",
}
RESAMPLE_SEED = 0
# An evaluation token (forward only) in training-token units: step_time.json's frozen floor (forward + the
# activation backward, ~2 forwards) 5.88 s / 2 over the LoRA step 7.59 s = 0.39 on the DeBERTa-v3-base shape.
EVAL_COST = 0.4
BENCH_MODELS = {"deberta_v3_base": "deberta_v3_base_shape", "minilm": "minilm"}


# ---------------------------------------------------------------- the sweep


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Every job's override list, as Hydra's basic sweeper builds it: the config's ``hydra.sweeper.params``
    first, then the command line (a command-line key replaces the config's list), then the product."""
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from sora.config import hydra_context

    parser = OverridesParser.create()
    parsed = _hydra_call(parser.parse_overrides, overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    with hydra_context():
        cfg = _hydra_call(compose, config_name="train", overrides=fixed, return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    return BasicSweeper.split_arguments(_hydra_call(parser.parse_overrides, args), None)[0]


def compose_jobs(jobs: list[list[str]]) -> list:
    """Each job's config, composed as the launcher composes it (one Hydra context for all)."""
    from hydra import compose

    from sora.config import hydra_context

    with hydra_context():
        return [_hydra_call(compose, config_name="train", overrides=job) for job in jobs]


def _hydra_call(fn, *args, **kwargs):
    """Hydra's composition errors are long: one line naming the override instead."""
    try:
        return fn(*args, **kwargs)
    except UserError:
        raise
    except Exception as exc:  # hydra raises several types (ConfigCompositionException, OverrideParseException...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot compose the config: {first}") from None


# ---------------------------------------------------------------- token counts


def batch_tokens(batches: list[np.ndarray], lengths: np.ndarray,
                 pad_to: int | tuple[int, ...] | None) -> tuple[int, int, int]:
    """(padded tokens, real tokens, rows) of these batches: ``Encoded.batch`` pads each to its longest row, or
    to ``pad_to`` (one width, or the smallest length bucket that holds it); so a batch is ``rows x width`` tokens
    of which ``sum(lengths)`` are real."""
    batches = [b for b in batches if len(b)]
    if not batches:
        return 0, 0, 0
    idx = np.concatenate(batches)
    sizes = np.fromiter((len(b) for b in batches), dtype=np.int64, count=len(batches))
    widths = np.full(len(batches), pad_to, np.int64) if isinstance(pad_to, int) else \
        np.maximum.reduceat(lengths[idx], np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    if isinstance(pad_to, tuple):  # length buckets: each batch at the smallest width that holds its longest row
        widths = np.array([pad_width(int(w), pad_to) for w in widths], np.int64)
    return int((sizes * widths).sum()), int(lengths[idx].sum()), int(sizes.sum())


def train_tokens(lengths: np.ndarray, batch_size: int, seed: int, steps: int, steps_per_epoch: int,
                 group_by_length: bool, pad_to: int | tuple[int, ...] | None) -> tuple[int, int, int]:
    """The loop's steps 0..steps-1: step s trains batch ``s % spe`` of epoch ``s // spe``'s ``train_batches``."""
    padded = real = rows = 0
    for epoch in range(math.ceil(steps / steps_per_epoch)):
        take = min(steps_per_epoch, steps - epoch * steps_per_epoch)
        batches = train_batches(len(lengths), lengths, batch_size, seed, epoch, group_by_length)[:take]
        p, r, n = batch_tokens(batches, lengths, pad_to)
        padded, real, rows = padded + p, real + r, rows + n
    return padded, real, rows


# ---------------------------------------------------------------- the splits' lengths


@dataclass
class SplitLengths:
    """Tokens per row of one protocol split (after ``encode``'s truncation), and where they come from."""

    lengths: np.ndarray
    exact: bool
    note: str


class Lengths:
    """Each (task, protocol, max_len, data) split's lengths, computed once per process (15 runs share them)."""

    def __init__(self):
        self._tokenizers: dict = {}
        self._splits: dict = {}

    def tokenizer(self, model_cfg):
        from sora.models import load_tokenizer

        key = str(model_cfg.get("tokenizer") or model_cfg.source)
        if key not in self._tokenizers:
            self._tokenizers[key] = load_tokenizer(model_cfg)
        return self._tokenizers[key]

    def for_job(self, cfg) -> dict[str, SplitLengths]:
        task, d = get_task(cfg.task.name), cfg.data
        key = (task.name, cfg.eval.protocol, d.max_len, d.dir, d.get("revision"),
               str(cfg.model.get("tokenizer") or cfg.model.source), d.get("cache_dir"))
        if key not in self._splits:
            self._splits[key] = self._compute(task, cfg)
        return self._splits[key]

    def _compute(self, task: Task, cfg) -> dict[str, SplitLengths]:
        tok, d = self.tokenizer(cfg.model), cfg.data
        raw = {s: _read_or_none(task, s, d.dir, d.get("revision")) for s in ("train", *task.dev_splits)}
        if all(df is not None for df in raw.values()):  # every file present: the loop's own split code
            frames = protocol_splits(task, d.dir, cfg.eval.protocol, d.get("revision"))
            once = {id(df): SplitLengths(encode(df, task, tok, d.max_len, d.get("cache_dir")).lengths, True,
                                         f"{len(df):,} rows read") for df in frames.values()}
            return {name: once[id(df)] for name, df in frames.items()}  # the same rows stay one object, as in the loop
        present = {s: encode(df, task, tok, d.max_len, d.get("cache_dir")).lengths
                   for s, df in raw.items() if df is not None}
        split_lengths = {s: SplitLengths(v, True, f"{len(v):,} rows read") for s, v in present.items()}
        for s in (s for s, df in raw.items() if df is None):
            split_lengths[s] = self._estimate(task, s, present, cfg, tok)
        return protocol_lengths(task, split_lengths, cfg.eval.protocol)

    def _estimate(self, task: Task, split: str, present: dict, cfg, tok) -> SplitLengths:
        """GLUE's row count, lengths resampled (seeded, with replacement) from a present split."""
        n = GLUE_ROWS[(task.source, split)]
        where = _data_where(cfg.data.dir)
        if present:
            donor_split = "train" if "train" in present else next(iter(present))
            donor, name = present[donor_split], f"{task.source}/{donor_split}"
            how = f"lengths resampled from {name}"
        else:
            donor, name = self._proxy(task, cfg, tok)
            bias = PROXY_BIAS.get((task.source, name.split("/")[0]))
            how = f"no {task.source} split {where}; ASSUMED like proxy task {name}" + (f" ({bias})" if bias else "")
        lengths = np.random.default_rng(RESAMPLE_SEED).choice(donor, size=n, replace=True)
        note = (f"ESTIMATED {task.source}/{split}: absent {where}; {n:,} rows (GLUE count), {how} "
                f"({len(donor):,} rows, mean {donor.mean():.1f} tokens)")
        return SplitLengths(lengths, False, note)

    def _proxy(self, task: Task, cfg, tok) -> tuple[np.ndarray, str]:
        d = cfg.data
        for other in PROXIES.get(task.source, ()):
            proxy = get_task(other)
            for split in ("train", *proxy.dev_splits):
                df = _read_or_none(proxy, split, d.dir, d.get("revision"))
                if df is not None:
                    return encode(df, proxy, tok, d.max_len, d.get("cache_dir")).lengths, f"{other}/{split}"
        raise UserError(f"no {task.source} split and no proxy task ({', '.join(PROXIES.get(task.source, ()))}) "
                        f"{_data_where(d.dir)}; set data.dir=<a folder of GLUE TSVs> (e.g. ../shared/glue)")


def _read_or_none(task: Task, split: str, data_dir, revision):
    """The split's rows, or None where its file is absent (hub: unreachable); other bad input still raises."""
    if data_dir and Path(data_dir).is_dir():
        root = Path(data_dir) / task.source
        if not any((root / f"{split}{ext}").exists() for ext in (".tsv.gz", ".tsv")):
            return None
    elif not data_dir:
        try:
            return read_split(task, split, None, revision)
        except UserError:
            return None
    return read_split(task, split, data_dir, revision)


def _data_where(data_dir) -> str:
    return f"in {data_dir}" if data_dir else "on the hub (unreachable)"


def protocol_lengths(task: Task, raw: dict[str, SplitLengths], protocol: str) -> dict[str, SplitLengths]:
    """``protocol_splits``'s row selection applied to per-row lengths (used where a file is absent; the tests
    check it against ``protocol_splits`` itself)."""
    if protocol not in ("best_on_dev", "sora_split"):
        raise UserError(f"eval.protocol must be best_on_dev or sora_split, got {protocol!r}")
    if protocol == "best_on_dev":
        dev0 = task.dev_splits[0]
        return {"train": raw["train"], "select": raw[dev0], **{f"report/{s}": raw[s] for s in task.dev_splits}}
    dev_name, train, dev = task.dev_splits[0], raw["train"], raw[task.dev_splits[0]]

    def rows(split: SplitLengths, idx: np.ndarray) -> SplitLengths:
        return SplitLengths(split.lengths[idx], split.exact, split.note)

    if task.large:
        order = released_order(len(train.lengths))
        return {"train": rows(train, order[HELDOUT_TRAIN:]), "select": rows(train, order[:HELDOUT_TRAIN]),
                f"report/{dev_name}": dev}
    order, half = released_order(len(dev.lengths)), len(dev.lengths) // 2
    return {"train": train, "select": rows(dev, order[:half]), f"report/{dev_name}": rows(dev, order[half:])}


# ---------------------------------------------------------------- one job


@dataclass
class JobCost:
    """One run's token bill: ours (length-grouped, padded to the batch max) vs static (every row at max_len)."""

    overrides: list[str]
    task: str
    method: str
    model: str
    seed: int
    rate_key: str  # method, or sora:<variant> (the bench times the variants apart)
    max_len: int
    steps: int
    evals: int
    train: dict = field(default_factory=dict)  # ours, real, static, rows
    eval: dict = field(default_factory=dict)
    exact: bool = True
    notes: list[str] = field(default_factory=list)


def job_cost(cfg, overrides: list[str], splits: dict[str, SplitLengths]) -> JobCost:
    """The loop's own plan (``run_plan``: length, stages, evaluation cadence) over these splits' lengths."""
    from sora.train.plan import memorization_rows, run_plan
    from sora.tuners.methods import method_class

    t, d = cfg.train, cfg.data
    pad_to = d.max_len if d.pad_to_max_len else length_buckets(d.max_len, d.get("pad_buckets", 0))
    train = splits["train"].lengths
    plan = run_plan(cfg, len(train))  # the loop's own plan: length, stages, eval cadence
    steps, n_evals = plan.end, plan.n_evals()
    evaluated = {k: v for k, v in splits.items() if k == "select" or k.startswith("report/")}
    if plan.sparsifying:
        evaluated["memorization"] = SplitLengths(train[memorization_rows(len(train))], splits["train"].exact, "")
    ours, real, rows = train_tokens(train, t.batch_size, cfg.seed, steps, plan.steps_per_epoch, d.group_by_length,
                                    pad_to)
    e_ours = e_real = e_rows = 0
    for s in {id(s): s for s in evaluated.values()}.values():  # select = report/<dev> (best_on_dev): evaluated once
        p, r, n = batch_tokens(eval_batches(s.lengths, cfg.eval.batch_size, d.sort_eval_by_length), s.lengths, pad_to)
        e_ours, e_real, e_rows = e_ours + p, e_real + r, e_rows + n
    notes = sorted({s.note for s in splits.values() if not s.exact})
    return JobCost(
        overrides=list(overrides), task=cfg.task.name, method=cfg.method.name, model=cfg.model.name,
        seed=int(cfg.seed),
        rate_key=method_class(cfg.method.name).rate_key(cfg.method),
        max_len=d.max_len, steps=steps, evals=n_evals,
        train={"ours": ours, "real": real, "static": rows * d.max_len, "rows": rows},
        eval={"ours": n_evals * e_ours, "real": n_evals * e_real, "static": n_evals * e_rows * d.max_len,
              "rows": n_evals * e_rows},
        exact=not notes, notes=notes)


def sweep_configs(overrides: list[str]) -> tuple[list[list[str]], list]:
    """(each job's overrides, its composed and validated config) for the sweep these overrides name."""
    jobs = expand_sweep(overrides)
    cfgs = compose_jobs(jobs)
    for cfg in cfgs:
        _check_job(cfg)
    return jobs, cfgs


def estimate(jobs: list[list[str]], cfgs: list, progress=None) -> list[JobCost]:
    """Every job costed (the splits' lengths computed once per task, protocol, max_len and data)."""
    lengths = Lengths()
    out = []
    for i, (job, cfg) in enumerate(zip(jobs, cfgs)):
        out.append(job_cost(cfg, job, lengths.for_job(cfg)))
        if progress:
            progress(f"[{i + 1}/{len(jobs)}] {' '.join(job)}")
    return out


def _check_job(cfg) -> None:
    from sora.validate import validate_run_config

    validate_run_config(cfg, hub=False)  # the estimate reads the tokenizer and data only
    get_task(cfg.task.name)


# ---------------------------------------------------------------- throughput and hours


@dataclass
class Rate:
    """Training tokens per second (per method where the bench measured each), and what measured it."""

    per_method: dict[str, float]
    default: float | None
    source: str
    device: str
    eval_cost: float = EVAL_COST

    def tokens_per_s(self, method: str) -> float:
        value = self.per_method.get(method, self.default)
        if value is None:
            raise UserError(f"{self.source} has no rate for method {method!r}; give --tokens-per-s N")
        return value

    def hours(self, method: str, train: int, eval_: int) -> float:
        return (train + self.eval_cost * eval_) / self.tokens_per_s(method) / 3600


def rate_from_flag(tokens_per_s: float, device: str, eval_cost: float = EVAL_COST) -> Rate:
    if not tokens_per_s > 0:
        raise UserError(f"--tokens-per-s must be > 0, got {tokens_per_s}")
    return Rate({}, float(tokens_per_s), "--tokens-per-s", device, eval_cost)


def rate_from_bench(path: str | Path, model_name: str, eval_cost: float = EVAL_COST) -> Rate:
    """``scripts/bench_step.py``'s step_time.json: tokens/s = batch x seq / median step time, per method
    (SoRA by its variant), for the bench model that stands for ``model_name``."""
    path = Path(path)
    try:
        bench = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read --bench {str(path)!r} ({type(exc).__name__}); give a step_time.json from "
                        f"scripts/bench_step.py or --tokens-per-s N") from None
    key = BENCH_MODELS.get(model_name, model_name)
    entry = bench.get("models", {}).get(key)
    settings = (entry or {}).get("settings", {})  # per model since the benchmark keeps each model's own row
    batch = settings.get("batch") or bench.get("batch")
    if entry is None or not batch:
        raise UserError(f"--bench {str(path)!r} has no step time for model {key!r} (a step_time.json from "
                        f"scripts/bench_step.py is needed); give --tokens-per-s N instead")
    tokens = batch[0] * batch[1]
    med = entry["median_s"]
    per = {"lora": med.get("lora_r8"), "adalora": med.get("adalora_12to8"),  # each with the optimizer it runs
           "sora:paper": med.get("sora_paper_r8"), "sora:code": med.get("sora_code_r8")}
    machine = bench.get("machine", {})
    dtype = settings.get("precision") or machine.get("dtype", "?")
    device = (f"{machine.get('device', '?')}, {machine.get('cpu_threads', '?')} threads, {dtype}"
              f" ({key}, {batch[0]} x {batch[1]} tokens)")
    return Rate({m: tokens / s for m, s in per.items() if s}, None, str(path), device, eval_cost)



# ---------------------------------------------------------------- the table


def summarise(costs: list[JobCost], rate: Rate | None) -> tuple[list[dict], dict, list[str]]:
    """(one row per task x method in sweep order, the totals, the estimate notes): tokens summed over runs."""
    groups: dict[tuple, list[JobCost]] = defaultdict(list)
    for c in costs:
        groups[(c.task, c.method)].append(c)
    notes = sorted({n for c in costs for n in c.notes})
    rows = [_row({"task": task, "method": method}, jobs, rate, notes) for (task, method), jobs in groups.items()]
    return rows, _row({"task": "total", "method": ""}, costs, rate, notes), notes


def _row(head: dict, jobs: list[JobCost], rate: Rate | None, notes: list[str]) -> dict:
    row = {**head, "runs": len(jobs), "max_len": sorted({j.max_len for j in jobs}),
           "steps": sorted({j.steps for j in jobs}), "evals": sorted({j.evals for j in jobs})}
    for part in ("train", "eval"):
        for kind in ("ours", "real", "static", "rows"):
            row[f"{part}_{kind}"] = sum(j.__dict__[part][kind] for j in jobs)
    row["total_ours"] = row["train_ours"] + row["eval_ours"]
    row["total_static"] = row["train_static"] + row["eval_static"]
    row["static_over_ours"] = row["total_static"] / row["total_ours"] if row["total_ours"] else None
    if rate is not None:
        row["weighted_ours"] = row["train_ours"] + rate.eval_cost * row["eval_ours"]
        row["weighted_static"] = row["train_static"] + rate.eval_cost * row["eval_static"]
        row["hours_ours"] = sum(rate.hours(j.rate_key, j.train["ours"], j.eval["ours"]) for j in jobs)
        row["hours_static"] = sum(rate.hours(j.rate_key, j.train["static"], j.eval["static"]) for j in jobs)
    row["exact"] = all(j.exact for j in jobs)
    row["notes"] = sorted({notes.index(n) + 1 for j in jobs for n in j.notes})
    return row


def _tokens(n: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f}"


def _hours(h: float) -> str:
    return f"{h:,.1f}" if h >= 10 else f"{h:.3g}"


def _span(values: list) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def render_markdown(title: str, rows: list[dict], total: dict, notes: list[str], rate: Rate | None,
                    command: str | None = None) -> str:
    """The table a person budgets from, with every assumption spelled out under it."""
    hours = rate is not None
    head = ["task", "method", "runs", "max_len", "steps/run", "evals/run", "train ours", "train static",
            "eval ours", "eval static", "total ours", "total static", "static/ours"]
    head += ["hours ours", "hours static"] if hours else []
    made = f"Made by `python scripts/estimate_cost.py {command or title}` (sora/cost.py)."
    lines = [f"# Sweep cost: `{title}`", "", made, "", *_preamble(rate), "", "| " + " | ".join(head + ["data"]) + " |",
             "|" + "---|" * (len(head) + 1)]
    for r in [*rows, total]:
        cells = [r["task"], r["method"], str(r["runs"]), _span(r["max_len"]), _span(r["steps"]), _span(r["evals"]),
                 *(_tokens(r[k]) for k in ("train_ours", "train_static", "eval_ours", "eval_static", "total_ours",
                                           "total_static")), f"{r['static_over_ours']:.2f}x"]
        cells += [_hours(r["hours_ours"]), _hours(r["hours_static"])] if hours else []
        cells.append("exact" if r["exact"] else "estimated: notes " + ", ".join(map(str, r["notes"])))
        if r is total:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    waste = 1 - total["train_real"] / total["train_ours"] if total["train_ours"] else 0
    waste_static = 1 - total["train_real"] / total["train_static"] if total["train_static"] else 0
    lines += ["", f"Training padding: ours {waste:.1%} of the tokens processed, static {waste_static:.1%} "
                  f"(real tokens {_tokens(total['train_real'])})."]
    if hours:
        lines += ["", f"Hours at another measured rate R tokens/s (a GPU's, say) = weighted tokens / R / 3600: "
                      f"weighted tokens (train + {rate.eval_cost:g} x eval) ours {_tokens(total['weighted_ours'])}, "
                      f"static {_tokens(total['weighted_static'])}; or rerun with `--tokens-per-s R`."]
    if notes:
        lines += ["", "Estimated splits (rows that say `estimated`):", ""]
        lines += [f"{i}. {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


def _preamble(rate: Rate | None) -> list[str]:
    out = ["Tokens = every position of every batch the run feeds the model (padding included), summed over the "
           "sweep's runs. **ours**: the harness as configured (length-grouped training batches and length-sorted "
           "evaluation batches, each padded to its longest row); **static**: the same rows, each padded to the "
           "task's `data.max_len`. Evaluation counts every split the loop evaluates at every evaluation point "
           "(`select` and each `report/<dev>`; under `best_on_dev` the selection set is a report set, evaluated once)."]
    if rate is not None:
        rates = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(rate.per_method.items())) or f"{rate.default:,.0f}"
        out += ["", f"Hours = (train tokens + {rate.eval_cost:g} x eval tokens) / tokens per second; tokens/s "
                    f"{rates} from {rate.source} ({rate.device}). Per-token time is taken as constant across "
                    f"sequence lengths (first order: attention's share grows with length, so static hours are a "
                    f"lower bound). An evaluation token counts {rate.eval_cost:g} of a training token (forward only)."]
    return out


def report_json(title: str, overrides: list[str], costs: list[JobCost], rate: Rate | None) -> dict:
    rows, total, notes = summarise(costs, rate)
    return {"sweep": title, "overrides": list(overrides), "runs": len(costs),
            "rate": None if rate is None else asdict(rate), "rows": rows, "total": total, "notes": notes,
            "jobs": [asdict(c) for c in costs]}


# ---------------------------------------------------------------- the command line


def main(argv: list[str]) -> dict:
    """``scripts/estimate_cost.py``: Hydra overrides plus the rate flags; prints the table, writes --out."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="estimate_cost.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as for scripts/train.py (experiment=...)")
    ap.add_argument("-m", "--multirun", action="store_true", help="accepted and ignored: the sweep is always expanded")
    ap.add_argument("--tokens-per-s", type=float, help="measured training tokens/s on the target device")
    ap.add_argument("--device", default="device not named: --device NAME", help="what measured --tokens-per-s")
    ap.add_argument("--bench", help="a step_time.json from scripts/bench_step.py (tokens/s per method)")
    ap.add_argument("--eval-cost", type=float, default=EVAL_COST, help="an eval token in training-token units")
    ap.add_argument("--out", help="write <OUT>.md and <OUT>.json (e.g. results/bench/estimate_paper_table1)")
    args = ap.parse_args(argv)
    if (args.tokens_per_s is None) == (args.bench is None):
        raise UserError("give exactly one of --tokens-per-s N (measured training tokens/s) or --bench "
                        "results/bench/step_time.json")
    if not args.eval_cost >= 0:
        raise UserError(f"--eval-cost must be >= 0, got {args.eval_cost}")
    title = " ".join(args.overrides) or "(defaults)"
    jobs, cfgs = sweep_configs(args.overrides)
    models = sorted({str(cfg.model.name) for cfg in cfgs})
    if args.bench:
        if len(models) != 1:
            raise UserError(f"the sweep mixes models {models}; give --tokens-per-s N")
        rate = rate_from_bench(args.bench, models[0], args.eval_cost)
    else:
        rate = rate_from_flag(args.tokens_per_s, args.device, args.eval_cost)
    costs = estimate(jobs, cfgs, progress=lambda line: print(line, file=sys.stderr, flush=True))
    report = report_json(title, args.overrides, costs, rate)
    text = render_markdown(title, report["rows"], report["total"], report["notes"], rate, " ".join(argv))
    report["command"] = "python scripts/estimate_cost.py " + " ".join(argv)
    print(text)
    if args.out:
        out = Path(args.out)
        out = out.with_suffix("") if out.suffix in (".md", ".json") else out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_name(out.name + ".md").write_text(text)
        out.with_name(out.name + ".json").write_text(json.dumps(report, indent=1) + "\n")
    return report
