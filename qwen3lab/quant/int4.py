"""Weight-only int4: asymmetric, one scale and zero per group of ``group_size`` input channels.

Owns: turning a float weight [N, K] into 4-bit values plus ``scales_and_zeros``, the portable
on-disk nibble layout, packing for the CPU kernel, and ``Int4Linear``, the drop-in replacement for
``nn.Linear``. On a CPU with AVX-512 BF16/VNNI, few-row products (decoding) run in qwen3lab's kernel
straight from the nibble layout (``qwen3lab/kernels``) and prefill-sized ones in the float GEMM on a
transient bf16 copy. Otherwise, on the CPU the product runs in ``aten._weight_int4pack_mm_for_cpu``
(tinygemm semantics); elsewhere, or for widths that kernel cannot pack (N not a multiple of 16), the
weight is dequantized per call: correct everywhere, fast only on the CPU.

Dequantization, for output row n and input column k in group g = k // group_size:
    w[n, k] = (q[n, k] - 8) * scales_and_zeros[g, n, 0] + scales_and_zeros[g, n, 1],   q in 0..15

State (what a quantized checkpoint stores, HF-style names):
  ``<module>.weight``            uint8 [N, K // 2]; byte j holds q[:, 2j] in its low nibble and
                                 q[:, 2j + 1] in its high nibble (portable, unlike the kernel's layout)
  ``<module>.scales_and_zeros``  [K // group_size, N, 2] in the model's float dtype (tinygemm's layout)
  ``<module>.bias``              as in the float model, when the layer has one
The kernel's packed form depends on the CPU's instruction set (AVX-512 / AVX2 / plain), so it is
built at load time and never written to disk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..weights.memory import release_file_pages

GROUP_SIZES = (32, 64, 128, 256)  # what the CPU kernel accepts
# Measured with benchmarks/quant_quality.py on SmolLM2-135M (corpus perplexity vs bf16): g32 +5%,
# g64 +55%, g128 impossible (576 = 4.5 x 128). Small groups cost 1/16 byte per weight more at g32 than
# g64, far less than the quality they keep.
DEFAULT_GROUP_SIZE = 32
AMX_PREFILL_ROWS = 128  # from this many rows on, the AMX form dequantizes for the float GEMM
_PACK_ROWS = 4096  # pack in row chunks (a multiple of the kernel's 64-row block) to bound the int32 copy


def check_group_size(group_size: int, in_features: int | None = None, name: str = "") -> None:
    if group_size not in GROUP_SIZES:
        raise ValueError(f"int4 group size {group_size!r} is not supported; use one of "
                         f"{', '.join(map(str, GROUP_SIZES))}")
    if in_features is not None and in_features % group_size:
        raise ValueError(f"int4: layer '{name}' has {in_features} input features, not divisible by group size "
                         f"{group_size}; pick a group size that divides it or leave the layer out with skip=")


def quantize_int4(weight: torch.Tensor, group_size: int, scale_dtype: torch.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """float [N, K] -> (q uint8 [N, K] in 0..15, scales_and_zeros [K // group_size, N, 2] in scale_dtype)."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // group_size, group_size)
    lo, hi = w.amin(dim=2), w.amax(dim=2)
    # Round scale and zero to their stored dtype first, then choose q against exactly those values.
    scale = ((hi - lo) / 15).clamp(min=1e-6).to(scale_dtype)
    zero = (lo + 8 * scale.float()).to(scale_dtype)
    s, z = scale.float()[..., None], zero.float()[..., None]
    q = torch.round((w - z) / s + 8).clamp(0, 15).to(torch.uint8).reshape(n, k)
    return q, torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K] in 0..15 -> uint8 [N, K // 2] (the portable on-disk layout)."""
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K // 2] -> uint8 [N, K] in 0..15."""
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def dequantize_int4(packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """The float32 weight [N, K] the quantized values stand for (the reference the kernel is tested against)."""
    q = unpack_nibbles(packed).float()
    scale = scales_and_zeros[..., 0].float().t().repeat_interleave(group_size, dim=1)
    zero = scales_and_zeros[..., 1].float().t().repeat_interleave(group_size, dim=1)
    return (q - 8) * scale + zero


def pack_for_cpu(packed: torch.Tensor) -> torch.Tensor:
    """Portable nibbles [N, K // 2] -> the CPU kernel's layout (same shape, instruction-set specific)."""
    chunks = [torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_nibbles(part).to(torch.int32), 1)
              for part in packed.split(_PACK_ROWS)]
    return torch.cat(chunks) if len(chunks) > 1 else chunks[0]


class Int4Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, group_size: int = DEFAULT_GROUP_SIZE,
                 bias: bool = False, dtype: torch.dtype = torch.bfloat16, device=None):
        super().__init__()
        check_group_size(group_size, in_features)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        # Parameters (not buffers) so the loader's shape checks and placement treat them like float weights.
        self.weight = nn.Parameter(torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device),
                                   requires_grad=False)
        self.scales_and_zeros = nn.Parameter(
            torch.empty(in_features // group_size, out_features, 2, dtype=dtype, device=device), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device),
                                 requires_grad=False) if bias else None
        self.cpu_packed: torch.Tensor | None = None  # built by prepare(); not part of the state
        self.kernel_scales = self.kernel_zeros = None  # [N, groups] bf16 for qwen3lab's kernel (prepare())
        # The AMX kernel's forms (prepare()): nibbles repacked into tile order, scales / zeros [N / 16, groups, 16].
        self.amx_weight = self.amx_scales = self.amx_zeros = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int, weight: torch.Tensor | None = None,
                    name: str = "") -> "Int4Linear":
        """Quantize ``linear`` (or ``weight``, e.g. a tied embedding matrix, with linear's bias)."""
        w = linear.weight if weight is None else weight
        check_group_size(group_size, w.shape[1], name)
        mod = cls(w.shape[1], w.shape[0], group_size, linear.bias is not None, w.dtype, w.device)
        q, sz = quantize_int4(w, group_size, w.dtype)
        mod.weight.data, mod.scales_and_zeros.data = pack_nibbles(q), sz
        if linear.bias is not None:
            mod.bias.data = linear.bias.detach().clone()
        return mod

    def prepare(self, keep_portable: bool = False) -> None:
        """Pack for the CPU kernel once the weights are in place; drop the portable copy unless asked to keep it
        (it is what a checkpoint stores: ``qwen3lab quantize`` keeps it, inference needs only the packed one)."""
        if self.weight.device.type != "cpu":
            return  # dequantize per call instead
        if (kernels.amx() and self.out_features % 16 == 0 and self.scales_and_zeros.dtype == torch.bfloat16
                and self.in_features % self.group_size == 0):  # the tiles take K in steps of 32 (g32) or 64
            ops = kernels.ops()
            self.amx_weight = ops.amx_pack_int4(self.weight.data, self.group_size)
            self.amx_scales = ops.amx_group_vectors(self.scales_and_zeros[..., 0])
            self.amx_zeros = ops.amx_group_vectors(self.scales_and_zeros[..., 1])
            if not keep_portable:
                release_file_pages([self.weight.data, self.scales_and_zeros.data])
                self.weight.data = torch.empty(0, dtype=torch.uint8)
                self.scales_and_zeros.data = torch.empty(0, dtype=self.scales_and_zeros.dtype)
            return
        if (self.in_features % 128 == 0 and self.scales_and_zeros.dtype == torch.bfloat16
                and kernels.ops() is not None):
            # qwen3lab's kernel reads the portable nibbles; scales and zeros row-major per output channel.
            self.kernel_scales = self.scales_and_zeros[..., 0].t().contiguous()
            self.kernel_zeros = self.scales_and_zeros[..., 1].t().contiguous()
            if not keep_portable:  # the kernel's copies replace them (a quarter of the nibbles' bytes at g32)
                # Read from a memory-mapped checkpoint, their pages would stay resident: hand them back.
                release_file_pages([self.scales_and_zeros.data])
                self.scales_and_zeros.data = torch.empty(0, dtype=self.scales_and_zeros.dtype)
            return
        if self.out_features % 16:
            return  # dequantize per call instead
        self.cpu_packed = pack_for_cpu(self.weight.data)
        if not keep_portable:
            self.weight.data = torch.empty(0, dtype=torch.uint8)

    def _amx_dequantized(self) -> torch.Tensor:
        """The bf16 weight from the AMX form (inputs the kernel does not take: float32, autograd)."""
        return kernels.ops().amx_dequant_int4(self.amx_weight, self.amx_scales, self.amx_zeros, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.amx_weight is not None and x.device.type == "cpu":
            kernel = kernels.usable(x, self.in_features, max_rows=None)
            if kernel and x.numel() // self.in_features >= AMX_PREFILL_ROWS:
                # Prefill-sized: dequantize (slices of output rows, kernels.sliced_linear) and use the float
                # GEMM; tiles of 16 rows re-read and unpack the weight per pass: measured 19456 x 2560 g32,
                # 512 rows, 107 ms against 55 ms; at 128 rows 23 vs 26.
                out = kernels.sliced_linear(x, self.out_features, self.in_features, lambda n0, n1, buf: kernels.ops(
                    ).amx_dequant_int4(self.amx_weight[n0:n1], self.amx_scales[n0 // 16: n1 // 16],
                                       self.amx_zeros[n0 // 16: n1 // 16], self.group_size, buf))
            elif kernel:
                out = kernels.ops().amx_int4(x.reshape(-1, self.in_features).contiguous(), self.amx_weight,
                                             self.amx_scales, self.amx_zeros, self.group_size)
            else:
                out = F.linear(x, self._amx_dequantized().to(x.dtype))
            out = out.reshape(*x.shape[:-1], self.out_features)
            return out if self.bias is None else out + self.bias
        if self.kernel_scales is not None and x.device.type == "cpu":
            if kernels.usable(x, self.in_features, multiple=128):
                out = kernels.ops().gemv_int4(x.reshape(-1, self.in_features).contiguous(), self.weight,
                                              self.kernel_scales, self.kernel_zeros, self.group_size)
            else:
                w = kernels.ops().dequant_int4(self.weight, self.kernel_scales, self.kernel_zeros, self.group_size,
                                                 kernels.dequant_buffer(self.in_features * self.out_features))
                out = F.linear(x, w.to(x.dtype))
            out = out.reshape(*x.shape[:-1], self.out_features)
            return out if self.bias is None else out + self.bias
        if self.cpu_packed is not None and x.device.type == "cpu":
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x.reshape(-1, self.in_features).contiguous(), self.cpu_packed, self.group_size,
                self.scales_and_zeros.to(x.dtype))
            out = out.reshape(*x.shape[:-1], self.out_features)
            return out if self.bias is None else out + self.bias
        if self.weight.numel() == 0:
            raise RuntimeError("Int4Linear: only the CPU-packed weight is left (prepare(keep_portable=False)), "
                               f"so it cannot run on {x.device}; load the model on that device instead")
        w = dequantize_int4(self.weight, self.scales_and_zeros, self.group_size).to(x.dtype)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")
