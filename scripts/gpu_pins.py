"""The wheels a bare, offline GPU machine needs for the GPU check: the packages the check imports beyond the image's
torch, with everything they require, pinned to the versions this environment runs (the ones CI tests).

Why the whole closure: the image's own packages can be too old for ours (the CUDA image has huggingface-hub 1.33,
transformers 5.25 requires >= 2.4, which requires httpx2, absent there), and nothing can be fetched over there.
``scripts/gpu_check.sh prepare`` downloads these pins for the image's python; on the GPU machine pip resolves them
offline and installs only what the image lacks or has too old. Left out: torch and its CUDA libraries (the image's
build is the point), numpy (the image's is newer than we need, and a second one would shadow what its scipy/pandas
were built against).

    python scripts/gpu_pins.py [--python 3.12] [ROOT ...]      prints NAME==VERSION ...
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOTS = ("transformers", "peft", "hydra-core", "omegaconf", "disentangled-flash")  # what bench_gpu / the CLI import
LEFT_OUT = ("torch", "triton", "numpy", "setuptools")  # and nvidia-*: the image's CUDA stack


def marker_env(python: str) -> dict:
    """The environment markers of the GPU image (CPython ``python`` on x86-64 Linux), no extra selected."""
    return {**default_environment(), "python_version": python, "python_full_version": f"{python}.0",
            "implementation_version": f"{python}.0", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "platform_machine": "x86_64", "sys_platform": "linux",
            "platform_system": "Linux", "os_name": "posix", "extra": ""}


def closure(roots=ROOTS, python: str = "3.12") -> dict[str, str]:
    """Every package ``roots`` require, transitively, for the target python (extras and other platforms' markers
    skipped), mapped to its installed version here. A required package not installed here is an error: its wheel
    could not be pinned."""
    env, pins, todo = marker_env(python), {}, list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in pins or name in LEFT_OUT or name.startswith("nvidia-"):
            continue
        try:
            pins[name] = version(name)
        except PackageNotFoundError as exc:
            raise SystemExit(f"gpu_pins: {name} is required but not installed here; pip install it first") from exc
        for text in requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    return dict(sorted(pins.items()))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="*", default=list(ROOTS))
    ap.add_argument("--python", default="3.12", help="the GPU image's python (markers are evaluated for it)")
    args = ap.parse_args(argv)
    print(" ".join(f"{name}=={ver}" for name, ver in closure(args.roots, args.python).items()))


if __name__ == "__main__":
    main()
