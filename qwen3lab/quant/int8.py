"""Weight-only int8: symmetric, one scale per output channel.

Owns: turning a float weight [N, K] into int8 values plus scales [N], and the int8 linear methods
(``model/linear.py``), one per kernel family, chosen once per layer by ``quant/methods.py``:
``Int8Amx`` (AMX tiles), ``Int8Avx512`` (qwen3lab's VNNI GEMV: activations quantized to int8 per 32
values on the fly, as llama.cpp does) and ``Int8Portable`` (``aten._weight_int8pack_mm`` on the CPU,
a dequantized copy elsewhere). Prefill-sized products dequantize a slice of rows at a time.

State (what a quantized checkpoint stores, HF-style names):
  ``<module>.weight``        int8 [out_features, in_features]
  ``<module>.weight_scale``  [out_features], the model's float dtype; w ~= weight * weight_scale[:, None]
  ``<module>.bias``          as in the float model, when the layer has one
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..model.linear import Linear, LinearMethod

PREFILL_ROWS = 64  # from this many input rows on, dequantize and use the float GEMM


def quantize_int8(weight: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """float [N, K] -> (int8 [N, K], scales [N] in scale_dtype)."""
    w = weight.detach().float()
    # Round the scale to the dtype it is used in first, so that q is chosen for the scale the kernel sees.
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8).to(scale_dtype)
    # Symmetric -127..127: the VNNI kernel negates weights, and -128 has no int8 negation.
    q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


class Int8Method(LinearMethod):
    """The int8 layout. ``from_float``: the checkpoint holds a float weight, quantized after loading."""

    name = "int8"

    def __init__(self, from_float: bool = False):
        self.from_float = from_float

    def create_weights(self, layer: Linear, dtype, device) -> None:
        if self.from_float:
            return super().create_weights(layer, dtype, device)
        layer.add_weight("weight", torch.empty(layer.out_features, layer.in_features, dtype=torch.int8, device=device))
        layer.add_weight("weight_scale", torch.empty(layer.out_features, dtype=dtype or torch.bfloat16, device=device))

    def process_weights_after_loading(self, layer: Linear) -> None:
        if self.from_float:
            w = layer.weight
            q, scale = quantize_int8(w, w.dtype)
            layer.drop_weight("weight")  # a tied head's matrix stays the embedding's
            layer.add_weight("weight", q)
            layer.add_weight("weight_scale", scale)
            self.from_float = False
        # The kernels apply the row scale in float32.
        layer.scale_f32 = layer.weight_scale.float() if layer.weight.device.type == "cpu" else None

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        out = self.product(layer, x)
        return out if layer.bias is None else out + layer.bias

    def product(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // layer.in_features
        if x.device.type == "cpu" and rows < PREFILL_ROWS and x.dtype in (torch.float32, torch.bfloat16,
                                                                          torch.float16):
            # The int8 weight read directly; the kernel wants 2-D input and scales in the activation dtype.
            out = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, layer.in_features).contiguous(), layer.weight,
                                                     layer.weight_scale.to(x.dtype))
            return out.reshape(*x.shape[:-1], layer.out_features)
        if kernels.usable(x, layer.in_features, max_rows=None) and layer.weight.is_contiguous():
            # Prefill-sized: one vectorized dequantization pass a slice of output rows at a time, then the
            # float GEMM (the int8 kernels are GEMVs at heart).
            scale = layer.scale_f32
            return kernels.sliced_linear(x, layer.out_features, layer.in_features, lambda n0, n1, buf: kernels.compiled(
                ).dequant_int8(layer.weight[n0:n1], scale[n0:n1], buf), multiple=1)
        return F.linear(x, layer.weight.to(x.dtype) * layer.weight_scale.to(x.dtype)[:, None])


class Int8Portable(Int8Method):
    name = "int8-portable"


class Int8Avx512(Int8Method):
    """Few rows (decoding) in qwen3lab's VNNI GEMV."""

    name = "int8-avx512"

    def product(self, layer, x):
        if kernels.usable(x, layer.in_features, multiple=64):
            return kernels.compiled().gemv_int8(x.reshape(-1, layer.in_features).contiguous(), layer.weight,
                                                layer.scale_f32).reshape(*x.shape[:-1], layer.out_features)
        return super().product(layer, x)


class Int8Amx(Int8Avx512):
    """Up to ``PREFILL_ROWS`` rows on the AMX tiles: the per-row cost hardly grows with the row count, so
    decode batches and verification stay at the bandwidth limit, and a row's result does not depend on
    the batch. Prefill keeps float activations: int8 activations there cost perplexity."""

    name = "int8-amx"

    def product(self, layer, x):
        if x.numel() // layer.in_features < PREFILL_ROWS and kernels.usable(x, layer.in_features, multiple=64,
                                                                             max_rows=None):
            return kernels.compiled().amx_int8(x.reshape(-1, layer.in_features).contiguous(), layer.weight,
                                               layer.scale_f32).reshape(*x.shape[:-1], layer.out_features)
        return super().product(layer, x)
