from .attention_metadata import AttentionMetadata, TokenTree
from .decoder import CausalLM

__all__ = ["AttentionMetadata", "CausalLM", "TokenTree"]
