"""``ModelPlan``: what a model is built with, decided once at load from the device, CPU and quantization.

The plan gives every ``Linear`` its weight layout (``linear(names, in_features, output_sizes, bias)``
returns a ``LinearMethod``; ``names`` are the Hugging Face names of its parts, so choices such as
"leave ``lm_head`` in float" are made by name), and every layer its per-layer ops and attention
backend. The default is PyTorch's own ops in float, which runs anywhere (training included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import kernels
from .attention_backend import SDPA, CpuDecodeAttention, SdpaAttention
from .linear import FloatLinear, LinearMethod, float_method
from .ops import TORCH_OPS, CpuKernelOps, TorchOps

LinearChoice = Callable[[tuple[str, ...], int, tuple[int, ...], bool], LinearMethod]


def _float(names: tuple[str, ...], in_features: int, output_sizes: tuple[int, ...], bias: bool) -> LinearMethod:
    return FloatLinear()


@dataclass(frozen=True)
class ModelPlan:
    linear: LinearChoice = _float
    ops: TorchOps = TORCH_OPS
    attention: SdpaAttention = SDPA
    dtype: torch.dtype | None = None  # dtype of the float tensors the layers are built with

    @classmethod
    def for_device(cls, device, dtype: torch.dtype, linear: LinearChoice | None = None) -> "ModelPlan":
        """The fastest layouts this machine runs for float weights of ``dtype`` on ``device`` (the CPU
        kernels for bf16 where they build), with ``linear`` overriding the float layout (quantization)."""
        cpu_kernels = torch.device(device).type == "cpu" and dtype == torch.bfloat16 and kernels.compiled() is not None
        if linear is None:
            def linear(names, in_features, output_sizes, bias):
                return float_method(device, dtype)
        return cls(linear=linear, ops=CpuKernelOps() if cpu_kernels else TORCH_OPS,
                   attention=CpuDecodeAttention() if cpu_kernels else SDPA, dtype=dtype)


DEFAULT_PLAN = ModelPlan()
