#!/usr/bin/env bash
# CI: the Slurm fault suite's CI-sized subset on a real one-node Slurm (tests/test_slurm_faults.py with
# SORA_SLURM_FAULTS=ci), when slurm-wlm can be installed here; otherwise one line saying why it was skipped and
# exit 0. A test that runs and fails fails CI. Budget: ~5 min (install ~35 s, cluster ~10 s, suite ~4 min: the signals
# sweep and one preemption).
#   PY=.venv/bin/python (default)   SORA_SLURM_CI=0 skips on purpose.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
T0=$(date +%s)
skip() { echo "slurm fault suite: SKIPPED - $*"; exit 0; }
took() { echo "$(( $(date +%s) - T0 )) s"; }

[ "${SORA_SLURM_CI:-1}" = 0 ] && skip "SORA_SLURM_CI=0"
[ "$(id -u)" = 0 ] || skip "not root (a one-node Slurm needs root: slurmctld, slurmd, munged, scontrol update)"
command -v apt-get >/dev/null || { command -v slurmctld >/dev/null || skip "no apt-get and no slurm-wlm here"; }
if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
                                      trap 'rm -f /usr/sbin/policy-rc.d' EXIT; }
    timeout 120 apt-get update -qq >/tmp/ci_slurm_apt.log 2>&1 \
        || skip "apt-get update failed or timed out (no Debian mirror?): $(tail -1 /tmp/ci_slurm_apt.log)"
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge slurmdbd mariadb-server >>/tmp/ci_slurm_apt.log 2>&1 \
        || skip "apt-get install slurm-wlm munge failed: $(tail -1 /tmp/ci_slurm_apt.log)"
fi
echo "slurm fault suite: slurm-wlm + munge installed ($(took))"
SKIP_APT=1 SLURM_CPUS=8 timeout 180 bash scripts/slurm/start_slurm.sh >/tmp/ci_slurm_start.log 2>&1 \
    || skip "the one-node Slurm did not start: $(tail -3 /tmp/ci_slurm_start.log | tr '\n' ' ')"
echo "slurm fault suite: one-node Slurm up ($(took))"
SORA_SLURM_FAULTS=ci timeout 600 "$PY" -m pytest -q -m slurm tests/test_slurm_faults.py
rc=$?
echo "slurm fault suite: done in $(took) (rc $rc)"
exit $rc
