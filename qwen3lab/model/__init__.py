from .attention_metadata import AttentionMetadata, TokenTree
from .decoder import CausalLM
from .linear import Linear, LinearMethod
from .packed import PACKED_MODULES
from .plan import ModelPlan

__all__ = ["AttentionMetadata", "CausalLM", "Linear", "LinearMethod", "ModelPlan", "PACKED_MODULES", "TokenTree"]
