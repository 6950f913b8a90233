"""Instruction tuning of causal LMs with SoRA, LoRA or AdaLoRA through a stock ``transformers.Trainer``.

``scripts/sft.py`` is the entry point; the SoRA step inside the Trainer is :mod:`sora.hf_trainer`, the same
math our GLUE loop runs.
"""
