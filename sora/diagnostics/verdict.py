"""Did a SoRA run's gates learn from the data? Its kept ranks beside the null model's (``sora.diagnostics.null``),
a warning when the recipe leaves the gates no room to grow, and a verdict by one written rule (``RULE``).

Works on a record alone (``record_diagnostics``): older records without stored gate values are judged on their
kept counts against the null's expected count; newer ones store the gates at init and at every evaluation
(``record["gates"]``), so the null runs from the run's own init and the kept *sets* are compared too.
"""

from __future__ import annotations

import numpy as np
import torch

from sora.diagnostics.null import GateRecipe, expected_kept, simulate
from sora.optim import SchedulePlan, schedule_plan
from sora.tuners.sora.config import SoraConfig

DATA = "data-dependent"
NULL = "indistinguishable from the null"
NO_PRUNING = "no pruning"
SET_AGREEMENT = 0.95  # the null's kept set matches the observed one on at least this share of gates
COUNT_SHARE = 0.05  # count tolerance: 5 % of the gates (and never below 2 ranks)
RULE = (f"'{NULL}' when at every evaluation the observed kept-rank count is within max(2, {COUNT_SHARE:.0%} of the "
        f"gates, 3 binomial sd when the init is not stored) of the null model's (the same init, gate lr schedule, "
        f"optimizer, L1 term and prox with no task gradient) and, where the gates are stored, the null's kept set "
        f"equals the observed one on >= {SET_AGREEMENT:.0%} of the gates at the reported checkpoint; "
        f"'{NO_PRUNING}' when neither pruned anything; '{DATA}' otherwise")


def growth_warning(variant: str, xi: float, peak_gate_lr: float) -> str | None:
    """The recipe leaves the gates no room to grow: which ranks survive is then fixed by |g0| and the schedule."""
    if variant == "code" and xi > 0 and xi >= peak_gate_lr:
        return (f"gates cannot grow: xi = {xi:g} >= the peak gate lr {peak_gate_lr:g} (Adam moves a gate by ~lr per "
                f"step, the prox removes xi every step), so every gate only shrinks and the kept ranks are those "
                f"with the largest initial |g|, whatever the data; use xi below the gate lr")
    if variant == "paper" and xi >= 1:
        return (f"gates cannot grow: xi = {xi:g} >= 1 with the paper's threshold lr*xi exceeds Adam's ~lr step; "
                f"every gate only shrinks, whatever the data; use xi < 1")
    return None


def diagnose(recipe: GateRecipe, observed: list[tuple[int, int]], init: torch.Tensor | None = None,
             trace: dict[int, torch.Tensor] | None = None, reported_step: int | None = None,
             lrs: list[float] | None = None) -> dict:
    """``observed``: (step, kept count) at each evaluation; ``init``/``trace``: the run's gate values at step 0 and
    at evaluations (all gates, one flat tensor each), when stored; ``lrs``: the gate lr the run used at each step
    (default: the recipe's schedule; needs ``init``)."""
    steps = [s for s, _ in observed]
    n = recipe.n_gates
    if init is not None:
        null_values = simulate(init, recipe, steps, lrs)
        null = {s: (float((v != 0).sum()), 0.0) for s, v in null_values.items()}
    else:
        null_values, null = {}, expected_kept(recipe, steps)
    evals = []
    for s, k in observed:
        mean, sd = null[s]
        tol = max(2.0, COUNT_SHARE * n, 3 * sd)
        evals.append({"step": s, "observed": int(k), "null": round(mean, 2), "tolerance": round(tol, 2),
                      "within": abs(k - mean) <= tol})
    sets = _set_checks(init, trace or {}, null_values, reported_step if reported_step in (trace or {}) else None)
    diffs = [abs(e["observed"] - e["null"]) for e in evals]
    out = {"rule": RULE, "init": "stored" if init is not None else f"expected over {recipe.config.gate_init} init",
           "n_gates": n, "evals": evals, "mean_abs_diff": round(float(np.mean(diffs)), 2) if diffs else None,
           **sets, "verdict": _verdict(evals, n, sets.get("null_set_agreement"))}
    warning = growth_warning(recipe.config.variant, recipe.config.xi, recipe.peak_gate_lr)
    out["warnings"] = [warning] if warning else []
    return out


def _set_checks(init, trace: dict, null_values: dict, step: int | None) -> dict:
    """At the reported checkpoint: the share of gates whose kept/pruned state the null gets right, and how well
    the initial |g| ranks the kept gates above the pruned ones (AUC; 1 = the kept set is the largest |g0|)."""
    if init is None or step is None or step not in null_values:
        return {"null_set_agreement": None, "init_rank_auc": None, "checked_step": None}
    kept = (trace[step] != 0).numpy()
    agreement = float(((null_values[step] != 0).numpy() == kept).mean())
    auc = None
    if 0 < kept.sum() < len(kept):
        from sklearn.metrics import roc_auc_score

        auc = round(float(roc_auc_score(kept, init.abs().numpy())), 4)
    return {"null_set_agreement": round(agreement, 4), "init_rank_auc": auc, "checked_step": step}


def _verdict(evals: list[dict], n: int, agreement: float | None) -> str:
    if not evals:
        return DATA  # nothing to compare: never claim the null
    if all(e["observed"] == n and e["null"] >= n - 0.5 for e in evals):
        return NO_PRUNING
    if all(e["within"] for e in evals) and (agreement is None or agreement >= SET_AGREEMENT):
        return NULL
    return DATA


def record_diagnostics(record: dict) -> dict | None:
    """The diagnostics of a finished SoRA record (None for other methods or a record with no evaluations)."""
    if record.get("method") != "sora" or not record.get("evals"):
        return None
    recipe = recipe_from_record(record)
    observed = [(e["step"], e["total_rank"]) for e in record["evals"] if e.get("stage", 0) == 0]
    gates = record.get("gates") or {}
    init = _tensor(gates.get("init"))
    trace = {t["step"]: _tensor(t["values"]) for t in gates.get("trace", [])}
    return diagnose(recipe, observed, init, trace, (record.get("best") or {}).get("step"))


def recipe_from_record(record: dict) -> GateRecipe:
    cfg, formulas = record["config"], record.get("formulas") or {}
    m, t = cfg["method"], cfg["train"]
    xi = (record.get("scheduler") or {}).get("xis", [m["xi"]])[0]  # the scheduler's dense phase runs at its xi0
    config = SoraConfig(r_max=m["r_max"], lora_alpha=m["lora_alpha"], xi=xi, variant=m["variant"],
                        gate_init=m.get("gate_init"), l1_coef=m.get("l1_coef") or 0.0, gate_lr=m.get("gate_lr"),
                        prox=m.get("prox"))
    steps = record["total_steps"]
    if "schedule_length" in formulas:
        plan = SchedulePlan(formulas["schedule_length"], formulas["schedule_warmup"], formulas["schedule_gate_warmup"])
    else:  # older records: the plan from the config, as the loop computed it
        n_train = (record.get("data") or {}).get("rows", {}).get("train", 0)
        plan = schedule_plan(t.get("schedule", "standard"), t["warmup"], steps, n_train, t["batch_size"], t["epochs"])
    kind = formulas.get("optimizer") or ("adamw_hf_legacy" if m["variant"] == "code" else "adamw")
    n_gates = (record.get("params") or {}).get("max_rank") or len(record.get("ranks") or {}) * m["r_max"]
    return GateRecipe(config=config, optimizer=kind, lr=t["lr"], adam_betas=tuple(t["adam_betas"]),
                      adam_eps=t["adam_eps"], plan=plan, steps=steps, n_gates=int(n_gates))


def _tensor(values) -> torch.Tensor | None:
    return None if values is None else torch.tensor(values, dtype=torch.float32)
