"""Exact parameter counts on DeBERTa-v3-base shapes: six matrices x 12 layers = 165,888 per rank."""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

from sora.tuners.lora import LoraMethod
from sora.tuners.methods import count_params
from sora.tuners.sora.method import SoraMethod

CONFIG = json.loads((Path(__file__).parent / "fixtures" / "deberta_v3_base_config.json").read_text())


def _base():
    with torch.device("meta"):  # shapes only: no 184M-parameter allocation
        return DebertaV2ForSequenceClassification(DebertaV2Config(**CONFIG, num_labels=2))


def _cfg(**kw):
    base = dict(targets="all", head="trainable", lora_dropout=0.0, lora_alpha=16)
    return OmegaConf.create({**base, **kw})


@pytest.mark.parametrize("r", [4, 8, 16])
def test_lora_retained_is_165888_per_rank(r):
    method = LoraMethod(_base(), _cfg(name="lora", r=r), total_steps=1)
    params = count_params(method, hidden_size=768)
    # per layer: Q, K, V, AO: 4 x (768 + 768); I: 768 + 3072; O: 3072 + 768  -> 13,824 per rank; x 12 layers
    assert params["retained"] == 165_888 * r
    # the released compute_trainable_sparse_param (src/util.py:8-21): every trainable numel when there are no
    # gates, the head included: pooler 768 x 768 + 768, classifier 768 x 2 + 2
    assert params["retained_repo_formula"] == 165_888 * r + 590_592 + 1_538


def test_sora_retained_counts_only_non_zero_ranks():
    method = SoraMethod(_base(), _cfg(name="sora", r_max=8, xi=0.0, variant="paper", gate_init="ones",
                                      l1_coef=0.0, gate_lr=None), total_steps=1)
    method.ranks = lambda: {n: (2 if ".intermediate." in n else 8) for n in _names(method)}
    params = count_params(method, hidden_size=768)
    # intermediate.dense kept 2 of 8 ranks in each of 12 layers: 165,888 * 8 - 12 * 6 * (768 + 3072)
    assert params["retained"] == 165_888 * 8 - 12 * 6 * 3840
    # the released formula: trainable non-gate numel (A, B and the head) minus 2 x 768 per zero gate entry, so
    # a pruned FFN rank is charged 1,536 instead of its real 3,840
    assert params["retained_repo_formula"] == 165_888 * 8 + 590_592 + 1_538 - 12 * 6 * 1536


def _names(method):
    from sora.tuners.sora.model import lora_linears

    return [n for n, _ in lora_linears(method.model)]
