"""wandb offline-first: history read back from the run file; failures still finish the run; none = no import."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sora.config import load_config
from sora.errors import UserError
from sora.metrics import compute_metrics
from sora.train.loop import train
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _wandb_file(results: Path) -> Path:
    return next(results.glob("records/*/wandb/offline-run-*/run-*.wandb"))


def test_offline_wandb_history_holds_metrics_and_ranks_at_each_evaluation(tiny_overrides, monkeypatch):
    pytest.importorskip("wandb", reason="the optional extra: pip install 'sora-glue[wandb]'")
    from tests.wandb_offline import exit_code, history, wait_for_exit

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(["task=cola", "method=sora", "logger=wandb", *tiny_overrides])
    record = train(cfg)
    path = _wandb_file(Path(cfg.results_dir))
    wait_for_exit(path)
    rows = [r for r in history(path) if "select/mcc" in r]
    assert [r["_step"] for r in rows] == [e["step"] for e in record["evals"]] == [3, 6]
    for row, point in zip(rows, record["evals"]):
        assert row["validation/mcc"] == pytest.approx(point["report"]["validation"]["mcc"])
        assert row["total_rank"] == point["total_rank"]
        assert sum(row[f"ranks/{k}"] for k in ("Q", "K", "V", "AO", "I", "O")) == point["total_rank"]
        assert row["nonzero_params"] == point["nonzero_params"] and "xi" in row and "lr/gate" in row
    assert any(key.startswith("rank_heatmap") for r in history(path) for key in r)  # an image: nested keys
    assert exit_code(path) == 0


def test_a_failing_run_still_finishes_its_wandb_run(tiny_overrides, monkeypatch):
    pytest.importorskip("wandb", reason="the optional extra: pip install 'sora-glue[wandb]'")
    import torch

    from sora.train import loop
    from tests.wandb_offline import exit_code, wait_for_exit

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    real = loop.build_method

    def nan_loss(*a, **k):
        method = real(*a, **k)
        method.extra_loss = lambda: torch.tensor(float("nan"))
        return method

    monkeypatch.setattr(loop, "build_method", nan_loss)
    cfg = load_config(["task=cola", "method=sora", "logger=wandb", "train.log_steps=1", *tiny_overrides])
    with pytest.raises(UserError, match="non-finite loss"):
        train(cfg)
    path = _wandb_file(Path(cfg.results_dir))
    wait_for_exit(path)
    assert exit_code(path) == 1


def test_logger_none_never_imports_wandb(tmp_path):
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from sora.config import load_config\nfrom sora.train.loop import train\n"
            f"train(load_config(['task=cola', 'model=tiny', 'data.dir={ROOT}/tests/fixtures/glue', "
            f"'results_dir={tmp_path}', 'train.max_steps=2', 'train.batch_size=8', 'progress=false']))\n"
            "assert 'wandb' not in sys.modules, 'wandb was imported'\nprint('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-1500:]


def test_logger_wandb_without_the_extra_names_it(tiny_overrides, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(UserError, match=r"pip install 'sora-glue\[wandb\]'"):
        train(load_config(["task=cola", "method=sora", "logger=wandb", *tiny_overrides]))


def test_metrics_agree_with_the_evaluate_library():
    evaluate = pytest.importorskip("evaluate", reason="`evaluate` is not installed (pip install evaluate)")
    try:
        glue_mrpc = evaluate.load("glue", "mrpc")
        glue_cola = evaluate.load("glue", "cola")
        glue_stsb = evaluate.load("glue", "stsb")
    except Exception as exc:  # offline: evaluate fetches its metric scripts from the hub
        pytest.skip(f"evaluate's GLUE metric needs the hub or a warm cache ({type(exc).__name__})")
    preds, labels = [1, 0, 1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 0, 1, 1, 0]
    ours = compute_metrics(["accuracy", "f1"], preds, labels)
    theirs = glue_mrpc.compute(predictions=preds, references=labels)
    assert ours["accuracy"] == pytest.approx(theirs["accuracy"]) and ours["f1"] == pytest.approx(theirs["f1"])
    assert compute_metrics(["mcc"], preds, labels)["mcc"] == pytest.approx(
        glue_cola.compute(predictions=preds, references=labels)["matthews_correlation"])
    scores, gold = [0.1, 2.0, 3.5, 4.9, 1.2], [0.0, 2.5, 3.0, 5.0, 1.0]
    st = glue_stsb.compute(predictions=scores, references=gold)
    ours = compute_metrics(["pearson", "spearman"], scores, gold)
    assert ours["pearson"] == pytest.approx(st["pearson"]) and ours["spearman"] == pytest.approx(st["spearmanr"])
