"""The CLI's GPU path, run on the CPU: precision ``auto`` (resolved, and the same run id as fp32 here), batches
handed over one step ahead, length buckets, ``train.compile`` modes with their graphs counted, and the record's
runtime facts (device, versions, compile, training-only tokens/s)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from sora.config import load_config
from sora.data.batching import Encoded, length_buckets, pad_width
from sora.data.prefetch import ahead
from sora.device import resolve_precision
from sora.errors import UserError
from sora.records import read_record, run_id
from sora.validate import validate_run_config

ROOT = Path(__file__).resolve().parents[1]
# a record written before train.precision=auto existed (fp32 by the old default, compile false, no pad_buckets)
COMMITTED = ROOT / "results" / "minilm_verdict" / "records" / "stsb-lora-minilm-s0-1e4ed283b0" / "record.json"


def test_auto_precision_resolves_per_device():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked for: kept (slow_bf16 warns)
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
    if not torch.cuda.is_available():  # planned on a GPU-less login node: every card since Ampere runs bf16
        assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(UserError, match="auto, fp32 or bf16"):
        resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.skipif(not COMMITTED.exists(), reason="the committed verdict records are absent")
@pytest.mark.skipif(torch.cuda.is_available(), reason="device=auto is a GPU here: auto resolves to bf16")
def test_auto_on_a_cpu_is_the_committed_fp32_run():
    """Run ids written before ``auto`` stay valid: the record's own config, precision set to auto, maps to its id."""
    rec = read_record(COMMITTED)
    config = json.loads(json.dumps(rec["config"]))
    assert config["train"]["precision"] == "fp32" and config["train"]["compile"] is False
    config["train"]["precision"] = "auto"
    assert run_id(OmegaConf.create(config), rec["identity"]["data"]["fingerprint"]) == rec["run_id"]
    config["train"]["compile"] = "off"  # the bool's new name
    assert run_id(OmegaConf.create(config), rec["identity"]["data"]["fingerprint"]) == rec["run_id"]
    config["train"]["precision"] = "bf16"
    assert run_id(OmegaConf.create(config), rec["identity"]["data"]["fingerprint"]) != rec["run_id"]


def test_length_buckets_by_hand():
    assert length_buckets(128, 4) == (32, 64, 96, 128)
    assert length_buckets(64, 3) == (24, 48, 64)  # ceil(64/3) = 22 -> 24, ceil(128/3) = 43 -> 48
    assert length_buckets(20, 4) == (8, 16, 20)   # 5 and 10 round up to 8 and 16; the last is max_len itself
    assert length_buckets(128, 0) is None
    assert [pad_width(n, (32, 64, 128)) for n in (1, 32, 33, 128)] == [32, 32, 64, 128]
    assert pad_width(7, None) == 7 and pad_width(7, 16) == 16


def _encoded(lengths):
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return Encoded(np.arange(offsets[-1], dtype=np.int32) % 50 + 1, offsets, np.arange(len(lengths)) % 2)


def test_bucketed_batch_pads_to_the_bucket_and_masks_the_rest():
    enc = _encoded([3, 10, 5])
    b = enc.batch([0, 2], pad_id=0, pad_to=length_buckets(64, 8))
    assert b["input_ids"].shape == (2, 8)  # longest row 5 -> the 8-wide bucket
    assert b["attention_mask"].sum(1).tolist() == [3, 5]
    assert b["input_ids"][0, 3:].eq(0).all() and b["input_ids"][1, 5:].eq(0).all()


def test_ahead_hands_over_the_same_batches_in_order_with_their_tokens():
    enc = _encoded([3, 10, 5, 7, 2])
    idx = [[0, 1], [2, 3], [4]]
    host = [enc.batch(i, 0) for i in idx]
    got = list(ahead(iter(host), torch.device("cpu")))
    assert [t for _, t in got] == [13, 12, 2]  # the non-pad tokens: 3+10, 5+7, 2
    for (batch, _), want in zip(got, host):
        assert batch.keys() == want.keys() and all(torch.equal(batch[k], want[k]) for k in want)
    assert list(ahead(iter([]), torch.device("cpu"))) == []


def test_reduce_overhead_without_buckets_is_a_one_line_error(tiny_overrides):
    cfg = load_config(["task=mrpc", "method=lora", *tiny_overrides, "train.compile=reduce-overhead"])
    with pytest.raises(UserError, match="data.pad_buckets=8"):
        validate_run_config(cfg, hub=False)
    validate_run_config(load_config(["task=mrpc", "method=lora", *tiny_overrides, "train.compile=reduce-overhead",
                                     "data.pad_buckets=4"]), hub=False)


@pytest.mark.slow
def test_bucketed_compiled_run_matches_todays_path_and_records_what_ran(tiny_overrides, monkeypatch):
    """Buckets + compile (dynamo's capture with the eager backend: no C++ build in CI) give today's metrics to
    round-off, compile a bounded number of graphs, and the record states precision, device, compile and tokens/s."""
    import sora.train.compiled as compiled
    from sora.train.loop import train

    monkeypatch.setattr(compiled, "BACKEND", "eager")
    torch._dynamo.reset()  # graphs counted from scratch: an earlier test's cache would make them 0
    common = ["task=stsb", "method=sora", *tiny_overrides, "train.max_steps=12", "train.eval_steps=6"]
    plain = train(load_config(common))
    fast = train(load_config([*common, "data.pad_buckets=4", "train.compile=default"]))
    assert plain["run_id"] != fast["run_id"]  # padding widths are part of what ran
    for a, b in zip(plain["evals"], fast["evals"]):
        assert b["report"]["validation"]["pearson"] == pytest.approx(a["report"]["validation"]["pearson"], abs=1e-4)
        assert b["total_rank"] == a["total_rank"]
    rt_plain, rt = plain["runtime"], fast["runtime"]
    assert rt_plain["precision"] == rt["precision"] == "fp32" and rt["device"] == "cpu" and rt["torch"]
    assert rt_plain["compile"] == {"mode": "off", "graphs": None, "graph_breaks": None, "cudagraph_skips": None}
    # buckets of data.max_len=64: (16, 32, 48, 64); a full batch and at most one shorter last batch per width, and
    # SoRA's gate bank traces without a break (before its compile path: 36 graphs, one recompile per module)
    assert rt["compile"]["mode"] == "default" and 1 <= rt["compile"]["graphs"] <= 2 * 4
    assert rt["compile"]["graph_breaks"] == 0 and rt["compile"]["cudagraph_skips"] == 0  # dynamo's eager backend
    # the tokens trained on: the non-pad tokens of the 12 batches, the same whatever the padding
    assert rt["train_tokens"] == rt_plain["train_tokens"] > 12 * 8
    assert rt["train_tokens_per_s"] > 0 and rt["train_seconds"] < fast["wall_time_s"]


def test_the_record_counts_the_graphs_inductor_ran_without_a_cuda_graph(monkeypatch):
    """``runtime.compile.cudagraph_skips``: inductor's own counter, counted from when the forward was built (a
    reduce-overhead run on a GPU that says 0 ran its graphs as CUDA graphs; inductor logs why it skipped)."""
    from torch._dynamo.utils import counters

    from sora.train.compiled import CompiledForward

    monkeypatch.setitem(counters["inductor"], "cudagraph_skips", 5)
    forward = CompiledForward(torch.nn.Linear(2, 2), "default", bucketed=True)
    assert forward.graphs()["cudagraph_skips"] == 0
    counters["inductor"]["cudagraph_skips"] += 2
    assert forward.graphs() == {"graphs": 0, "graph_breaks": 0, "cudagraph_skips": 2}
    assert CompiledForward(torch.nn.Linear(2, 2), "off", bucketed=True).graphs() is None
