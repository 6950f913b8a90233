#!/usr/bin/env bash
# The GPU check (issue #17): on whatever GPU is present, in <= 8 minutes, no hub access.
#   scripts/gpu_check.sh [bench_gpu.py options]   DeBERTa-v3-base shape -> results/bench/gpu_<card>.{json,md}
#   DEVICE=cpu scripts/gpu_check.sh               the CPU smoke run (small shapes) -> results/bench/gpu_cpu_smoke.*
#   scripts/gpu_check.sh prepare                  here, before a session on a bare GPU machine: .gpu/ gets the
#       wheels that machine lacks (scripts/gpu_pins.py: this .venv's versions) and the DeBERTa-v3 tokenizer; carry .gpu.
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

GPU_DIR=${GPU_DIR:-.gpu}             # the wheels and tokenizer a bare GPU machine gets (carry it)
GPU_PYTHON=${GPU_PYTHON:-3.12}       # the GPU image's python

prepare() {  # here, with network: the wheels the GPU image lacks or has too old, for its python, and the tokenizer
    mkdir -p "$GPU_DIR/wheels" "$GPU_DIR/tokenizer"
    if [ "$GPU_DIR" = .gpu ]; then  # .gpu/ stays out of git; the device call carries it
        exclude=$(git rev-parse --git-path info/exclude)
        mkdir -p "$(dirname "$exclude")"
        grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
    fi
    rm -f "$GPU_DIR"/wheels/*.whl
    # every package the check imports beyond torch, with all it requires, at this environment's (CI's) versions
    "$PY" scripts/gpu_pins.py --python "$GPU_PYTHON" | tr ' ' '\n' > "$GPU_DIR/pins.txt"
    while read -r pin; do  # a binary wheel for the image's python, else a wheel built here (pure-python sdists)
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$GPU_DIR/wheels" "$pin" 2>/dev/null || "$PY" -m pip wheel -q --no-deps -w "$GPU_DIR/wheels" "$pin"
    done < "$GPU_DIR/pins.txt"
    if [ -f ../shared/deberta-v3-base/spm.model ]; then
        cp ../shared/deberta-v3-base/{spm.model,tokenizer_config.json,config.json} "$GPU_DIR/tokenizer/"
    fi
    du -sh "$GPU_DIR"; wc -l < "$GPU_DIR/pins.txt"; ls "$GPU_DIR/wheels" | wc -l
}

if [ "${1:-}" = prepare ]; then prepare; exit 0; fi

# a bare GPU machine (its python has torch, older or no copies of the rest): the pins, resolved offline by pip, which
# installs what is missing or different and checks that what it keeps satisfies every requirement
if [ -f "$GPU_DIR/pins.txt" ] && [ -z "${GPU_PINS_INSTALLED:-}" ]; then
    "$PY" -m pip install -q --no-index --find-links "$GPU_DIR/wheels" --no-compile --no-cache-dir \
        --disable-pip-version-check -r "$GPU_DIR/pins.txt" || { echo "gpu_check: installing $GPU_DIR's pins failed"; exit 3; }
    export GPU_PINS_INSTALLED=1  # a session's parts (this script again) do not install twice
fi

copy_out() {  # copy_out MARKER LOG NAME: the check's new outputs and its log into $OUT (the device tool's folder)
    if [ -n "${OUT:-}" ]; then
        find results/bench -maxdepth 1 -name 'gpu_*' -newer "$1" -exec cp {} "$OUT"/ \;
        cp "$2" "$OUT/$3"
    fi
    rm -f "$1" "$2"
}

# One device call holds the whole GPU session (15 minutes of device time, a machine's start included): the checks
# issue 26 needs, most important first, each its own process and JSON (a part cut short keeps what it measured), all
# inside SESSION_S seconds (default 480). The eager step of all five methods in fp32 and bf16 with kernel counts
# (~1 min), then CUDA graphs (inductor reduce-overhead, static shape, bf16, the tail captured) for the paper pair,
# then the code pair (each pair ~2-4 min: the H200 compiled one model in 55-102 s).
if [ "${1:-}" = session ]; then
    shift
    total=${SESSION_S:-480}
    marker=$(mktemp)
    log=$(mktemp)
    extra=("$@")  # the caller's options: after each part's own, so they win
    part() {  # part CAP_S ARGS...: one check, its TIMEOUT the smaller of CAP_S and the session's time left
        local cap=$1 left=$(( total - SECONDS ))
        shift
        if [ "$left" -lt 60 ]; then echo "gpu_check session: no time left for: $*"; return 0; fi
        (( cap > left )) && cap=$left
        OUT="" TIMEOUT=$cap "$0" --budget-s $(( cap - 20 )) "$@" "${extra[@]}" || true
    }
    {
        command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
        part 150 --tag eager --no-cli --no-compile --attentions eager --methods sora lora sora_code lora_legacy adalora
        graphs=(--no-cli --precisions bf16 --attentions eager --compile-dynamic false --compile-mode reduce-overhead
                --min-compile-group-s 0)
        part 300 --tag graphs "${graphs[@]}" --methods sora lora
        part 300 --tag graphs_code "${graphs[@]}" --methods sora_code lora_legacy
        echo "gpu_check session: ${SECONDS} s"
    } 2>&1 | tee "$log"
    copy_out "$marker" "$log" gpu_session.log
    exit 0
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
copy_out "$marker" "$log" gpu_check.log
exit "$status"
