"""Where a LoRA control run gets its ranks: the SoRA run of the same recipe, task and seed.

``method=lora method.rank_pattern_from=sora`` retrains plain LoRA from scratch with the rank per module that
SoRA kept: is SoRA's result the allocation it finds, or its training dynamics? The SoRA run is found among the
finished records of the same ``results_dir`` whose identity equals this run's outside the ``method`` block
(same task, seed, data, recipe) and whose ξ > 0.
"""

from __future__ import annotations

from pathlib import Path

from sora.errors import UserError
from sora.records import CorruptRecord, identity, read_record


def sora_rank_pattern(cfg, fingerprint: str) -> dict[str, int]:
    source = cfg.method.get("rank_pattern_from")
    if source != "sora":
        raise UserError(f"method.rank_pattern_from must be null or 'sora', got {source!r}")
    ours = _without_method(identity(cfg, fingerprint))
    found = []
    for path in sorted(Path(cfg.results_dir).glob("records/*/record.json")):
        try:
            rec = read_record(path)
        except CorruptRecord:
            continue
        if (rec.get("method") == "sora" and rec.get("status") == "finished" and rec.get("identity")
                and (rec["identity"].get("method") or {}).get("xi", 0) > 0
                and _without_method(rec["identity"]) == ours):
            found.append((path, rec))
    if len(found) != 1:
        paths = ", ".join(str(p) for p, _ in found)
        what = f"{len(found)} SoRA runs ({paths})" if found else "no finished SoRA run"
        raise UserError(f"method.rank_pattern_from=sora needs exactly one finished SoRA run of this task, seed and "
                        f"recipe in {cfg.results_dir}; found {what}; run method=sora with the same overrides first")
    return dict(found[0][1]["ranks"])


def _without_method(ident: dict) -> dict:
    return {k: v for k, v in ident.items() if k != "method"}
