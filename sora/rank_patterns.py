"""Where a LoRA control run gets its ranks: the SoRA run of the same recipe, task and seed.

``method=lora method.rank_pattern_from=sora`` retrains plain LoRA from scratch with the rank per module that
SoRA kept: is SoRA's result the allocation it finds, or its training dynamics? ``rank_pattern_from=random``
spends the same budget on a random allocation: per matrix type (Q K V AO I O; another model's modules by their
name's last component) the same total rank as SoRA kept, spread at random over that type's modules, each capped at
SoRA's r_max (``random_pattern``) — does SoRA allocate better than chance at equal budget?

The SoRA run is found among the finished records of the same ``results_dir`` whose identity equals this run's
outside the ``method`` block (same task, seed, data, recipe) and whose ξ > 0; ``method.pattern_xi`` picks one ξ
when the folder holds a ξ grid.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from pathlib import Path

from sora.errors import UserError
from sora.records import CorruptRecord, current_identity, identity, read_record
from sora.schema import literal_choices
from sora.tuners.lora import LoraMethodSchema
from sora.tuners.targets import matrix_type

SOURCES = literal_choices(LoraMethodSchema, "rank_pattern_from")  # one list: the schema's Literal


def sora_rank_pattern(cfg, fingerprint: str | None) -> dict[str, int]:
    """The rank per module a LoRA control trains with (``method.rank_pattern_from``): the SoRA run's kept ranks
    (``sora``) or a random pattern with its per-type totals (``random``, seeded by ``method.pattern_seed``, null =
    the run's seed)."""
    source = cfg.method.get("rank_pattern_from")
    if source not in SOURCES:
        raise UserError(f"method.rank_pattern_from must be null, 'sora' or 'random', got {source!r}")
    rec = find_sora_record(cfg, fingerprint)
    ranks = {name: int(r) for name, r in rec["ranks"].items()}
    if not any(ranks.values()):
        raise UserError(f"the SoRA run {rec.get('run_id')} kept no rank; pick a smaller xi (method.pattern_xi)")
    if source == "sora":
        return ranks
    seed = cfg.method.get("pattern_seed")
    if seed is None:
        seed = cfg.seed
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"method.pattern_seed must be null or an integer, got {seed!r}")
    return random_pattern(ranks, sora_r_max(rec), seed)


def find_sora_record(cfg, fingerprint: str | None = None) -> dict:
    """The one finished SoRA record (ξ > 0, and ξ = ``method.pattern_xi`` when set) of this run's task, seed, data
    and recipe in ``cfg.results_dir``; a one-line UserError naming the fix otherwise. ``fingerprint`` None: computed
    from the data folder."""
    want_xi = _pattern_xi(cfg)
    ours = _without_method(identity(cfg, fingerprint))
    found, other_xis = [], set()
    for path in sorted(Path(cfg.results_dir).glob("records/*/record.json")):
        try:
            rec = read_record(path)
        except CorruptRecord:
            continue
        ident = current_identity(rec["identity"]) if rec.get("identity") else {}  # older records: today's rules
        xi = (ident.get("method") or {}).get("xi") or 0
        if not (rec.get("method") == "sora" and rec.get("status") == "finished" and xi > 0
                and _without_method(ident) == ours):
            continue
        if want_xi is None or math.isclose(xi, want_xi, rel_tol=1e-9, abs_tol=0.0):
            found.append((path, rec))
        else:
            other_xis.add(xi)
    if len(found) == 1:
        return found[0][1]
    where = f"in {cfg.results_dir}"
    if want_xi is not None and not found:
        there = f" (there: xi {', '.join(f'{x:g}' for x in sorted(other_xis))})" if other_xis else ""
        raise UserError(f"method.pattern_xi={want_xi:g} matches no finished SoRA run of this task, seed and recipe "
                        f"{where}{there}; run method=sora method.xi={want_xi:g} with the same overrides first")
    paths = ", ".join(str(p) for p, _ in found)
    what = f"{len(found)} SoRA runs ({paths})" if found else "no finished SoRA run"
    fix = ("pick one with method.pattern_xi=<xi>" if found and want_xi is None
           else "run method=sora with the same overrides first")
    raise UserError(f"method.rank_pattern_from={cfg.method.get('rank_pattern_from')} needs exactly one finished SoRA "
                    f"run of this task, seed and recipe {where}; found {what}; {fix}")


def sora_r_max(rec: dict) -> int:
    """The per-module rank cap of a SoRA record: its ``method.r_max`` (older records: max_rank / modules)."""
    r_max = ((rec.get("identity") or {}).get("method") or {}).get("r_max")
    if r_max is None:
        r_max = rec["params"]["max_rank"] // max(1, len(rec["ranks"]))
    return int(r_max)


def matrix_kind(module_name: str) -> str:
    """A module's matrix type: Q K V AO I O for BERT/DeBERTa layers, else the name's last dotted component."""
    found = matrix_type(module_name)
    return found[1] if found else module_name.rsplit(".", 1)[-1]


def type_totals(ranks: dict[str, int]) -> dict[str, int]:
    """Total rank per matrix type (``matrix_kind``)."""
    out: dict[str, int] = defaultdict(int)
    for name, r in ranks.items():
        out[matrix_kind(name)] += int(r)
    return dict(out)


def random_pattern(ranks: dict[str, int], r_max: int, seed: int) -> dict[str, int]:
    """A random allocation of the budget ``ranks`` holds: every module of ``ranks``, each matrix type keeping its
    total rank, each module in [0, r_max].

    Per type (in sorted type order), the type's ``n`` modules have ``r_max * n`` rank slots (SoRA's gate entries);
    ``total`` of them are kept, drawn uniformly without replacement (a Fisher-Yates shuffle of the slots; the
    first ``total`` are kept). This is random pruning of the gate at SoRA's per-type count: every subset of slots is
    equally likely, so a module's rank is hypergeometric — NOT a uniform draw over the rank vectors that meet the
    totals (those would put more weight on lopsided vectors). Deterministic for one seed: only
    ``random.Random(seed).random()`` is used, whose stream Python keeps across versions.
    """
    if r_max < 1:
        raise UserError(f"the SoRA run's r_max must be >= 1 for a random pattern, got {r_max}")
    rng = random.Random(seed)
    groups: dict[str, list[str]] = defaultdict(list)
    for name in sorted(ranks):
        groups[matrix_kind(name)].append(name)
    out = {name: 0 for name in ranks}
    for kind in sorted(groups):
        names = groups[kind]
        total = sum(int(ranks[n]) for n in names)
        if total > r_max * len(names):
            raise UserError(f"the SoRA pattern's {kind} modules hold rank {total} > r_max {r_max} x {len(names)} "
                            f"modules; the record's ranks or r_max are wrong")
        slots = [name for name in names for _ in range(r_max)]
        for i in range(total):  # partial Fisher-Yates: slots[:total] is a uniform random subset
            j = i + min(int(rng.random() * (len(slots) - i)), len(slots) - i - 1)
            slots[i], slots[j] = slots[j], slots[i]
            out[slots[i]] += 1
    return out


def nearest_uniform_rank(rec: dict) -> int:
    """The uniform LoRA rank nearest SoRA's mean kept rank per module: total kept rank / modules (every module the
    SoRA run adapted, pruned ones included), rounded half up, at least 1."""
    ranks = rec["ranks"]
    if not ranks:
        raise UserError(f"record {rec.get('run_id')} has no ranks; it is not a finished SoRA run")
    return max(1, math.floor(sum(int(r) for r in ranks.values()) / len(ranks) + 0.5))


def _pattern_xi(cfg) -> float | None:
    xi = cfg.method.get("pattern_xi")
    if xi is None:
        return None
    if isinstance(xi, bool) or not isinstance(xi, (int, float)) or not xi > 0:
        raise UserError(f"method.pattern_xi must be null or the xi > 0 of a finished SoRA run, got {xi!r}")
    return float(xi)


def _without_method(ident: dict) -> dict:
    return {k: v for k, v in ident.items() if k != "method"}
