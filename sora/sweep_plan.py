"""Sweeps over every registered method: ``make frontier`` runs one multirun per method that declares a budget, so a
new method joins the frontier by declaring ``frontier_budget`` in its own module."""

from __future__ import annotations

from sora.errors import UserError


def frontier_sweeps(overrides: list[str], budgets: dict[str, str] | None = None) -> list[list[str]]:
    """One override list per method: the shared overrides, ``method=<name>`` and its budget sweep (the method's
    ``frontier_budget``, or ``budgets[name]``, e.g. a task's own SoRA xi grid)."""
    from sora.tuners.methods import METHODS

    budgets = dict(budgets or {})
    unknown = sorted(set(budgets) - set(METHODS))
    if unknown:
        raise UserError(f"--budget for unknown method(s) {', '.join(unknown)}; valid: {', '.join(sorted(METHODS))}")
    sweeps = []
    for name, cls in sorted(METHODS.items()):
        budget = budgets.get(name, cls.frontier_budget)
        if budget:
            sweeps.append([*overrides, f"method={name}", *budget.split()])
    return sweeps


def parse_budgets(items: list[str]) -> dict[str, str]:
    """``--budget sora=method.xi=1e-4,3e-4`` -> {'sora': 'method.xi=1e-4,3e-4'}; an empty value skips the method."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--budget needs NAME=OVERRIDES, got {item!r}; e.g. --budget lora=method.r=1,2,4")
        out[name] = value
    return out
