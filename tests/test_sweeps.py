"""Sweeps: the smoke multirun end to end, skip-on-rerun, config-derived run ids, and the Slurm launcher."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sora.config import CONF_DIR, group_choices, load_config
from sora.records import read_record, run_id
from tests import script_process
from tests.conftest import GLUE_FIXTURE, ROOT

TRAIN = [sys.executable, str(ROOT / "scripts" / "train.py")]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_smoke_sweep_leaves_a_record_per_task_and_method_and_a_rerun_adds_none(tmp_path):
    res = script_process.run([*TRAIN, "-m", "experiment=smoke", f"results_dir={tmp_path}"], capture_output=True,
                         text=True, env=ENV, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    paths = sorted(tmp_path.glob("records/*/record.json"))
    methods = group_choices("method")  # every registered method: ${methods:} in experiment=smoke
    assert {"sora", "lora", "adalora"} <= set(methods) and len(paths) == 2 * len(methods)
    records = [read_record(p) for p in paths]
    assert {(r["task"], r["method"]) for r in records} == {(t, m) for t in ("cola", "mrpc") for m in methods}
    for r in records:
        if r["method"] == "adalora":
            assert r["params"]["total_rank"] < r["params"]["max_rank"]  # 12 -> 8 per module: the budget shrank
    before = {p: p.stat().st_mtime_ns for p in paths}
    again = script_process.run([*TRAIN, "-m", "experiment=smoke", f"results_dir={tmp_path}"], capture_output=True,
                           text=True, env=ENV, timeout=600)
    assert again.returncode == 0
    assert again.stdout.count("not overwriting") == len(paths)
    assert sorted(tmp_path.glob("records/*/record.json")) == paths
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())


def test_run_id_follows_the_config_not_the_clock_or_paths():
    a = load_config(["task=cola", "method=sora", "seed=1"])
    b = load_config(["task=cola", "method=sora", "seed=1", "results_dir=/elsewhere", "progress=false",
                     "train.save_steps=7", "train.log_steps=3", "logger=wandb"])
    c = load_config(["task=cola", "method=sora", "seed=1", "method.xi=0.5"])
    assert run_id(a) == run_id(b)
    assert run_id(a) != run_id(c)
    assert run_id(a).startswith("cola-sora-minilm-s1-")


def test_run_id_follows_the_data_read_not_the_folder_name(tmp_path):
    """Stale reuse: SST-2 on the 8,000-row sample and on other rows must be two runs; a copy of the same
    files elsewhere is the same run; the hub's revision is part of the id."""
    same, other = tmp_path / "same", tmp_path / "other"
    shutil.copytree(GLUE_FIXTURE, same)
    shutil.copytree(GLUE_FIXTURE, other)
    path = other / "cola" / "train.tsv.gz"
    import gzip

    rows = gzip.decompress(path.read_bytes()).decode().splitlines()
    path.write_bytes(gzip.compress(("\n".join(rows[:-1]) + "\n").encode()))  # one row fewer
    ids = {d: run_id(load_config(["task=cola", f"data.dir={d}"])) for d in (GLUE_FIXTURE, same, other)}
    assert ids[GLUE_FIXTURE] == ids[same] != ids[other]
    assert run_id(load_config(["task=cola"])) != run_id(load_config(["task=cola", "data.revision=abc123"]))


def test_hparams_follow_task_and_method_and_the_command_line_wins():
    cfg = load_config(["task=rte", "method=adalora"])
    assert cfg.train.lr == 1.2e-3 and cfg.method.orth_reg_weight == 0.3 and cfg.data.max_len == 320
    cfg = load_config(["task=rte", "method=adalora", "train.lr=1e-4"])
    assert cfg.train.lr == 1e-4
    cfg = load_config(["task=stsb", "method=sora"])
    assert cfg.train.batch_size == 8 and cfg.method.l1_coef == 10 and cfg.method.variant == "code"
    cfg = load_config(["task=cola", "method=lora", "hparams_set=sora_authors_lora"])
    assert cfg.train.lr == 8e-5 and cfg.train.batch_size == 8


def _launcher_cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    return cfg


def test_slurm_launcher_composes_and_renders_an_sbatch_script(tmp_path):
    import submitit

    cfg = _launcher_cfg(["experiment=paper_table1", "hydra.launcher.partition=gpu", f"results_dir={tmp_path}"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher")
    # the same mapping hydra-submitit-launcher applies before submitting; rendering needs no Slurm, but the
    # executor's constructor refuses to start without `srun` on the PATH (a user's laptop), so that check is lifted
    class RenderOnly(submitit.SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            return 2

    executor = RenderOnly(folder=tmp_path / "slurm", max_num_timeout=launcher["max_num_timeout"])
    keys = {"partition", "cpus_per_task", "gpus_per_node", "mem_gb", "timeout_min", "nodes", "tasks_per_node",
            "additional_parameters", "signal_delay_s", "array_parallelism"}
    renames = {"mem_gb": "mem", "timeout_min": "time", "tasks_per_node": "ntasks_per_node"}  # AutoExecutor's names
    params = {renames.get(k, k): launcher[k] for k in keys}
    params["mem"] = f"{params['mem']}GB"
    params["job_name"] = "sora-test"
    executor.update_parameters(**params)
    text = executor._make_submission_file_text("python scripts/train.py", "uid0")
    assert text.startswith("#!/bin/bash")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --cpus-per-task=8", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --mem=32GB", "#SBATCH --time=240", "#SBATCH --requeue", "#SBATCH --signal=USR2@120"):
        assert line in text, line


def _slurm_up() -> bool:
    return shutil.which("sbatch") is not None and subprocess.run(["sinfo"], capture_output=True).returncode == 0


@pytest.mark.slurm
@pytest.mark.skipif(not _slurm_up(), reason="no running Slurm: start one with scripts/slurm/start_slurm.sh (root)")
def test_real_slurm_runs_a_two_job_multirun(tmp_path):
    res = subprocess.run([*TRAIN, "-m", "experiment=smoke", "method=sora", f"results_dir={tmp_path}",
                          "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
                          "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10"],
                         capture_output=True, text=True, env=ENV, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    records = [read_record(p) for p in Path(tmp_path).glob("records/*/record.json")]
    assert sorted(r["task"] for r in records) == ["cola", "mrpc"]
    assert list(Path(tmp_path, "slurm").glob("*/*_submission.sh"))


# The hand-over decision after a signal (requeue or not) is tested without Slurm in tests/test_interrupt_decision.py.
