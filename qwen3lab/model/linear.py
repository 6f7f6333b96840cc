"""``Linear``: a projection whose weight layout is a ``LinearMethod`` chosen once, when the model is built.

A method owns one layout: which tensors it registers on the layer (``create_weights``, each with the
dimension along which packed parts stack), what it makes of them once the checkpoint is in
(``process_weights_after_loading``: quantize, repack for a kernel) and the product (``apply``).
Packed projections ([q; k; v], [gate; up]) are one ``Linear`` with several ``output_sizes``; the
loader fills part ``shard`` of each tensor from the checkpoint's separate Hugging Face tensors.

This file holds the float layouts; int8 / int4 are in ``qwen3lab/quant``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..memory import release_file_pages


class LinearMethod:
    """One weight layout of a ``Linear`` (vLLM's ``LinearMethodBase``, in small)."""

    name = "float"

    def create_weights(self, layer: "Linear", dtype: torch.dtype | None, device) -> None:
        layer.add_weight("weight", torch.empty(layer.out_features, layer.in_features, dtype=dtype, device=device))

    def process_weights_after_loading(self, layer: "Linear") -> None:
        """Called once every tensor is in place."""

    def apply(self, layer: "Linear", x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, layer.weight, layer.bias)


class FloatLinear(LinearMethod):
    """``F.linear`` on the float weight: every device and dtype, autograd."""


class CpuBf16Linear(LinearMethod):
    """bf16 weight; few-row products (decoding, verification) in qwen3lab's CPU kernel, others in ``F.linear``."""

    name = "bf16-cpu-kernel"

    def apply(self, layer: "Linear", x: torch.Tensor) -> torch.Tensor:
        w = layer.weight
        if w.dtype == torch.bfloat16 and kernels.usable(x, layer.in_features, max_rows=kernels.bf16_max_rows()):
            ops = kernels.compiled()
            # AMX tiles at every decode-sized row count: a row's result does not depend on the batch,
            # so speculative verification reproduces decoding exactly.
            gemv = ops.amx_bf16 if kernels.amx() and layer.out_features % 16 == 0 and layer.in_features % 32 == 0 \
                else ops.gemv_bf16
            out = gemv(x.reshape(-1, layer.in_features).contiguous(), w).reshape(*x.shape[:-1], layer.out_features)
            return out if layer.bias is None else out + layer.bias
        return F.linear(x, w, layer.bias)


class Linear(nn.Module):
    """y = x W^T (+ b), W [sum(output_sizes), in_features] in whatever layout ``method`` keeps it."""

    def __init__(self, in_features: int, output_sizes: int | tuple[int, ...], bias: bool = False,
                 method: LinearMethod | None = None, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        self.in_features = in_features
        self.output_sizes = (output_sizes,) if isinstance(output_sizes, int) else tuple(output_sizes)
        self.out_features = sum(self.output_sizes)
        self.output_dims: dict[str, int] = {}  # tensor name -> dim along which packed parts stack
        self.method = method or FloatLinear()
        self.method.create_weights(self, dtype, device)
        self.register_parameter("bias", None)
        if bias:
            self.add_weight("bias", torch.empty(self.out_features, dtype=dtype, device=device))

    def add_weight(self, name: str, value: torch.Tensor, output_dim: int = 0) -> None:
        """Register a loadable tensor as a parameter, so the loader's checks and placement see it (float ones
        trainable, as ``nn.Linear``'s; the loader freezes what it loads)."""
        self.register_parameter(name, nn.Parameter(value, requires_grad=value.is_floating_point()))
        self.output_dims[name] = output_dim

    def drop_weight(self, name: str) -> None:
        """Forget a loadable tensor a method has replaced by its own form."""
        delattr(self, name)
        self.output_dims.pop(name, None)

    def shard_shape(self, name: str, shard: int | None) -> tuple[int, ...]:
        """Shape a checkpoint tensor must have to fill ``name`` whole (shard None) or its part ``shard``."""
        shape = list(getattr(self, name).shape)
        if shard is not None:
            shape[self.output_dims[name]] = self.output_sizes[shard]
        return tuple(shape)

    def load_weight(self, name: str, value: torch.Tensor, shard: int | None = None) -> None:
        """Place a checkpoint tensor: whole (kept as given, a view of the file where it is one) or as part
        ``shard`` of a packed tensor, copied into its rows; the source's file pages are then handed back."""
        if shard is None:
            self.register_parameter(name, nn.Parameter(value, requires_grad=False))
            return
        param = getattr(self, name)
        if param.is_meta or param.dtype != value.dtype or param.device != value.device:
            param = nn.Parameter(torch.empty(param.shape, dtype=value.dtype, device=value.device), requires_grad=False)
            self.register_parameter(name, param)
        dim = self.output_dims[name]
        param.data.narrow(dim, sum(self.output_sizes[:shard]), self.output_sizes[shard]).copy_(value)
        release_file_pages([value])

    def process_weights_after_loading(self) -> None:
        self.method.process_weights_after_loading(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x)

    def extra_repr(self) -> str:
        sizes = "+".join(map(str, self.output_sizes))
        return f"in_features={self.in_features}, out_features={sizes}, bias={self.bias is not None}, " \
               f"method={self.method.name}"


def float_method(device, dtype: torch.dtype | None) -> LinearMethod:
    """The float layout for this device and dtype: the CPU kernel where it builds and the weights are bf16."""
    if torch.device(device).type == "cpu" and dtype == torch.bfloat16 and kernels.compiled() is not None:
        return CpuBf16Linear()
    return FloatLinear()
