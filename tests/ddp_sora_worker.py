"""Run by tests/test_ddp.py under torchrun (gloo, CPU) or alone: a tiny Llama with SoRA in a stock Trainer;
writes the gates each process ends with, so the test can compare ranks and a one-process run."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments  # noqa: E402

from sora import SoraCallback, SoraConfig, get_sora_model, sora_optimizer  # noqa: E402
from sora.sft.data import Collator  # noqa: E402
from sora.tuners.sora.model import gate_parameters  # noqa: E402


def rows(n=48):
    g = torch.Generator().manual_seed(7)
    out = []
    for i in range(n):
        length = 6 + i % 5  # uneven lengths: token counts differ per rank, as in real data
        ids = torch.randint(3, 100, (length,), generator=g)
        labels = ids.clone()
        labels[:3] = -100  # a masked "prompt"
        out.append({"input_ids": ids.tolist(), "labels": labels.tolist()})
    return out


def main(out_dir: str, per_device_batch: int, steps: int = 8) -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    model = get_sora_model(model, SoraConfig(r_max=4, lora_alpha=8, variant="code", xi=0.05, l1_coef=1.0))
    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=per_device_batch, max_steps=steps,
                             learning_rate=5e-3, weight_decay=0.1, max_grad_norm=1.0, warmup_steps=0,
                             train_sampling_strategy="sequential", report_to="none", save_strategy="no",
                             use_cpu=True, disable_tqdm=True, seed=0,
                             ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None)
    trainer = Trainer(model=model, args=args, train_dataset=rows(), data_collator=Collator(pad_id=0),
                      optimizers=(sora_optimizer(model, args), None))
    SoraCallback.attach(trainer, export_dir=None)
    trainer.train()
    rank = int(os.environ.get("RANK", 0))
    torch.save([g.detach() for g in gate_parameters(model)], Path(out_dir) / f"gates_rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
