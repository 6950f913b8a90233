"""What a sweep costs before launching it: exact tokens (ours vs static padding) per task x method, and hours.

    python scripts/estimate_cost.py experiment=paper_table1 data.dir=../shared/glue \
        model.tokenizer=../shared/deberta-v3-base --bench results/bench/step_time.json \
        --out results/bench/estimate_paper_table1

Overrides are Hydra's, as for scripts/train.py (the experiment's sweep is expanded as `-m` would); give the
measured training throughput as --tokens-per-s N or --bench <step_time.json>. The logic is in sora/cost.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sora.cli import check_group_choices, run_cli  # noqa: E402
from sora.config import CONF_DIR  # noqa: E402


def main(argv: list[str]) -> None:
    from sora.cost import main as estimate_main

    estimate_main(argv)


if __name__ == "__main__":
    check_group_choices([a for a in sys.argv[1:] if not a.startswith("-")], CONF_DIR)
    run_cli(main, sys.argv[1:])
