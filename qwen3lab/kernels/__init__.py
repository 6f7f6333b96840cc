"""CPU decode kernels (cpu_gemv.cpp), built once per machine with PyTorch's C++ extension loader.

Decoding multiplies a handful of activation rows by every weight matrix; PyTorch's CPU ops reach
about half of the memory bandwidth there (measured: bf16 GEMV ~21 GB/s of ~46). The kernels in
``cpu_gemv.cpp`` stream the weights once per step with AVX-512 BF16 / VNNI dot products. They are
used only where they apply: a CPU with ``avx512_bf16`` and ``avx512_vnni``, bf16 activations, at
most ``MAX_ROWS`` rows, no autograd. Everything else keeps PyTorch's own ops, so results never
depend on whether the build worked; set ``QWEN3LAB_CPU_KERNELS=0`` to turn them off.

The build (g++ and ninja, about a minute) lands in PyTorch's extension cache (``TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``) and is reused by later processes.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

MAX_ROWS = 48  # above this many rows the float GEMM wins: weights are then reused from cache anyway
_REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni")
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
    return load(name="qwen3lab_cpu_gemv", sources=[str(Path(__file__).with_name("cpu_gemv.cpp"))],
                extra_cflags=["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16",
                              "-mavx512vnni", "-mfma", "-mf16c"], verbose=False)


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


def usable(x: torch.Tensor, in_features: int, multiple: int = 1) -> bool:
    """Whether the kernels take this input: bf16 on the CPU, few rows, no autograd, width fits."""
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16 and in_features % multiple == 0
            and x.numel() // in_features <= MAX_ROWS and not (torch.is_grad_enabled() and x.requires_grad)
            and ops() is not None)


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
        if self.weight.dtype == torch.bfloat16 and usable(x, self.in_features):
            out = ops().gemv_bf16(x.reshape(-1, self.in_features).contiguous(), self.weight)
            out = out.reshape(*x.shape[:-1], self.out_features)
            return out if self.bias is None else out + self.bias
        return F.linear(x, self.weight, self.bias)


def install(model: nn.Module) -> int:
    """Swap the bf16 ``nn.Linear`` layers of an inference model for ``CpuLinear``; returns how many.

    A no-op where the kernels do not apply (the build is attempted here, so its cost is paid at load).
    """
    swaps = [(name, m) for name, m in model.named_modules()
             if type(m) is nn.Linear and m.weight.dtype == torch.bfloat16 and m.weight.device.type == "cpu"]
    if not swaps or ops() is None:
        return 0
    for name, m in swaps:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, CpuLinear.wrap(m))
    return len(swaps)
