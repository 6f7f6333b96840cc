"""Fine-tuning: SFT (``sft.py``) and GRPO (``grpo.py``), with LoRA or full weights, on one or many processes."""
