"""The small per-layer computations (RMSNorm, QK-norm + RoPE, silu * up), chosen once per model.

``TorchOps`` is the reference: PyTorch ops, any device, dtype and autograd. ``CpuKernelOps`` runs
decode-sized bf16 inputs in one kernel pass each (same roundings) and everything else as the
reference does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import kernels
from .rope import apply_rotary


class TorchOps:
    name = "torch"

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """Statistics in float32, the weight applied after the cast back (as the reference does)."""
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(dtype)

    def norm_rope(self, x: torch.Tensor, norm, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``apply_rotary(norm(x), cos, sin)`` for x [N, heads, d]; ``norm`` None for models without QK-norm."""
        return apply_rotary(norm(x) if norm is not None else x, cos, sin)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """``silu(gate) * up`` from the packed [gate; up] projection's output."""
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up


class CpuKernelOps(TorchOps):
    name = "cpu-kernels"

    def rms_norm(self, x, weight, eps):
        out = kernels.rms_norm(x, weight, eps)
        return out if out is not None else super().rms_norm(x, weight, eps)

    def norm_rope(self, x, norm, cos, sin):
        out = kernels.norm_rope(x, None if norm is None else norm.weight, 0.0 if norm is None else norm.eps, cos, sin)
        return out if out is not None else super().norm_rope(x, norm, cos, sin)

    def silu_mul(self, gate_up):
        flat = gate_up.reshape(-1, gate_up.shape[-1])
        out = kernels.silu_mul(flat)
        return out.view(*gate_up.shape[:-1], -1) if out is not None else super().silu_mul(gate_up)


TORCH_OPS = TorchOps()
