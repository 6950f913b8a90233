#!/usr/bin/env bash
# Opt-in check against a REAL Slurm (root): start a one-node cluster on 127.0.0.1 (Debian slurm-wlm + munge), then
# run the Slurm tests (pytest -m slurm): a clean 2-job multirun, and the fault suite - a 6-run tiny sweep through
# each of USR2, SIGTERM, scontrol requeue, partition preemption, a node set DOWN, a power cut and --time, every
# record equal to an uninterrupted run (tests/test_slurm_faults.py; ~13 min on 2 cores).
# SORA_SLURM_FAULTS=ci keeps the CI-sized subset.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo_or_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# 8 CPU slots on the one node, whatever the machine has: the fault suite runs its 6-run array at once
sudo_or_root env SLURM_ACCOUNTING="${SLURM_ACCOUNTING:-1}" SLURM_CPUS="${SLURM_CPUS:-8}" bash scripts/slurm/start_slurm.sh
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$PY" -m pytest -q -m slurm tests/test_sweeps.py tests/test_slurm_faults.py
