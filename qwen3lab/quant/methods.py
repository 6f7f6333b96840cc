"""Which weight layout each linear layer gets: chosen once, from the device, the CPU and the quantization.

The fastest layout this machine runs wins (AMX tiles > AVX-512 GEMV > PyTorch's packed kernel >
dequantize per call); each layout's shape conditions are checked here, so a method's ``apply`` never
asks which layout it is.
"""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Iterable

import torch

from .. import kernels
from ..model.linear import LinearMethod, float_method
from ..model.plan import LinearChoice
from .int4 import Int4Amx, Int4Avx512, Int4CpuPacked, Int4Method, Int4Portable, check_group_size
from .int8 import Int8Amx, Int8Avx512, Int8Method, Int8Portable

MODES = ("int8", "int4")


def int8_method(in_features: int, out_features: int, device, from_float: bool) -> Int8Method:
    cpu = torch.device(device).type == "cpu"
    if cpu and kernels.amx() and out_features % 16 == 0 and in_features % 64 == 0:
        return Int8Amx(from_float)
    if cpu and kernels.compiled() is not None:
        return Int8Avx512(from_float)
    return Int8Portable(from_float)


def int4_method(in_features: int, out_features: int, group_size: int, device, dtype: torch.dtype | None,
                from_float: bool, keep_portable: bool = False) -> Int4Method:
    cpu, bf16 = torch.device(device).type == "cpu", dtype == torch.bfloat16
    if cpu and bf16 and kernels.amx() and out_features % 16 == 0:
        kind = Int4Amx
    elif cpu and bf16 and in_features % 128 == 0 and kernels.compiled() is not None:
        kind = Int4Avx512
    elif cpu and out_features % 16 == 0:
        kind = Int4CpuPacked
    else:
        kind = Int4Portable
    return kind(group_size, from_float, keep_portable)


def skipped(names: Iterable[str], skip: Iterable[str]) -> bool:
    """Whether any of a layer's Hugging Face names is in ``skip`` (exact names or fnmatch patterns such as
    ``'*.down_proj'``); a packed layer stays in float as a whole."""
    skip = tuple(skip)
    return any(n == s or fnmatch(n, s) for n in names for s in skip)


def is_target(names: tuple[str, ...]) -> bool:
    """Layers that quantize: the decoder layers' projections and ``lm_head`` (never embeddings)."""
    return names[0].startswith("model.layers.") or names == ("lm_head",)


def linear_choice(device, dtype: torch.dtype | None, mode: str | None = None, group_size: int | None = None,
                  not_converted: Iterable[str] = (), from_float: bool = True, keep_portable: bool = False
                  ) -> LinearChoice:
    """The plan's per-layer choice: float layouts, or ``mode`` ("int8" / "int4") for every target layer not
    in ``not_converted``. ``from_float``: the checkpoint's tensors are float (quantized after loading)."""
    not_converted = tuple(not_converted)

    def choose(names, in_features, output_sizes, bias) -> LinearMethod:
        if mode is None or not is_target(names) or skipped(names, not_converted):
            return float_method(device, dtype)
        out = sum(output_sizes)
        if mode == "int8":
            return int8_method(in_features, out, device, from_float)
        check_group_size(group_size, in_features, names[0])
        return int4_method(in_features, out, group_size, device, dtype, from_float, keep_portable)

    return choose
