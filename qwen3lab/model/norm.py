"""RMSNorm exactly as the reference computes it: statistics in float32, weight applied after the cast back."""

import torch
from torch import nn

from .ops import TORCH_OPS, TorchOps


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, ops: TorchOps = TORCH_OPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.ops = ops  # where the computation runs (model/ops.py): the same roundings everywhere

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.rms_norm(x, self.weight, self.eps)
