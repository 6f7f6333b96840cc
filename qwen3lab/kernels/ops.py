"""Python wrappers around the compiled CPU kernels: the conditions each kernel takes, and its scratch.

Every wrapper returns None where its kernel does not take the input (dtype, device, row count,
autograd), and the caller then runs PyTorch's op; which layer uses which kernel is decided by the
layer methods in ``qwen3lab/model`` and ``qwen3lab/quant``, not here.
"""

from __future__ import annotations

import functools
import threading

import torch
import torch.nn.functional as F

from ..memory import release_free_memory
from .build import amx, compiled, cpu_flags

MAX_ROWS = 48  # above this many rows the float GEMM wins: weights are then reused from cache anyway
# With AMX present but the AMX kernels off, oneDNN's bf16 GEMM on the tiles overtakes the AVX-512
# GEMV from 6 rows (19456x2560, 2 threads); the int8 / int4 GEMVs still win there.
AMX_BF16_ROWS = 5
SCRATCH_MAX_ELEMENTS = 64 << 20  # 128 MB of bf16: every projection of Qwen3-4B, not a 150k-row head
DEQUANT_SLICE_ELEMENTS = 8 << 20  # 16 MB of bf16 per slice of output rows
_scratch = threading.local()


def usable(x: torch.Tensor, in_features: int, multiple: int = 1, max_rows: int | None = MAX_ROWS) -> bool:
    """Whether the kernels take this input: bf16 on the CPU, few rows, no autograd, width fits."""
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16 and in_features % multiple == 0
            and (max_rows is None or x.numel() // in_features <= max_rows)
            and not (torch.is_grad_enabled() and x.requires_grad) and compiled() is not None)


@functools.cache
def bf16_max_rows() -> int:
    if amx():
        return MAX_ROWS  # the AMX bf16 kernel (cpu_amx.cpp)
    return AMX_BF16_ROWS if {"amx_bf16", "amx_tile"} <= cpu_flags() else MAX_ROWS


def dequant_buffer(numel: int) -> torch.Tensor | None:
    """A per-thread bf16 buffer reused for prefill's transient dequantized weights, or None (allocate
    fresh) for matrices above ``SCRATCH_MAX_ELEMENTS`` or under autograd, where F.linear keeps the weight
    for the backward pass. Fresh 50-100 MB tensors cost a page fault per 4 KB page, as much time as
    dequantizing into them."""
    if numel > SCRATCH_MAX_ELEMENTS or torch.is_grad_enabled():
        return None
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < numel:
        buf = _scratch.buf = torch.empty(numel, dtype=torch.bfloat16)
    return buf[:numel]


def sliced_linear(x: torch.Tensor, out_features: int, in_features: int, dequant, multiple: int = 16) -> torch.Tensor:
    """``F.linear`` over a quantized weight dequantized a slice of output rows at a time into the reused
    buffer: ``dequant(n0, n1, buf)`` returns the bf16 rows n0..n1. The float GEMM runs as well on slices of
    a few thousand rows, and the buffer stays ~16 MB instead of the largest matrix's 100 MB."""
    step = max(multiple, DEQUANT_SLICE_ELEMENTS // in_features // multiple * multiple)
    buf = dequant_buffer(min(step, out_features) * in_features)
    parts = []
    for n0 in range(0, out_features, step):
        n1 = min(n0 + step, out_features)
        parts.append(F.linear(x, dequant(n0, n1, None if buf is None else buf[: (n1 - n0) * in_features])))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def release_transients() -> None:
    """After a prefill-sized step: drop this thread's dequantization buffer and hand glibc's freed
    activation pages back, so that what a long prompt needed does not stay resident while decoding.
    Re-creating the buffer on the next prompt costs one pass of page faults per step, not per matrix."""
    if getattr(_scratch, "buf", None) is not None:
        _scratch.buf = None
    release_free_memory()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """RMSNorm in one pass (same roundings as the reference) for few bf16 rows; prefill-sized inputs
    are as fast in PyTorch's vectorized ops."""
    if weight.dtype == torch.bfloat16 and usable(x, x.shape[-1]) and x.is_contiguous():
        return compiled().rms_norm_bf16(x, weight, eps)
    return None


def norm_rope(x: torch.Tensor, weight: torch.Tensor | None, eps: float, cos: torch.Tensor,
              sin: torch.Tensor) -> torch.Tensor | None:
    """``apply_rotary(rms_norm(x), cos, sin)`` for x [N, heads, d] in one pass (decode-sized token counts)."""
    if (x.dtype == cos.dtype == torch.bfloat16 and (weight is None or weight.dtype == torch.bfloat16)
            and x.shape[0] <= MAX_ROWS and usable(x, x.shape[-1], max_rows=None)):
        return compiled().norm_rope_bf16(x, weight, cos, sin, eps if weight is not None else 0.0)
    return None


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor | None:
    """``F.silu(gate) * up`` for the fused [gate; up] output [N, 2I] in one pass (decode-sized bf16 rows)."""
    if gate_up.dtype == torch.bfloat16 and gate_up.dim() == 2 and usable(gate_up, gate_up.shape[-1]):
        return compiled().silu_mul_bf16(gate_up)
    return None


def paged_decode_attention(q: torch.Tensor, cache, gather: torch.Tensor, context_lens: torch.Tensor, scale: float,
                           key_starts: torch.Tensor, sinks: int = 0) -> torch.Tensor | None:
    """Attention of decode rows q [R, heads, d] read in place from one layer's paged cache (a ``KVLayer``:
    bf16 pools, or int8 pools with per-token-head scales); row r attends the slots
    ``gather[r, key_starts[r]:context_lens[r]]`` and ``gather[r, :sinks]``."""
    int8 = cache.k_scale is not None
    if not (q.dtype == torch.bfloat16 and (int8 or cache.k.dtype == torch.bfloat16)
            and usable(q, q.shape[-1], max_rows=None)):
        return None
    none = torch.empty(0)
    return compiled().paged_decode_attention(q, cache.k, cache.v, cache.k_scale if int8 else none,
                                             cache.v_scale if int8 else none, gather, context_lens, key_starts,
                                             sinks, scale)
