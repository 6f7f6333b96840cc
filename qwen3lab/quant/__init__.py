"""Weight-only int8 / int4 quantization: the layouts as linear methods, their choice per layer, the
in-place conversion of a loaded model (apply.py); the checkpoint format is weights/quantized_export.py."""

from .apply import check_mode, ensure_quantized, quantize_model
from .int4 import DEFAULT_GROUP_SIZE, GROUP_SIZES, Int4Method
from .int8 import Int8Method
from .methods import MODES, linear_choice

__all__ = ["MODES", "GROUP_SIZES", "DEFAULT_GROUP_SIZE", "Int4Method", "Int8Method", "check_mode",
           "ensure_quantized", "linear_choice", "quantize_model"]
