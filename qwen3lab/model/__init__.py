from .attention import AttentionBatch
from .decoder import CausalLM

__all__ = ["AttentionBatch", "CausalLM"]
