"""Weight-only int8 / int4 quantization as module swaps (see apply.py), and its checkpoint format."""

from .apply import MODES, convert_for_loading, finish_loading, quantize_model
from .int4 import DEFAULT_GROUP_SIZE, GROUP_SIZES, Int4Linear
from .int8 import Int8Linear

__all__ = ["MODES", "GROUP_SIZES", "DEFAULT_GROUP_SIZE", "Int4Linear", "Int8Linear", "quantize_model",
           "convert_for_loading", "finish_loading"]
