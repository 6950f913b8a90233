"""The wheels carried to a bare GPU machine: every requirement of what the GPU check imports, closed under
"requires", pinned to this environment's versions (the first GPU session would have failed at ``import
transformers``: the image's huggingface-hub 1.33 is below transformers' >= 2.4, and only the top-level packages were
carried)."""

from __future__ import annotations

import sys
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_pins  # noqa: E402

GRAPH = {  # a hand-made dependency graph: what each package requires, and its installed version
    "a": (["b>=1", "c; python_version < '3.11'", "d; extra == 'docs'", "torch>=2", "nvidia-cublas", "E_F"], "1.0"),
    "b": (["numpy", "a"], "2.0"), "c": ([], "3.0"), "d": ([], "4.0"), "e-f": ([], "5.0"),
}


def fake(monkeypatch):
    def requires(name):
        return GRAPH[name][0]

    def installed(name):
        if name not in GRAPH:
            raise gpu_pins.PackageNotFoundError(name)
        return GRAPH[name][1]

    monkeypatch.setattr(gpu_pins, "requires", requires)
    monkeypatch.setattr(gpu_pins, "version", installed)


def test_closure_follows_requirements_for_the_target_python_only(monkeypatch):
    fake(monkeypatch)
    # 3.12: c's marker is false, d is an extra, torch / numpy / nvidia-* are the image's; the cycle b -> a ends
    assert gpu_pins.closure(("a",), "3.12") == {"a": "1.0", "b": "2.0", "e-f": "5.0"}
    assert gpu_pins.closure(("a",), "3.10") == {"a": "1.0", "b": "2.0", "c": "3.0", "e-f": "5.0"}


def test_a_requirement_not_installed_here_is_a_one_line_error(monkeypatch):
    fake(monkeypatch)
    monkeypatch.setitem(GRAPH, "c", (["zz"], "3.0"))
    with pytest.raises(SystemExit, match="zz is required but not installed here"):
        gpu_pins.closure(("a",), "3.10")


def test_the_real_pins_are_closed_and_meet_the_projects_requirements():
    """What pip resolves offline over there: every pinned package's requirements (for the image's python 3.12)
    are pinned too, or left to the image on purpose; and the pins satisfy pyproject.toml's own ranges."""
    pins = gpu_pins.closure(python="3.12")
    assert {"transformers", "huggingface-hub", "peft", "hydra-core", "omegaconf"} <= set(pins)
    env = gpu_pins.marker_env("3.12")
    checked = 0
    for text in requires("sora-glue"):  # pyproject.toml's ranges, as installed (the flash extra: the check uses it)
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name in pins and (req.marker is None or req.marker.evaluate({**env, "extra": "flash"})):
            assert req.specifier.contains(pins[name]), (text, pins[name])
            checked += 1
    assert checked >= 5
    for name in pins:
        for text in gpu_pins.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = canonicalize_name(req.name)
            if dep in gpu_pins.LEFT_OUT or dep.startswith("nvidia-"):
                continue
            assert dep in pins, f"{name} requires {dep}, not pinned"
            assert req.specifier.contains(pins[dep], prereleases=True), f"{name} needs {req}, pinned {pins[dep]}"
