import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch's intra-op threads per pytest-xdist worker (and per subprocess a test starts, which inherits this): the cores
# shared out, not all of them each. 2 workers x 2 OpenMP threads on 2 cores spin against each other: the end-to-end
# tests (train_e2e, release_fidelity, sweeps) took 647 s that way and 131 s with one thread each, same load.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
GLUE_FIXTURE = FIXTURES / "glue"
SHARED = ROOT.parent / "shared"


@pytest.fixture
def tiny_overrides(tmp_path):
    """A few-step tiny-model run on the committed real-GLUE fixture rows."""
    return [f"results_dir={tmp_path}/results", "model=tiny", f"data.dir={GLUE_FIXTURE}", "train.max_steps=6",
            "train.eval_steps=3", "train.batch_size=8", "progress=false", "data.max_len=64"]


def tiny_base(num_labels=2, seed=0):
    from omegaconf import OmegaConf

    from sora.models import load_model

    return load_model(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml"), num_labels, seed)


def needs_shared():
    reason = "../shared/glue is absent (it exists only on the project's dev machines)"
    return pytest.mark.skipif(not (SHARED / "glue").is_dir(), reason=reason)


def stock_peft_scores(cfg, adapter: Path, task: str, num_labels: int, workdir: Path) -> dict:
    """The run's exported adapter scored by ``scripts/eval_adapter.py`` in another process: stock transformers +
    peft on the run's own (seeded, saved) backbone and tokenizer, the dev rows of the GLUE fixture."""
    import json
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from sora.models import load_model, resolve_source

    load_model(cfg.model, num_labels, cfg.seed).save_pretrained(workdir / "base")
    AutoTokenizer.from_pretrained(resolve_source(cfg.model.tokenizer)).save_pretrained(workdir / "base")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "eval_adapter.py"), str(adapter), "--task", task,
                          "--data-dir", str(GLUE_FIXTURE), "--base", str(workdir / "base"), "--max-len",
                          str(cfg.data.max_len)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def pytest_collection_modifyitems(config, items):
    """End-to-end tests (``slow``) first: under pytest-xdist the longest ones then start early instead of leaving
    one worker running a two-minute test after the other has finished (the order within each group is kept)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
