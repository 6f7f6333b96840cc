"""Weight-only int4: asymmetric, one scale and zero per group of ``group_size`` input channels.

Owns: turning a float weight [N, K] into 4-bit values plus ``scales_and_zeros``, the portable
on-disk nibble layout, and the int4 linear methods (``model/linear.py``), one per layout, chosen once
per layer by ``quant/methods.py``: ``Int4Amx`` (nibbles repacked into AMX tile order),
``Int4Avx512`` (qwen3lab's GEMV straight from the nibbles), ``Int4CpuPacked``
(``aten._weight_int4pack_mm_for_cpu``, tinygemm semantics) and ``Int4Portable`` (dequantized per
call: correct everywhere, fast nowhere). Prefill-sized products run in the float GEMM on a
transient bf16 copy.

Dequantization, for output row n and input column k in group g = k // group_size:
    w[n, k] = (q[n, k] - 8) * scales_and_zeros[g, n, 0] + scales_and_zeros[g, n, 1],   q in 0..15

State (what a quantized checkpoint stores, HF-style names):
  ``<module>.weight``            uint8 [N, K // 2]; byte j holds q[:, 2j] in its low nibble and
                                 q[:, 2j + 1] in its high nibble (portable, unlike the kernel's layout)
  ``<module>.scales_and_zeros``  [K // group_size, N, 2] in the model's float dtype (tinygemm's layout)
  ``<module>.bias``              as in the float model, when the layer has one
The kernels' packed forms depend on the CPU's instruction set, so they are built at load time and
never written to disk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..memory import release_file_pages
from ..model.linear import Linear, LinearMethod

GROUP_SIZES = (32, 64, 128, 256)  # what the CPU kernel accepts
# g32 keeps far more quality than g64 on small models (benchmarks/quant_quality.py) for 1/16 byte more
# per weight.
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


class Int4Method(LinearMethod):
    """The int4 layout. ``from_float``: the checkpoint holds a float weight, quantized after loading;
    ``keep_portable``: keep the on-disk nibbles and scales next to a kernel's form (to save them)."""

    name = "int4-portable"

    def __init__(self, group_size: int = DEFAULT_GROUP_SIZE, from_float: bool = False, keep_portable: bool = False):
        check_group_size(group_size)
        self.group_size, self.from_float, self.keep_portable = group_size, from_float, keep_portable

    def create_weights(self, layer: Linear, dtype, device) -> None:
        if self.from_float:
            return super().create_weights(layer, dtype, device)
        n, k, g = layer.out_features, layer.in_features, self.group_size
        layer.add_weight("weight", torch.empty(n, k // 2, dtype=torch.uint8, device=device))
        layer.add_weight("scales_and_zeros", torch.empty(k // g, n, 2, dtype=dtype or torch.bfloat16, device=device),
                         output_dim=1)

    def process_weights_after_loading(self, layer: Linear) -> None:
        layer.group_size = self.group_size
        if self.from_float:
            w = layer.weight
            q, sz = quantize_int4(w, self.group_size, w.dtype)
            layer.drop_weight("weight")  # a tied head's matrix stays the embedding's
            layer.add_weight("weight", pack_nibbles(q))
            layer.add_weight("scales_and_zeros", sz, output_dim=1)
            self.from_float = False
        self.pack(layer)

    def pack(self, layer: Linear) -> None:
        """Build this layout's kernel form from the portable tensors."""

    def drop_portable(self, layer: Linear, *names: str) -> None:
        """Drop portable tensors a kernel form replaces, handing their file pages back."""
        if self.keep_portable:
            return
        tensors = [getattr(layer, n) for n in names]
        release_file_pages([t.data for t in tensors])
        for n, t in zip(names, tensors):
            setattr(layer, n, nn.Parameter(t.data.new_empty(0), requires_grad=False))

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        out = self.product(layer, x).reshape(*x.shape[:-1], layer.out_features)
        return out if layer.bias is None else out + layer.bias

    def product(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        if layer.weight.numel() == 0:
            raise RuntimeError(f"int4 layer: only the {self.name} kernel form is left, so it cannot run on "
                               f"{x.device}; load the model on that device instead")
        return F.linear(x, dequantize_int4(layer.weight, layer.scales_and_zeros, self.group_size).to(x.dtype))


Int4Portable = Int4Method


class Int4CpuPacked(Int4Method):
    """PyTorch's int4 CPU kernel on its own packed layout (N a multiple of 16)."""

    name = "int4-aten-packed"

    def pack(self, layer):
        layer.cpu_packed = pack_for_cpu(layer.weight.data)
        if not self.keep_portable:
            layer.weight = nn.Parameter(torch.empty(0, dtype=torch.uint8), requires_grad=False)

    def product(self, layer, x):
        if x.device.type != "cpu":
            return super().product(layer, x)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, layer.in_features).contiguous(),
                                                          layer.cpu_packed, self.group_size,
                                                          layer.scales_and_zeros.to(x.dtype))


class Int4Avx512(Int4Method):
    """qwen3lab's GEMV straight from the portable nibbles, scales and zeros row-major per output channel
    (K a multiple of 128, bf16 scales)."""

    name = "int4-avx512"

    def pack(self, layer):
        sz = layer.scales_and_zeros
        layer.kernel_scales, layer.kernel_zeros = sz[..., 0].t().contiguous(), sz[..., 1].t().contiguous()
        self.drop_portable(layer, "scales_and_zeros")  # the kernel's copies replace them

    def product(self, layer, x):
        ops = kernels.compiled()
        if kernels.usable(x, layer.in_features, multiple=128):
            return ops.gemv_int4(x.reshape(-1, layer.in_features).contiguous(), layer.weight, layer.kernel_scales,
                                 layer.kernel_zeros, self.group_size)
        w = ops.dequant_int4(layer.weight, layer.kernel_scales, layer.kernel_zeros, self.group_size,
                             kernels.dequant_buffer(layer.in_features * layer.out_features))
        return F.linear(x, w.to(x.dtype))


class Int4Amx(Int4Method):
    """Nibbles repacked into AMX tile order, scales / zeros [N / 16, groups, 16] (N a multiple of 16, bf16
    scales). Prefill-sized inputs dequantize slices of output rows for the float GEMM: tiles of 16 rows
    would re-read and unpack the weight per pass."""

    name = "int4-amx"

    def pack(self, layer):
        ops = kernels.compiled()
        layer.amx_weight = ops.amx_pack_int4(layer.weight.data, self.group_size)
        layer.amx_scales = ops.amx_group_vectors(layer.scales_and_zeros[..., 0])
        layer.amx_zeros = ops.amx_group_vectors(layer.scales_and_zeros[..., 1])
        self.drop_portable(layer, "weight", "scales_and_zeros")

    def product(self, layer, x):
        ops, g = kernels.compiled(), self.group_size
        if not kernels.usable(x, layer.in_features, max_rows=None):  # float32 or autograd
            w = ops.amx_dequant_int4(layer.amx_weight, layer.amx_scales, layer.amx_zeros, g)
            return F.linear(x, w.to(x.dtype))
        if x.numel() // layer.in_features >= AMX_PREFILL_ROWS:
            def rows(n0, n1, buf):
                return ops.amx_dequant_int4(layer.amx_weight[n0:n1], layer.amx_scales[n0 // 16: n1 // 16],
                                            layer.amx_zeros[n0 // 16: n1 // 16], g, buf)

            return kernels.sliced_linear(x, layer.out_features, layer.in_features, rows)
        return ops.amx_int4(x.reshape(-1, layer.in_features).contiguous(), layer.amx_weight, layer.amx_scales,
                            layer.amx_zeros, g)
