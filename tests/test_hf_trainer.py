"""SoRA in a stock transformers.Trainer: the same trajectory as our own step, exports that stock peft reloads,
resume, ranks in the Trainer's logs; tiny random BERT, Llama and GPT-2 models (offline)."""

import contextlib
import copy
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)

from sora import SoraCallback, SoraConfig, get_sora_model, sora_optimizer
from sora.optim import build_optimizer, linear_schedule, schedule_plan
from sora.train.step import train_step
from sora.tuners.methods import Method
from sora.tuners.sora import step as sora_step
from sora.tuners.sora.model import gate_parameters, lora_linears, sora_ranks

STEPS, BSZ = 50, 4


def _bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    return BertForSequenceClassification(cfg)


def _llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def _gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def _rows(n, causal=False):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 100, (n, 8), generator=g)
    if causal:
        return [{"input_ids": r, "attention_mask": torch.ones(8, dtype=torch.long), "labels": r.clone()}
                for r in ids]
    labels = torch.randint(0, 2, (n,), generator=g)
    return [{"input_ids": r, "attention_mask": torch.ones(8, dtype=torch.long), "labels": y}
            for r, y in zip(ids, labels)]


def _sora(model, xi=1e-3, scale=0.05, **kw):
    config = SoraConfig(r_max=4, lora_alpha=8, variant="code", xi=xi, l1_coef=10.0)
    model = get_sora_model(model, config, **kw)
    with torch.no_grad():
        for g in gate_parameters(model):
            g.mul_(scale)  # small gates: some die (and revive) within the run
    return model


def _args(out, **kw):
    base = dict(output_dir=str(out), per_device_train_batch_size=BSZ, learning_rate=4e-3, weight_decay=0.1,
                max_grad_norm=1.0, lr_scheduler_type="linear", warmup_steps=0, max_steps=STEPS,
                train_sampling_strategy="sequential", logging_steps=5, save_strategy="no", report_to="none",
                disable_tqdm=True, use_cpu=True, seed=0, dataloader_drop_last=True)
    return TrainingArguments(**{**base, **kw})


class _Ours(Method):
    """Our loop's hooks on an already-built SoRA model: the step the GLUE harness runs."""

    def __init__(self, model):
        super().__init__(model)
        self.config, self.gates = model.sora_config, gate_parameters(model)

    def extra_loss(self):
        return sora_step.l1_loss(self.gates, self.config)

    def after_optimizer_step(self, step, optimizer):
        sora_step.prox_(self.gates, self.config, sora_step.gate_lr(optimizer))


def _state(model):
    out = {}
    for name, m in lora_linears(model):
        out[name] = (m.lora_A["default"].weight.detach().clone(), m.lora_B["default"].weight.detach().clone(),
                     m.lora_gate["default"].weight.detach().clone())
    return out


@pytest.mark.parametrize("make,accumulation", [(_bert, 1), (_llama, 1), (_llama, 2)],
                         ids=["bert", "llama", "llama_accumulate2"])
def test_trainer_and_our_step_follow_the_same_trajectory(make, accumulation, tmp_path):
    """With accumulation the model must normalise its loss by the Trainer's num_items_in_batch (a causal LM does;
    transformers 5.24 then skips its own division, so a sequence classifier's mean loss would count twice)."""
    base = _sora(make())
    ours_model = copy.deepcopy(base)
    rows = _rows(STEPS * BSZ * accumulation, causal=make is not _bert)
    trainer = Trainer(model=base, args=_args(tmp_path, gradient_accumulation_steps=accumulation), train_dataset=rows,
                      optimizers=(sora_optimizer(base, _args(tmp_path)), None))
    SoraCallback.attach(trainer, export_dir=None)
    zeros_trainer = []

    from transformers import TrainerCallback

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            zeros_trainer.append(_state(base))

    trainer.add_callback(Record())
    trainer.train()

    method = _Ours(ours_model)
    groups = sora_step.param_groups(ours_model, ours_model.sora_config, 4e-3, 0.1, 1e-8)
    opt = build_optimizer(groups, (0.9, 0.999), torch.device("cpu"), "adamw_hf_legacy")
    sched = linear_schedule(opt, schedule_plan("standard", 0, STEPS, 0, 1, 1))
    trainable = [p for p in ours_model.parameters() if p.requires_grad]
    died = revived = 0
    prev = None
    for step in range(STEPS):
        chunk = rows[step * BSZ * accumulation:(step + 1) * BSZ * accumulation]
        batch = {k: torch.stack([r[k] for r in chunk]) for k in chunk[0]}
        train_step(ours_model, batch, method, opt, sched, step, trainable, 1.0, contextlib.nullcontext)
        theirs, mine = zeros_trainer[step], _state(ours_model)
        for name, (a, b, g) in mine.items():
            ta, tb, tg = theirs[name]
            assert (a - ta).abs().max() <= 1e-6 and (b - tb).abs().max() <= 1e-6, (step, name)
            assert (g - tg).abs().max() <= 1e-6 and torch.equal(g == 0, tg == 0), (step, name)
        zeros = torch.cat([g == 0 for _, _, g in mine.values()])
        died = max(died, int(zeros.sum()))
        revived += int((prev & ~zeros).sum()) if prev is not None else 0
        prev = zeros
    assert died > 0 and revived > 0, (died, revived)  # both paths of the prox were compared


def test_ranks_reach_the_trainers_log_history(tmp_path):
    model = _sora(_llama())
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=20), train_dataset=_rows(80, causal=True),
                      optimizers=(sora_optimizer(model, _args(tmp_path)), None))
    SoraCallback.attach(trainer, export_dir=None)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 4 and all("sora/total_rank" in h for h in logged)
    assert logged[-1]["sora/total_rank"] == sum(sora_ranks(model).values())
    assert {"sora/rank_q_proj", "sora/rank_down_proj"} <= set(logged[-1])


@pytest.mark.slow
@pytest.mark.parametrize("make", [_llama, _gpt2], ids=["llama", "gpt2"])
def test_decoder_export_reloads_in_stock_peft_with_the_gated_logits(make, tmp_path):
    model = _sora(make(), xi=0.02, scale=1.0)
    names = [n for n, _ in lora_linears(model)]
    kinds = {n.rsplit(".", 1)[-1] for n in names}
    assert kinds == ({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
                     if make is _llama else {"c_attn", "c_proj", "c_fc"})  # never lm_head
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=30), train_dataset=_rows(120, causal=True),
                      optimizers=(sora_optimizer(model, _args(tmp_path)), None))
    SoraCallback.attach(trainer)  # exports to <output_dir>/sora_pruned at the end
    trainer.train()
    ranks = sora_ranks(model)
    assert 0 < sum(ranks.values()) < 4 * len(ranks)  # ranks were pruned
    x = torch.randint(3, 100, (2, 8))
    model.eval()
    with torch.no_grad():
        torch.save(model(input_ids=x).logits, tmp_path / "ref.pt")
    torch.save(x, tmp_path / "x.pt")
    base = make()
    base.save_pretrained(tmp_path / "base")
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        from peft import PeftModel
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(tmp_path / 'base')!r}),
                                          {str(tmp_path / 'sora_pruned')!r}).eval()
        x, ref = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'ref.pt')!r})
        with torch.no_grad():
            out = model(input_ids=x).logits
            model.merge_adapter()  # GPT-2: fan_in_fan_out decides the orientation of the merged delta
            merged = model(input_ids=x).logits
            model.unmerge_adapter()
            unmerged = model(input_ids=x).logits
        assert not any(m == "sora" or m.startswith("sora.") for m in sys.modules), "sora was imported"
        print(*[(o - ref).abs().max().item() for o in (out, merged, unmerged)])
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert all(float(v) <= 1e-5 for v in res.stdout.strip().splitlines()[-1].split())  # loaded, merged, unmerged


def test_resume_from_a_trainer_checkpoint_continues_the_same_trajectory(tmp_path):
    def run(out, **kw):
        model = _sora(_bert())
        args = _args(out, **{"max_steps": 20, "save_strategy": "steps", "save_steps": 10, **kw})
        trainer = Trainer(model=model, args=args, train_dataset=_rows(80),
                          optimizers=(sora_optimizer(model, args), None))
        SoraCallback.attach(trainer, export_dir=None)
        return model, trainer

    model, trainer = run(tmp_path / "straight")  # saves checkpoint-10 on the way, as an interrupted run would
    trainer.train()
    reference = _state(model)
    model, resumed = run(tmp_path / "resumed")  # a fresh process's Trainer, optimizer and callback
    resumed.train(resume_from_checkpoint=str(tmp_path / "straight" / "checkpoint-10"))
    for name, (a, b, g) in _state(model).items():
        ra, rb, rg = reference[name]
        assert torch.allclose(a, ra, atol=1e-6) and torch.allclose(b, rb, atol=1e-6)
        assert torch.allclose(g, rg, atol=1e-6) and torch.equal(g == 0, rg == 0)


def test_gradient_checkpointing_keeps_the_trajectory_and_bf16_trains(tmp_path):
    """Checkpointed blocks recompute the same forward: gates equal to the plain run; bf16 autocast runs the same
    wiring (ranks logged, the prox zeroes gates) with a finite loss."""
    def run(out, **kw):
        model = _sora(_llama())
        args = _args(out, max_steps=15, **kw)
        if kw.get("gradient_checkpointing"):
            model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need an input grad
        trainer = Trainer(model=model, args=args, train_dataset=_rows(60, causal=True),
                          optimizers=(sora_optimizer(model, args), None))
        SoraCallback.attach(trainer, export_dir=None)
        trainer.train()
        return [g.detach().clone() for g in gate_parameters(model)], trainer

    plain, _ = run(tmp_path / "plain")
    checkpointed, _ = run(tmp_path / "gc", gradient_checkpointing=True)
    assert any(bool((g == 0).any()) for g in plain)  # the comparison covers pruned gates
    for a, b in zip(plain, checkpointed):
        assert torch.equal(a == 0, b == 0) and torch.allclose(a, b, atol=1e-6)
    bf16, trainer = run(tmp_path / "bf16", bf16=True)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logged) and "sora/total_rank" in logged[-1]
    assert any(bool((g == 0).any()) for g in bf16)
