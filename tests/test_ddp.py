"""SoRA in a stock Trainer under DDP (torchrun, 2 CPU processes, gloo): every rank ends with the same gates
(the prox step is deterministic and runs on identical, all-reduced parameters), equal to one process that
sees the same global batches (the L1 term counted once, not once per process)."""

import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

WORKER = ROOT / "tests" / "ddp_sora_worker.py"


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("torchrun", path=str(ROOT / ".venv" / "bin")) and not shutil.which("torchrun"),
                    reason="torchrun is not on the PATH")
def test_ddp_ranks_keep_identical_gates_equal_to_one_process(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517"]
    ddp = subprocess.run([*torchrun, str(WORKER), str(tmp_path / "ddp"), "2"], capture_output=True, text=True,
                         timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "one"), "4"], capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / "ddp" / f"gates_rank{r}.pt") for r in (0, 1))
    one = torch.load(tmp_path / "one" / "gates_rank0.pt")
    assert all(torch.equal(a, b) for a, b in zip(r0, r1))  # bitwise: the same prox on the same numbers
    zeros = sum(int((g == 0).sum()) for g in one)
    assert 0 < zeros < sum(g.numel() for g in one)  # the run pruned some ranks and kept others
    for a, b in zip(r0, one):
        assert torch.equal(a == 0, b == 0)
        assert torch.allclose(a, b, atol=1e-5)
