"""Print the SFT runs under a results folder: python scripts/sft_summary.py results/sft_demo"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sora.sft.summary import sft_table  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/sft_summary.py <results_dir>")
    table = sft_table(sys.argv[1])
    if table.empty:
        sys.exit(f"error: no SFT records under {sys.argv[1]}/records; run scripts/sft.py first")
    print(table.to_markdown(index=False, floatfmt=".4g"))
