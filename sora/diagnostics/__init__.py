"""Checks that a method did what it claims. For SoRA: did its gates learn from the data, or only from the
schedule? (``null``: the gates with no task gradient; ``verdict``: the rule that compares a run with it.)"""

from sora.diagnostics.null import GateRecipe, expected_kept, gate_lrs, simulate
from sora.diagnostics.verdict import RULE, diagnose, growth_warning, record_diagnostics

__all__ = ["GateRecipe", "expected_kept", "gate_lrs", "simulate", "RULE", "diagnose", "growth_warning",
           "record_diagnostics"]
