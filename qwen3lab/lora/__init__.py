"""LoRA adapters as a module swap: apply, merge, disable, and PEFT-format save/load."""

from .apply import DEFAULT_TARGETS, apply_lora, lora_disabled, lora_layers, merge_lora
from .layer import LoRAAdapter, LoRALinear, PackedLoRALinear
from .multi import AdapterBank, MultiLoRALinear, apply_adapters
from .peft_io import load_adapter, save_adapter

__all__ = ["DEFAULT_TARGETS", "AdapterBank", "LoRAAdapter", "LoRALinear", "MultiLoRALinear", "PackedLoRALinear",
           "apply_adapters", "apply_lora", "lora_disabled", "lora_layers", "load_adapter", "merge_lora", "save_adapter"]
