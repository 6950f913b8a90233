"""SoRA inside TRL's SFTTrainer with the README's three lines: prompt-completion data, completion-only loss,
the prox step pruning ranks, ranks in the logged history, and the same trajectory as a stock Trainer."""

import pytest
import torch
from omegaconf import OmegaConf

from sora import SoraCallback, SoraConfig, get_sora_model, sora_optimizer
from sora.models import load_tokenizer
from sora.sft.model import load_causal_lm
from sora.tuners.sora.model import gate_parameters, sora_ranks
from tests.conftest import ROOT

trl = pytest.importorskip("trl", reason="trl is not installed (pip install -e '.[trl]')")

ROWS = [{"prompt": f"Reverse the order of these words: {a} {b}\n", "completion": f"{b} {a}"}
        for a, b in (("apple", "river"), ("stone", "cloud"), ("tiger", "lemon"), ("piano", "garden"))] * 8


def _model_and_tokenizer():
    lm = OmegaConf.load(ROOT / "conf" / "lm" / "tiny_llama.yaml")
    tok = load_tokenizer(lm)
    tok.eos_token = tok.sep_token  # a BERT vocabulary (offline) has no eos: TRL appends eos to completions
    model = load_causal_lm(lm, len(tok), tok.pad_token_id, seed=0)
    return model, tok


def test_sora_in_sft_trainer_prunes_logs_ranks_and_masks_prompts(tmp_path):
    from datasets import Dataset

    model, tok = _model_and_tokenizer()
    model = get_sora_model(model, SoraConfig(r_max=4, lora_alpha=8, variant="code", xi=0.1, l1_coef=1.0))
    before = [g.detach().clone() for g in gate_parameters(model)]
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=5e-3,
                         logging_steps=2, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
                         completion_only_loss=True, max_length=64, seed=0)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tok,
                             optimizers=(sora_optimizer(model, args), None))
    SoraCallback.attach(trainer, export_dir="sora_pruned")
    batch = next(iter(trainer.get_train_dataloader()))
    prompt_len = len(tok(ROWS[0]["prompt"], add_special_tokens=False)["input_ids"])
    assert (batch["labels"][0, :prompt_len] == -100).all()  # the prompt is not in the loss (TRL's own masking)
    trainer.train()

    after = gate_parameters(model)
    # release prox: |g| < 2 xi -> 0 each step, so every gate that started below 0.2 in magnitude is gone
    assert all(bool((g[b.abs() < 0.2] == 0).all()) for b, g in zip(before, after))
    total = sum(sora_ranks(model).values())
    assert 0 < total < 4 * 14
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and logged[-1]["sora/total_rank"] == total
    assert (tmp_path / "sora_pruned" / "adapter_config.json").is_file()


def test_sft_trainer_and_stock_trainer_follow_the_same_sora_trajectory(tmp_path):
    """The wiring does not depend on which Trainer runs it: the same tokenised rows, same order, same gates."""
    from datasets import Dataset
    from transformers import Trainer

    results = []
    for kind in ("trl", "stock"):
        model, tok = _model_and_tokenizer()
        model = get_sora_model(model, SoraConfig(r_max=4, lora_alpha=8, variant="code", xi=0.05, l1_coef=1.0))
        args = trl.SFTConfig(output_dir=str(tmp_path / kind), max_steps=5, per_device_train_batch_size=4,
                             learning_rate=5e-3, report_to="none", use_cpu=True, save_strategy="no", seed=0,
                             disable_tqdm=True, completion_only_loss=True, max_length=64,
                             train_sampling_strategy="sequential")
        sft = trl.SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tok,
                             optimizers=(sora_optimizer(model, args), None))
        trainer = sft
        if kind == "stock":  # the rows SFTTrainer tokenised, its collator, a plain Trainer
            trainer = Trainer(model=model, args=args, train_dataset=sft.train_dataset, data_collator=sft.data_collator,
                              optimizers=(sft.optimizer, None))
        SoraCallback.attach(trainer, export_dir=None)
        trainer.train()
        results.append([g.detach().clone() for g in gate_parameters(model)])
    # the two Trainers' gates differ by float noise that Adam amplifies on gates with tiny gradients (measured: up
    # to 7e-6 with a parameter per gate, 1.9e-5 with the gate bank's other summation order, after 5 steps at lr
    # 5e-3); a missing L1 term or prox in one path would move gates by ~lr = 5e-3 a step
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=5e-5) and torch.equal(a == 0, b == 0)
