"""Allocation controls at one SoRA run's budget (``make controls``, ``scripts/controls.py``): does SoRA allocate
ranks better, or would any allocation of the same budget do?

At the budget a finished SoRA run (experiment, task, ξ, seed) kept, in the order run:

- the SoRA run itself (``method=sora method.xi=<xi>``; skipped when finished, as every run is);
- (d) the gate without sparsity: ``method=sora method.xi=0``;
- (a) plain LoRA from scratch on SoRA's kept pattern: ``method=lora method.rank_pattern_from=sora``;
- (b) plain LoRA on a random pattern with SoRA's per-matrix-type totals: ``method.rank_pattern_from=random``;
- (c) uniform LoRA at the rank nearest SoRA's mean kept rank per module: ``method=lora method.r=<k>``, k per seed
  from that seed's SoRA record (``sora.rank_patterns.nearest_uniform_rank``).

(a) and (b) select the SoRA run with ``method.pattern_xi=<xi>``, so a results folder holding a ξ grid works.
"""

from __future__ import annotations

from collections import defaultdict

from sora.errors import UserError
from sora.rank_patterns import find_sora_record, nearest_uniform_rank


def first_arms(experiment: str, task: str, xi: str, seeds: list[int], extra: list[str]) -> list[list[str]]:
    """The multirun overrides of the sweeps that need no finished record to start: SoRA, (d), (a), (b)."""
    common = [f"experiment={experiment}", f"task={task}", "seed=" + ",".join(str(s) for s in seeds)]
    return [
        [*common, "method=sora", f"method.xi={xi}", *extra],
        [*common, "method=sora", "method.xi=0", *extra],
        [*common, "method=lora", "method.rank_pattern_from=sora", f"method.pattern_xi={xi}", *extra],
        [*common, "method=lora", "method.rank_pattern_from=random", f"method.pattern_xi={xi}", *extra],
    ]


def uniform_ranks(experiment: str, task: str, xi: str, seeds: list[int], extra: list[str]) -> dict[int, int]:
    """seed -> the uniform LoRA rank nearest the mean kept rank of that seed's finished SoRA run (the one arms (a)
    and (b) use: found by the same rule, from the LoRA config of this experiment)."""
    out = {}
    for seed in seeds:
        cfg = _compose([f"experiment={experiment}", f"task={task}", f"seed={seed}", "method=lora",
                        "method.rank_pattern_from=sora", f"method.pattern_xi={xi}", *extra])
        try:
            out[seed] = nearest_uniform_rank(find_sora_record(cfg))
        except UserError as exc:
            raise UserError(f"uniform LoRA for seed {seed}: {exc}") from None
    return out


def uniform_arms(experiment: str, task: str, ranks_by_seed: dict[int, int], extra: list[str]) -> list[list[str]]:
    """(c): one sweep per distinct rank, over the seeds whose SoRA run gives that rank."""
    seeds_by_rank: dict[int, list[int]] = defaultdict(list)
    for seed, k in ranks_by_seed.items():
        seeds_by_rank[k].append(seed)
    return [[f"experiment={experiment}", f"task={task}", "seed=" + ",".join(str(s) for s in sorted(seeds)),
             "method=lora", f"method.r={k}", *extra] for k, seeds in sorted(seeds_by_rank.items())]


def results_dir(experiment: str, task: str, extra: list[str]) -> str:
    """The experiment's results folder with these overrides (what ``scripts/aggregate.py`` reads)."""
    return str(_compose([f"experiment={experiment}", f"task={task}", *extra]).results_dir)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise UserError(f"seeds must be a comma list of integers (e.g. 0,1,2), got {text!r}")
    return seeds


def parse_xi(text: str) -> float:
    try:
        xi = float(text)
    except ValueError:
        xi = float("nan")
    if not xi > 0:
        raise UserError(f"XI must be the xi > 0 of the SoRA runs whose budget is tested (e.g. 4e-3), got {text!r}")
    return xi


def _compose(overrides: list[str]):
    """One run's config as the CLI composes it; launcher/sweeper overrides (``hydra.*``, ``hydra/...``) left out."""
    from sora.config import load_config

    overrides = [o for o in overrides if not _hydra_only(o)]
    try:
        return load_config(overrides)
    except Exception as exc:  # Hydra's composition errors: one line, with the overrides that caused them
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot compose {' '.join(overrides)}: {first}; the extra overrides must be single "
                        f"values (no sweeps)") from None


def _hydra_only(override: str) -> bool:
    """Launcher/sweeper overrides (``hydra.*``, ``hydra/launcher=...``): for the CLI, not for composing a run."""
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))
