from .attention_metadata import AttentionMetadata
from .decoder import CausalLM

__all__ = ["AttentionMetadata", "CausalLM"]
