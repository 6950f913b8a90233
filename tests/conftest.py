import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
