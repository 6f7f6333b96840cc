"""qwen3lab's C++ CPU kernels: ``build`` compiles them once per machine and says what this CPU runs;
``ops`` wraps each kernel with the inputs it takes.

Decoding multiplies a handful of activation rows by every weight matrix, where PyTorch's CPU ops
reach about half of the memory bandwidth. The sources stream the weights once per step with
AVX-512 BF16 / VNNI dot products or AMX tiles: ``cpu_gemv.cpp`` (bf16 / int8 / int4 GEMV),
``cpu_amx.cpp`` (AMX bf16 / int8 / int4), ``cpu_norm_rope.cpp`` (RMSNorm, QK-norm + RoPE),
``cpu_attention.cpp`` (paged decode attention), ``cpu_act.cpp`` (silu * up), sharing ``cpu_vec.h``;
``bindings.cpp`` exposes them to Python. Set ``QWEN3LAB_CPU_KERNELS=0`` to turn them off.
"""

from .build import amx, compiled, cpu_flags
from .ops import (MAX_ROWS, bf16_max_rows, dequant_buffer, norm_rope, paged_decode_attention, release_transients,
                  rms_norm, silu_mul, sliced_linear, usable)

__all__ = ["MAX_ROWS", "amx", "bf16_max_rows", "compiled", "cpu_flags", "dequant_buffer", "norm_rope",
           "paged_decode_attention", "release_transients", "rms_norm", "silu_mul", "sliced_linear", "usable"]
