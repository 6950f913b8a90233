"""The import graph points one way: foundation < methods (tuners, diagnostics) < the loop (train) < harness.

Read from the source with ``ast`` (function-level imports included), so a new arrow back up fails here, not in a
review. Issue #27: tuners once imported the loop's optimizer helpers and read result records.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "sora"

FOUNDATION = {"sora.errors", "sora.schema", "sora.optim", "sora.metrics", "sora.config", "sora.models",
              "sora.data", "sora.records", "sora.attention", "sora.device"}
# (package or module, what it must never import)
RULES = [
    ("sora.tuners", ("sora.train", "sora.results", "sora.sft", "sora.records", "sora.rank_patterns", "sora.cost",
                     "sora.controls", "sora.hf_trainer", "sora.cli", "sora.validate", "sora.run_schema")),
    ("sora.diagnostics", ("sora.train", "sora.results", "sora.sft", "sora.cost", "sora.controls", "sora.cli")),
    ("sora.results", ("sora.train", "sora.sft", "sora.cli")),
    # the Trainer bridge and SFT run inside a stock transformers.Trainer: nothing of the GLUE loop
    ("sora.hf_trainer", ("sora.train", "sora.results", "sora.sft")),
    ("sora.sft", ("sora.train",)),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m == "sora" or m.startswith("sora.")}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


GRAPH = {_module_name(p): _imports(p) for p in ROOT.rglob("*.py")}


def test_the_graph_is_read():
    assert "sora.train.loop" in GRAPH and "sora.tuners.methods" in GRAPH
    assert "sora.tuners.methods" in GRAPH["sora.train.loop"]  # the loop builds methods: a real, downward arrow


def test_foundation_imports_only_foundation():
    for module, imports in GRAPH.items():
        if any(_under(module, f) for f in FOUNDATION):
            upward = [m for m in imports if not any(_under(m, f) for f in FOUNDATION)]
            assert not upward, f"{module} (foundation) imports {upward}"


def test_no_arrow_points_back_up():
    for package, forbidden in RULES:
        for module, imports in GRAPH.items():
            if _under(module, package):
                bad = sorted(m for m in imports if any(_under(m, f) for f in forbidden))
                assert not bad, f"{module} imports {bad}"


def _readme_layout() -> dict[str, set[str]]:
    """The README's Layout block as {folder: the .py files it names}."""
    text = (ROOT.parent / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    named, folder = {}, None
    for line in block.splitlines():
        if line and not line.startswith(" "):
            folder = line.split()[0]
            named.setdefault(folder, set())
        if folder and folder.startswith("sora/"):
            words = (w.strip("(),") for w in line.split())
            named[folder].update(w for w in words if w.endswith(".py") and "/" not in w)
    return named


def _plugin_modules() -> set[str]:
    """``sora/tuners/<name>.py`` files whose module registers a method: the README names them as a kind ("one
    plugin module per method"), so adding a method touches no README line."""
    import sys

    from sora.tuners.methods import METHODS

    files = {Path(sys.modules[cls.__module__].__file__) for cls in METHODS.values()}
    return {f.name for f in files if f.parent == ROOT / "tuners"}


def test_readme_layout_names_every_library_module_and_nothing_else():
    named = _readme_layout()
    plugins = _plugin_modules()
    assert {"lora.py", "adalora.py"} <= plugins
    for folder, files in named.items():
        if not folder.startswith("sora/"):
            continue
        on_disk = {p.name for p in (ROOT.parent / folder).glob("*.py")} - {"__init__.py"}
        if folder == "sora/tuners/":
            on_disk -= plugins - files  # an unnamed plugin module is covered by "one plugin module per method"
        assert files == on_disk, (f"{folder}: README names {sorted(files - on_disk)} that do not exist, "
                                  f"omits {sorted(on_disk - files)}")
    packages = {str(p.parent.relative_to(ROOT.parent)) + "/" for p in ROOT.rglob("*.py")}
    assert packages <= set(named), f"folders missing from the README's Layout: {sorted(packages - set(named))}"
