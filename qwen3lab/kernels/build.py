"""Building the C++ CPU kernels once per machine, and what this CPU can run.

Owns the CPU-flag detection, the ``QWEN3LAB_CPU_KERNELS`` / ``QWEN3LAB_AMX`` switches and the compile
through PyTorch's extension loader. The build (g++ and ninja, about a minute) lands in PyTorch's
extension cache (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) and is reused by
later processes. Where the CPU lacks AVX-512 BF16 / VNNI or the build fails, ``compiled()`` is None
and every layer keeps PyTorch's own ops, so results never depend on whether the build worked.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = ("bindings.cpp", "cpu_gemv.cpp", "cpu_norm_rope.cpp", "cpu_attention.cpp", "cpu_amx.cpp", "cpu_act.cpp")
HEADERS = ("cpu_vec.h",)
REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni")
AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")
_lock = threading.Lock()
_module = None
_tried = False


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _compile():
    from torch.utils.cpp_extension import load

    log.info("qwen3lab: loading the CPU decode kernels (compiled on first use, about a minute)")
    here = Path(__file__).parent
    # Headers are not sources, so their digest joins the flags: the flags key the build cache.
    digest = hashlib.sha1(b"".join((here / h).read_bytes() for h in HEADERS)).hexdigest()[:12]
    return load(name="qwen3lab_cpu_kernels", sources=[str(here / f) for f in SOURCES],
                # -mamx-*: only enables the intrinsics; cpu_amx.cpp runs only where the CPU has AMX.
                # -fopenmp: at::parallel_for is PyTorch's OpenMP template, a serial loop without it; the
                # build links the libgomp PyTorch already loaded, so one thread pool serves both.
                extra_cflags=["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16",
                              "-mavx512vnni", "-mfma", "-mf16c", "-mamx-tile", "-mamx-int8", "-mamx-bf16", "-fopenmp",
                              f"-DQWEN3LAB_VEC_H={digest}"],
                extra_ldflags=["-fopenmp"], verbose=False)


def compiled():
    """The compiled extension module, or None where the kernels do not apply or could not be built."""
    global _module, _tried
    if _tried:
        return _module
    with _lock:
        if _tried:
            return _module
        if os.environ.get("QWEN3LAB_CPU_KERNELS", "1") == "0":
            pass
        elif not set(REQUIRED_FLAGS) <= cpu_flags():
            log.info("qwen3lab: this CPU lacks AVX-512 BF16/VNNI; decoding uses PyTorch's kernels")
        else:
            try:
                _module = _compile()
            except Exception as e:  # noqa: BLE001 - any build failure means: use PyTorch's ops
                log.warning("qwen3lab: CPU decode kernels could not be built (%s); using PyTorch's kernels", e)
        _tried = True
    return _module


@functools.cache
def amx() -> bool:
    """Whether the AMX kernels (cpu_amx.cpp) run here: a CPU with AMX tiles, an OS that grants their state
    to this process, and ``QWEN3LAB_AMX`` not 0."""
    return (os.environ.get("QWEN3LAB_AMX", "1") != "0" and set(AMX_FLAGS) <= cpu_flags()
            and compiled() is not None and bool(compiled().amx_available()))
