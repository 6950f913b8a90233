#!/usr/bin/env bash
# Opt-in check against a REAL Slurm: start a one-node cluster on 127.0.0.1 (Debian slurm-wlm + munge, root),
# then run the 2-job smoke multirun through hydra-submitit-launcher (pytest -m slurm).
set -euo pipefail
cd "$(dirname "$0")/.."
sudo_or_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
sudo_or_root env SLURM_ACCOUNTING="${SLURM_ACCOUNTING:-1}" bash scripts/slurm/start_slurm.sh
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$PY" -m pytest -q -m slurm tests/test_sweeps.py
