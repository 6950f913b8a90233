"""Which linear maps get an adapter, matched by an explicit regex so ``pooler.dense`` never does.

peft's default targets for deberta-v2 include ``dense``, which also matches the pooler. A full-match
regex over the module path names the six matrices of every encoder layer instead.
"""

from __future__ import annotations

import re

# matrix type -> regex of the module path tail, for BERT-style (query) and DeBERTa (query_proj) names
MATRIX_PATTERNS = {
    "Q": r"attention\.self\.(query|query_proj)",
    "K": r"attention\.self\.(key|key_proj)",
    "V": r"attention\.self\.(value|value_proj)",
    "AO": r"attention\.output\.dense",
    "I": r"intermediate\.dense",
    "O": r"(?<!attention\.)output\.dense",
}
MATRIX_TYPES = tuple(MATRIX_PATTERNS)
TARGET_SETS = {"all": MATRIX_TYPES, "qv": ("Q", "V")}
_LAYER = r"(?:.*\.)?layer\.(\d+)\."


def target_regex(targets: str = "all") -> str:
    """A peft ``target_modules`` string (full-match regex) for a named target set."""
    if targets not in TARGET_SETS:
        from sora.errors import UserError

        raise UserError(f"method.targets must be one of {sorted(TARGET_SETS)}, got {targets!r}")
    alts = "|".join(f"(?:{MATRIX_PATTERNS[t]})" for t in TARGET_SETS[targets])
    return rf"{_LAYER}(?:{alts})"


def matrix_type(module_name: str) -> tuple[int, str] | None:
    """(layer index, matrix type) of an adapted module path, or None if it is not one of the six."""
    for kind, pat in MATRIX_PATTERNS.items():
        m = re.fullmatch(rf"{_LAYER}{pat}", module_name)
        if m:
            return int(m.group(1)), kind
    return None
