#!/usr/bin/env bash
# The GPU check (issue #17): on whatever GPU is present, in <= 8 minutes, no hub access.
#   scripts/gpu_check.sh [bench_gpu.py options]   DeBERTa-v3-base shape -> results/bench/gpu_<card>.{json,md}
#   DEVICE=cpu scripts/gpu_check.sh               the CPU smoke run (small shapes) -> results/bench/gpu_cpu_smoke.*
#   scripts/gpu_check.sh prepare                  here, before a session on a bare GPU machine: .gpu/ gets the
#       wheels that machine lacks (pinned to this .venv's versions) and the DeBERTa-v3 tokenizer; carry .gpu.
# Env: DEVICE (auto|cuda|cpu), TIMEOUT (s, default 480: the whole check), PY (python), OUT (also copy the
# outputs and the log there), THREADS and COMPILE_BACKEND (CPU only; default 1 and eager).
# A configuration that fails is an error string in its table cell, not a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ -z "${PY:-}" ]; then
    PY=python3
    [ -x .venv/bin/python ] && PY=.venv/bin/python
fi

prepare() {  # wheels for python 3.12 / x86-64 (the GPU image's python), no network needed over there
    mkdir -p .gpu/wheels .gpu/tokenizer
    exclude=$(git rev-parse --git-path info/exclude)  # .gpu/ stays out of git; the device call carries it
    mkdir -p "$(dirname "$exclude")"
    grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
    pins=$("$PY" -c 'from importlib.metadata import version as v
print(" ".join(f"{p}=={v(p)}" for p in ("transformers", "peft", "hydra-core", "omegaconf", "disentangled-flash",
                                       "regex")))')
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/wheels $pins
    antlr=$("$PY" -c 'from importlib.metadata import version as v; print(v("antlr4-python3-runtime"))')
    "$PY" -m pip wheel -q --no-deps -w .gpu/wheels "antlr4-python3-runtime==$antlr"  # an sdist on PyPI
    if [ -f ../shared/deberta-v3-base/spm.model ]; then
        cp ../shared/deberta-v3-base/{spm.model,tokenizer_config.json,config.json} .gpu/tokenizer/
    fi
    du -sh .gpu; ls .gpu/wheels .gpu/tokenizer
}

if [ "${1:-}" = prepare ]; then prepare; exit 0; fi

# a bare GPU machine (its python has torch but not the project's packages): the pins from .gpu/, beside its torch
if compgen -G ".gpu/wheels/*.whl" > /dev/null && ! "$PY" -c "import hydra, peft, disentangled_flash" 2>/dev/null; then
    site=/tmp/gpu_check_site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        .gpu/wheels/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

DEVICE=${DEVICE:-auto}
args=(--device "$DEVICE")
# CPU: the code path, not figures. One thread (two stall badly on a shared 2-core machine); torch.compile with
# dynamo's eager backend (the tracing of model + adapters; inductor's C++ codegen there takes many minutes per
# model and is not the Triton codegen a GPU runs anyway)
[ "$DEVICE" = cpu ] && args+=(--small --threads "${THREADS:-1}" --compile-backend "${COMPILE_BACKEND:-eager}")
marker=$(mktemp)
log=$(mktemp)
status=0
timeout -k 15 "${TIMEOUT:-480}" "$PY" scripts/bench_gpu.py "${args[@]}" "$@" 2>&1 | tee "$log" || status=$?
[ "$status" -ne 0 ] && echo "gpu_check: exit $status (124 = TIMEOUT reached; the JSON keeps what was measured)"
if [ -n "${OUT:-}" ]; then
    find results/bench -maxdepth 1 -name 'gpu_*' -newer "$marker" -exec cp {} "$OUT"/ \;
    cp "$log" "$OUT/gpu_check.log"
fi
rm -f "$marker" "$log"
exit "$status"
