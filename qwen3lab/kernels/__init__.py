"""CPU decode kernels (cpu_gemv.cpp, cpu_norm_rope.cpp), built once per machine with PyTorch's C++ extension loader.

Decoding multiplies a handful of activation rows by every weight matrix; PyTorch's CPU ops reach
about half of the memory bandwidth there (measured: bf16 GEMV ~21 GB/s of ~46). The kernels in
``cpu_gemv.cpp`` stream the weights once per step with AVX-512 BF16 / VNNI dot products; those in
``cpu_norm_rope.cpp`` do RMSNorm and QK-norm + RoPE in one pass each instead of a dozen small ops. They are
used only where they apply: a CPU with ``avx512_bf16`` and ``avx512_vnni``, bf16 activations, at
most ``MAX_ROWS`` rows, no autograd. Everything else keeps PyTorch's own ops, so results never
depend on whether the build worked; set ``QWEN3LAB_CPU_KERNELS=0`` to turn them off.

The build (g++ and ninja, about a minute) lands in PyTorch's extension cache (``TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``) and is reused by later processes.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..model.attention import Attention
from ..model.decoder import MLP
from ..model.norm import RMSNorm
from ..model.rope import apply_rotary

log = logging.getLogger(__name__)

MAX_ROWS = 48  # above this many rows the float GEMM wins: weights are then reused from cache anyway
_REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni")
# On CPUs with AMX, PyTorch's bf16 GEMM (oneDNN on the AMX tiles) overtakes the AVX-512 kernel
# from 6 rows: measured for 19456x2560 with 2 threads, kernel / F.linear 4.96 / 6.12 ms at 4 rows,
# 5.85 / 6.11 at 5, 6.80 / 6.39 at 6, 7.90 / 6.27 at 8 and 18.3 / 6.9 at 16. The int8 / int4 kernels
# still win there (6.1 / 4.7 ms at 8 rows against 15.6 ms to dequantize and multiply), so only
# bf16 products switch; without AMX the kernel wins up to MAX_ROWS.
AMX_BF16_ROWS = 5
_lock = threading.Lock()
_module = None
_tried = False


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _build():
    from torch.utils.cpp_extension import load

    log.info("qwen3lab: loading the CPU decode kernels (compiled on first use, about a minute)")
    here = Path(__file__).parent
    # -fopenmp: at::parallel_for in the kernels is PyTorch's OpenMP template, a serial loop when the
    # extension is compiled without it (the kernels ran on one thread until this was added; decode
    # bandwidth went from one core's ~18 GB/s to the machine's). The build links the same libgomp
    # soname PyTorch already loaded, so one thread pool serves both.
    # The shared header is not a source, so its digest joins the flags: they key the build cache.
    header = hashlib.sha1((here / "cpu_vec.h").read_bytes()).hexdigest()[:12]
    return load(name="qwen3lab_cpu_kernels",
                sources=[str(here / f) for f in ("bindings.cpp", "cpu_gemv.cpp", "cpu_norm_rope.cpp",
                                                              "cpu_attention.cpp", "cpu_amx.cpp", "cpu_act.cpp")],
                # -mamx-*: only enables the intrinsics; cpu_amx.cpp runs only where the CPU has AMX.
                extra_cflags=["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16",
                              "-mavx512vnni", "-mfma", "-mf16c", "-mamx-tile", "-mamx-int8", "-mamx-bf16", "-fopenmp",
                              f"-DQWEN3LAB_VEC_H={header}"],
                extra_ldflags=["-fopenmp"], verbose=False)


def ops():
    """The compiled module, or None where the kernels do not apply or could not be built."""
    global _module, _tried
    if _tried:
        return _module
    with _lock:
        if _tried:
            return _module
        if os.environ.get("QWEN3LAB_CPU_KERNELS", "1") == "0":
            pass
        elif not set(_REQUIRED_FLAGS) <= _cpu_flags():
            log.info("qwen3lab: this CPU lacks AVX-512 BF16/VNNI; decoding uses PyTorch's kernels")
        else:
            try:
                _module = _build()
            except Exception as e:  # noqa: BLE001 - any build failure means: use PyTorch's ops
                log.warning("qwen3lab: CPU decode kernels could not be built (%s); using PyTorch's kernels", e)
        _tried = True
    return _module


_scratch = threading.local()
SCRATCH_MAX_ELEMENTS = 64 << 20  # 128 MB of bf16: every projection of Qwen3-4B, not a 150k-row head


def dequant_buffer(numel: int) -> torch.Tensor | None:
    """A per-thread bf16 buffer reused for prefill's transient dequantized weights, or None (allocate
    fresh) for matrices above ``SCRATCH_MAX_ELEMENTS`` or under autograd, where F.linear keeps the
    weight for the backward pass. Fresh 50-100 MB tensors cost a page fault per 4 KB page, measured as
    much time as dequantizing into them."""
    if numel > SCRATCH_MAX_ELEMENTS or torch.is_grad_enabled():
        return None
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < numel:
        buf = _scratch.buf = torch.empty(numel, dtype=torch.bfloat16)
    return buf[:numel]


@functools.cache
def amx() -> bool:
    """Whether the AMX int8 / int4 kernels (cpu_amx.cpp) run here: a CPU with AMX tiles, an OS that grants
    their state to this process, and ``QWEN3LAB_AMX`` not 0."""
    return (os.environ.get("QWEN3LAB_AMX", "1") != "0" and {"amx_tile", "amx_int8", "amx_bf16"} <= _cpu_flags()
            and ops() is not None and bool(ops().amx_available()))


DEQUANT_SLICE_ELEMENTS = 8 << 20  # 16 MB of bf16 per slice of output rows


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
    Measured on Qwen3-4B int8: 0.1 GB buffer + 0.08 GB heap after a 512-token prompt. Re-creating the
    buffer on the next prompt costs one pass of page faults per step (~20 ms), not per matrix."""
    from ..weights.memory import release_free_memory

    if getattr(_scratch, "buf", None) is not None:
        _scratch.buf = None
    release_free_memory()


def usable(x: torch.Tensor, in_features: int, multiple: int = 1, max_rows: int | None = MAX_ROWS) -> bool:
    """Whether the kernels take this input: bf16 on the CPU, few rows, no autograd, width fits."""
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16 and in_features % multiple == 0
            and (max_rows is None or x.numel() // in_features <= max_rows)
            and not (torch.is_grad_enabled() and x.requires_grad) and ops() is not None)


@functools.cache
def bf16_max_rows() -> int:
    if amx():
        return MAX_ROWS  # the AMX bf16 kernel (cpu_amx.cpp)
    return AMX_BF16_ROWS if {"amx_bf16", "amx_tile"} <= _cpu_flags() else MAX_ROWS


class CpuLinear(nn.Linear):
    """``nn.Linear`` whose few-row bf16 products run in the bf16 decode kernel (same parameters)."""

    @classmethod
    def wrap(cls, linear: nn.Linear) -> "CpuLinear":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias  # shared: tied heads stay tied
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype == torch.bfloat16 and usable(x, self.in_features, max_rows=bf16_max_rows()):
            # With AMX, tiles at every decode-sized row count: as fast as oneDNN there, and a row's result
            # does not depend on the batch (speculative verification reproduces decoding exactly).
            gemv = ops().amx_bf16 if amx() and self.out_features % 16 == 0 and self.in_features % 32 == 0 \
                else ops().gemv_bf16
            out = gemv(x.reshape(-1, self.in_features).contiguous(), self.weight)
            out = out.reshape(*x.shape[:-1], self.out_features)
            return out if self.bias is None else out + self.bias
        return F.linear(x, self.weight, self.bias)


class CpuRMSNorm(RMSNorm):
    """``RMSNorm`` computed in one pass for bf16 inputs on the CPU (same weight, same roundings)."""

    @classmethod
    def wrap(cls, norm: RMSNorm) -> "CpuRMSNorm":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.weight, new.eps = norm.weight, norm.eps
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Few rows only: for prefill-sized inputs PyTorch's vectorized ops are as fast.
        if self.weight.dtype == torch.bfloat16 and usable(x, x.shape[-1]) and x.is_contiguous():
            return ops().rms_norm_bf16(x, self.weight, self.eps)
        return super().forward(x)


def norm_rope(x: torch.Tensor, norm: RMSNorm | None, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``apply_rotary(norm(x), cos, sin)`` for x [N, heads, d], in one pass where the kernel applies."""
    if (x.dtype == cos.dtype == torch.bfloat16 and (norm is None or norm.weight.dtype == torch.bfloat16)
            and x.shape[0] <= MAX_ROWS and usable(x, x.shape[-1], max_rows=None)):  # decode-sized token counts
        return ops().norm_rope_bf16(x, None if norm is None else norm.weight, cos, sin,
                                    norm.eps if norm is not None else 0.0)
    return apply_rotary(norm(x) if norm is not None else x, cos, sin)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor | None:
    """``F.silu(gate) * up`` for the fused [gate; up] output [N, 2I] in one pass (decode-sized bf16 rows),
    or None where the kernel does not apply."""
    if gate_up.dtype == torch.bfloat16 and gate_up.dim() == 2 and usable(gate_up, gate_up.shape[-1]):
        return ops().silu_mul_bf16(gate_up)
    return None


def decode_attention(q: torch.Tensor, cache, layer: int, group, window: int, scale: float) -> torch.Tensor | None:
    """Attention of a few new tokens per row (q [G, T, heads, d]) read in place from the paged cache, each
    token as its own decode row (so verification matches decoding bit for bit), or None where the kernel
    does not apply (then the caller uses SDPA)."""
    k = cache.k[layer]
    if not (q.dtype == k.dtype == torch.bfloat16 and usable(q, q.shape[-1], max_rows=None)):
        return None
    G, T = q.shape[:2]
    gather, ctx = (group.gather, group.context_lens) if T == 1 and not group.tree else group.per_token()
    out = ops().paged_decode_attention(q.reshape(G * T, q.shape[2], q.shape[3]), k, cache.v[layer], gather, ctx,
                                       scale, window)
    return out.view(G, T, q.shape[2], q.shape[3])


def install(model: nn.Module) -> int:
    """Swap an inference model's bf16 ``nn.Linear`` and ``RMSNorm`` layers for the kernel-backed ones
    and fuse QK-norm with RoPE; returns how many modules changed.

    A no-op for other dtypes or where the kernels do not apply (the build is attempted here, so its
    cost is paid at load rather than in the first request).
    """
    def on_cpu_bf16(m: nn.Module) -> bool:
        return m.weight.dtype == torch.bfloat16 and m.weight.device.type == "cpu"

    swaps = [(name, m) for name, m in model.named_modules()
             if type(m) in (nn.Linear, RMSNorm) and on_cpu_bf16(m)]
    if not swaps or ops() is None:
        return 0
    for name, m in swaps:
        parent, _, attr = name.rpartition(".")
        new = CpuLinear.wrap(m) if isinstance(m, nn.Linear) else CpuRMSNorm.wrap(m)
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    fused = 0
    for m in model.modules():
        if isinstance(m, Attention):
            m.norm_rope, m.decode_attention = norm_rope, decode_attention
            fused += 1
        elif isinstance(m, MLP):
            m.act_mul = silu_mul
    return len(swaps) + fused
