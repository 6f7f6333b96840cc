"""Weight-only int8: symmetric, one scale per output channel.

Owns: turning a float weight [N, K] into int8 values plus scales [N], and ``Int8Linear``, the
drop-in replacement for ``nn.Linear`` that multiplies by them. On the CPU, few-row products (decoding)
run in qwen3lab's VNNI kernel (``qwen3lab/kernels``: activations quantized to int8 per 32 values on
the fly, as llama.cpp does) or else ``aten._weight_int8pack_mm`` (int8 weight read directly, no float
copy); prefill-sized products and other devices dequantize per call.

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


class Int8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 dtype: torch.dtype = torch.bfloat16, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # Parameters (not buffers) so the loader's shape checks and placement treat them like float weights.
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=torch.int8, device=device),
                                   requires_grad=False)
        self.weight_scale = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device),
                                 requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight: torch.Tensor | None = None) -> "Int8Linear":
        """Quantize ``linear`` (or ``weight``, e.g. a tied embedding matrix, with linear's bias)."""
        w = linear.weight if weight is None else weight
        mod = cls(w.shape[1], w.shape[0], linear.bias is not None, w.dtype, w.device)
        q, scale = quantize_int8(w, w.dtype)
        mod.weight.data, mod.weight_scale.data = q, scale
        if linear.bias is not None:
            mod.bias.data = linear.bias.detach().clone()
        return mod

    def _kernel_scale(self) -> torch.Tensor:
        if getattr(self, "_scale_f32", None) is None:  # the kernels apply the row scale in float32
            self._scale_f32 = self.weight_scale.float()
        return self._scale_f32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if (kernels.amx() and self.out_features % 16 == 0 and rows < PREFILL_ROWS
                and kernels.usable(x, self.in_features, multiple=64, max_rows=None)):
            # AMX tiles where the CPU has them: the per-row cost hardly grows with the row count, so decode
            # batches and speculative verification stay at the bandwidth limit, and a row's result does not
            # depend on the batch (cpu_amx.cpp). Prefill keeps float activations (below): measured on the
            # real SmolLM2, int8 activations there cost +1.19% perplexity against +0.38%.
            out = kernels.ops().amx_int8(x.reshape(-1, self.in_features).contiguous(), self.weight,
                                         self._kernel_scale()).reshape(*x.shape[:-1], self.out_features)
            return out if self.bias is None else out + self.bias
        if kernels.usable(x, self.in_features, multiple=64):
            out = kernels.ops().gemv_int8(x.reshape(-1, self.in_features).contiguous(), self.weight,
                                          self._kernel_scale()).reshape(*x.shape[:-1], self.out_features)
            return out if self.bias is None else out + self.bias
        # The int8 kernel is a GEMV at heart: for prefill-sized inputs a transient dequantized copy
        # and the float GEMM are several times faster (measured on Qwen3-4B shapes: 19.5 vs 50 tok/s).
        if x.device.type == "cpu" and rows < PREFILL_ROWS and x.dtype in (torch.float32, torch.bfloat16,
                                                                          torch.float16):
            # The kernel wants 2-D input and scales in the activation dtype.
            out = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features).contiguous(), self.weight,
                                                     self.weight_scale.to(x.dtype))
            out = out.reshape(*x.shape[:-1], self.out_features)
            return out if self.bias is None else out + self.bias
        if kernels.usable(x, self.in_features, max_rows=None) and self.weight.is_contiguous():
            # One vectorized pass (the expression below costs 60% of the GEMM itself on a prefill chunk),
            # a slice of output rows at a time into a small reused buffer.
            scale = self._kernel_scale()
            out = kernels.sliced_linear(x, self.out_features, self.in_features, lambda n0, n1, buf: kernels.ops(
                ).dequant_int8(self.weight[n0:n1], scale[n0:n1], buf), multiple=1)
            return out if self.bias is None else out + self.bias
        else:
            w = self.weight.to(x.dtype) * self.weight_scale.to(x.dtype)[:, None]
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
