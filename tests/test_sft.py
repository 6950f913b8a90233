"""scripts/sft.py: prompt masking against the tokenizer itself, exact perplexity against the model's own loss,
records / skip / resume like train.py, rank grids, all three methods on a tiny random Llama and GPT-2 (offline)."""

import json
import math
import sys

import pytest
import torch
from omegaconf import OmegaConf

from sora.config import load_config
from sora.models import load_tokenizer
from sora.sft.data import IGNORE, Collator, encode
from sora.sft.model import load_causal_lm
from sora.sft.ranks import layer_and_matrix, rank_grid
from sora.sft.run import run_sft, token_perplexity, total_steps
from tests import script_process
from tests.conftest import ROOT

TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


def _cfg(tmp_path, *overrides):
    return load_config([f"results_dir={tmp_path}/sft", "train.max_steps=8", "train.eval_steps=4", "data.eval_rows=16",
                        "data.eval_path=null",
                        "train.save_steps=4", "train.log_steps=2", *overrides], config_name="sft")


def _tokenizer():
    return load_tokenizer(OmegaConf.load(ROOT / "conf" / "lm" / "tiny_llama.yaml"))


def test_only_the_response_and_eos_are_in_the_loss():
    tok = _tokenizer()
    row = {"prompt": "Reverse the order of these words: apple river", "response": "river apple"}
    out = encode(row, tok, TEMPLATE, "response", max_len=256)
    prompt_ids = tok(TEMPLATE.format(prompt=row["prompt"]), add_special_tokens=False)["input_ids"]
    response_ids = tok("river apple", add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    assert out["input_ids"] == prompt_ids + response_ids  # no bos in this vocabulary, eos = [SEP]
    assert out["labels"] == [IGNORE] * len(prompt_ids) + response_ids
    # truncated inside the response: the kept response tokens stay in the loss; no response token left -> None
    cut = encode(row, tok, TEMPLATE, "response", max_len=len(prompt_ids) + 1)
    assert cut["labels"] == [IGNORE] * len(prompt_ids) + response_ids[:1]
    assert encode(row, tok, TEMPLATE, "response", max_len=len(prompt_ids)) is None


def test_collator_pads_ids_with_pad_and_labels_with_ignore():
    batch = Collator(pad_id=0)([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_perplexity_is_the_token_weighted_loss_of_the_model_itself():
    tok = _tokenizer()
    model = load_causal_lm(OmegaConf.load(ROOT / "conf" / "lm" / "tiny_llama.yaml"), len(tok), 0, seed=0).eval()
    rows = [encode({"prompt": p, "response": r}, tok, TEMPLATE, "response", 256)
            for p, r in (("How many words are there in: apple", "1"), ("Sort: b a", "a b c d e f"), ("x", "y z"))]
    ours = token_perplexity(model, rows, Collator(0), batch_size=2)
    nll, count = 0.0, 0
    with torch.no_grad():  # each row alone through the model's own shifted loss (mean over its label tokens)
        for r in rows:
            n = sum(label != IGNORE for label in r["labels"][1:])
            loss = model(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]])).loss
            nll, count = nll + loss.item() * n, count + n
    assert ours["tokens"] == count
    assert ours["loss"] == pytest.approx(nll / count, rel=1e-5)
    assert ours["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_rank_grid_names_layers_and_matrices_of_decoders_and_encoders():
    assert layer_and_matrix("model.layers.3.self_attn.q_proj") == (3, "q_proj")
    assert layer_and_matrix("transformer.h.1.attn.c_attn") == (1, "c_attn")
    assert layer_and_matrix("deberta.encoder.layer.2.attention.output.dense") == (2, "AO")
    grid = rank_grid({"model.layers.0.mlp.up_proj": 3, "model.layers.1.mlp.up_proj": 0, "lm_head": 8})
    assert grid == {"up_proj": {0: 3, 1: 0}}


def test_total_steps_is_the_trainers_own_count(tmp_path):
    cfg = _cfg(tmp_path, "train.max_steps=-1", "train.epochs=2", "train.batch_size=8", "train.grad_accum=3")
    assert total_steps(cfg, 256) == 2 * math.ceil(32 / 3)  # 32 batches an epoch, 11 optimizer steps


def _io(name):
    """in + out features of a tiny-Llama matrix (hidden 64, 2 of 4 heads for k/v: 32, MLP 128), by hand."""
    return {"q_proj": 128, "o_proj": 128, "k_proj": 96, "v_proj": 96}.get(name.rsplit(".", 1)[-1], 192)


@pytest.mark.slow
@pytest.mark.parametrize("method,lm,extra", [
    ("sora", "tiny_llama", ["method.variant=code", "method.xi=0.2", "method.l1_coef=1",
                            "train.lr=5e-3"]),
    ("lora", "tiny_gpt2", ["train.lr=5e-3"]),
    ("adalora", "tiny_llama", ["method.tinit=2", "method.tfinal=2", "method.deltaT=1", "method.init_r=6",
                               "method.target_r=2"]),
])
def test_sft_run_writes_a_record_skips_when_done_and_learns(method, lm, extra, tmp_path):
    cfg = _cfg(tmp_path, f"method={method}", f"lm={lm}", *extra)
    record = run_sft(cfg)
    run_dir = tmp_path / "sft" / "records" / record["run_id"]
    assert record["status"] == "finished" and record["steps"] == 8
    assert record["eval"]["loss"] < record["eval_before"]["loss"]  # the adapters learned something
    assert {p.name for p in run_dir.iterdir()} >= {"record.json", "metrics.jsonl", "ranks.png", "adapter"}
    assert not (run_dir / "trainer").exists()  # resume checkpoints go once the record is written
    if lm == "tiny_llama":  # what the exported adapter holds: rank x (in + out), AdaLoRA + its E entries
        extra = 1 if method == "adalora" else 0
        expected = sum(r * (_io(n) + extra) for n, r in record["ranks"].items())
        assert record["params"]["retained_adapter"] == expected > 0
    grid = record["rank_grid"]
    assert all(len(layers) == 2 for layers in grid.values())  # two layers in every matrix row
    if method == "sora":
        assert "sora/total_rank" in json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
        assert record["total_rank"] < 8 * 14  # xi 5e-3 (code: tau = xi) (code: |g| < 2 xi -> 0) pruned randn gates
        diag = record["gate_diagnostics"]  # SoraCallback's gates beside their null model, kept in the record
        assert diag["init"] == "stored" and diag["evals"][-1]["observed"] == record["total_rank"]
    if method == "adalora":
        assert record["total_rank"] == 2 * 14  # the budget: target_r on average over the 14 matrices
    if method == "lora":
        assert set(grid) == {"c_attn", "c_proj", "c_fc"}  # GPT-2's fused Conv1D maps, attention and MLP c_proj
    again = run_sft(cfg)  # finished: skipped, the same record
    assert again["checksum"] == record["checksum"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    ["method=sora", "method.variant=code", "method.xi=0.2", "method.l1_coef=1", "train.lr=5e-3"],
    # AdaLoRA: peft trims its checkpoints to the budget mask, which a fresh model cannot load; masks from step 2
    ["method=adalora", "method.tinit=2", "method.tfinal=2", "method.deltaT=1", "method.init_r=6", "method.target_r=2"],
], ids=["sora", "adalora"])
def test_an_interrupted_sft_run_resumes_to_the_uninterrupted_result(extra, tmp_path, monkeypatch):
    from transformers import Trainer, TrainerCallback

    import sora.sft.run as run_module

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 6:  # after the step-4 checkpoint
                raise KeyboardInterrupt

    class CrashingTrainer(Trainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(Crash())

    clean = run_sft(_cfg(tmp_path / "clean", *extra))
    cfg = _cfg(tmp_path / "cut", *extra)
    monkeypatch.setattr(run_module, "Trainer", CrashingTrainer)
    with pytest.raises(KeyboardInterrupt):
        run_sft(cfg)
    monkeypatch.setattr(run_module, "Trainer", Trainer)
    run_dir = tmp_path / "cut" / "sft" / "records" / clean["run_id"]
    assert not (run_dir / "record.json").exists() and (run_dir / "trainer" / "checkpoint-4").is_dir()
    resumed = run_sft(cfg)
    assert resumed["ranks"] == clean["ranks"]
    assert resumed["eval"]["loss"] == pytest.approx(clean["eval"]["loss"], abs=1e-6)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "clean" / "sft" / "records" / clean["run_id"] / "adapter" / "adapter_model.safetensors")
    b = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_bad_sft_input_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n')
    for override, expected in ((f"data.path={tmp_path}/missing.jsonl", "not found"),
                               (f"data.path={bad}", "has no field 'response'")):
        res = script_process.run([sys.executable, str(ROOT / "scripts" / "sft.py"), f"results_dir={tmp_path}/r",
                                  override, "data.eval_path=null"], capture_output=True, text=True, timeout=300)
        assert res.returncode == 2, res.stderr[-2000:]
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], res.stderr[-2000:]
