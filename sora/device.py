"""Where a run computes and in what precision, resolved in one place.

``device=auto`` and ``train.precision=auto`` name choices that depend on the machine; a run's identity holds what
was chosen, so an ``auto`` run on a CPU is the same run as an ``fp32`` one (run ids written before ``auto``
existed stay valid) and on a bf16-capable GPU it is a ``bf16`` run. The record's ``runtime`` says what ran and
with which driver, CUDA and libraries.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import subprocess
from pathlib import Path

import torch

from sora.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name) -> torch.device:
    """``auto`` = the first CUDA device when this torch sees one, else the CPU."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` = bf16 autocast on a CUDA device with native bf16, fp32 everywhere else (CPU autocast is emulated
    on most CPUs: ``slow_bf16``). ``device=cuda`` planned on a machine without CUDA (a Slurm login node) resolves
    to bf16, as every card since Ampere runs it; a run on an older card resolves to fp32 under another run id."""
    if precision not in PRECISIONS:
        raise UserError(f"train.precision must be auto, fp32 or bf16, got {precision!r}; e.g. train.precision=auto")
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    if not torch.cuda.is_available():
        return "bf16"
    return "bf16" if _native_bf16(device) else "fp32"


def _native_bf16(device: torch.device) -> bool:
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def autocast_factory(precision: str, device: torch.device):
    """A zero-argument context factory for the forward pass: nothing (fp32) or bf16 autocast on any device."""
    if precision == "fp32":
        return contextlib.nullcontext
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    raise UserError(f"train.precision must be fp32 or bf16 here (auto is resolved first), got {precision!r}")


def slow_bf16(precision: str, device: torch.device, cpuinfo: str | None = None) -> str | None:
    """bf16 autocast on a CPU without native bf16 (AVX512-BF16 or AMX) is emulated: measured 14x slower than fp32
    per MiniLM step on an AMD EPYC without AVX-512 (results/minilm_verdict/PILOT.md), 1.35x faster with it."""
    if precision != "bf16" or device.type != "cpu":
        return None
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    if any(flag in cpuinfo for flag in ("avx512_bf16", "amx_bf16")):
        return None
    return ("train.precision=bf16 on a CPU without native bf16 (no avx512_bf16 / amx_bf16 in /proc/cpuinfo): autocast "
            "is emulated and can be ~14x slower than fp32 here; train.precision=fp32 is faster on this machine")


def device_facts(device: torch.device) -> dict:
    """The machine behind a run's numbers: device name, and on CUDA the driver, CUDA and cuDNN versions."""
    out = {"device": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        out.update(device_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), driver=_nvidia_driver(),
                   capability=".".join(map(str, torch.cuda.get_device_capability(device))))
    else:
        out["device_name"] = platform.processor() or platform.machine()
    return out


@functools.lru_cache(maxsize=1)
def _nvidia_driver() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None
