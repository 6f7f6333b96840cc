"""Handing memory-mapped checkpoint pages back once their tensors have been copied.

Loaded weights are views of the checkpoint's memory-mapped files. When a weight is copied (into a packed
q/k/v or gate/up parameter, repacked for a kernel), the pages the copy read stay counted in the
process's resident memory for as long as any tensor keeps the file mapped, although nothing reads
them again. ``release_file_pages`` drops them from this process (``madvise(MADV_DONTNEED)``); they
stay in the page cache, and a later read would fault them back in from the file.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import torch


def _file_mappings() -> list[tuple[int, int, int, str]]:
    """(start, end, file offset, path) of this process's mappings of files, from /proc/self/maps (Linux)."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[4] != "0" and fields[5].startswith("/"):
                start, end = fields[0].split("-")
                out.append((int(start, 16), int(end, 16), int(fields[2], 16), fields[5].rstrip("\n")))
    return out


def _file_backed_regions() -> list[tuple[int, int]]:
    return [(s, e) for s, e, _, _ in _file_mappings()]


def file_location(t: torch.Tensor) -> tuple[str, int] | None:
    """(path, byte offset) of a CPU tensor that is a view of a memory-mapped file, else None."""
    if not sys.platform.startswith("linux") or t.device.type != "cpu" or not t.is_contiguous():
        return None
    start, end = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
    for s, e, offset, path in _file_mappings():
        if s <= start and end <= e:
            return path, offset + start - s
    return None


def release_file_pages(tensors: list[torch.Tensor]) -> int:
    """Unmap from this process the whole pages of file-backed (memory-mapped checkpoint) storage under
    ``tensors``, which the caller no longer uses; returns the bytes released. Anonymous memory is left
    alone: it is freed when its last tensor goes. Pages shared with neighbouring tensors are kept."""
    if not sys.platform.startswith("linux"):
        return 0
    regions, page, released = _file_backed_regions(), mmap.PAGESIZE, 0
    libc = ctypes.CDLL(None, use_errno=True)
    for t in tensors:
        if t.device.type != "cpu" or t.numel() == 0:
            continue
        start, end = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
        lo, hi = -(-start // page) * page, end // page * page
        if hi > lo and any(s <= lo and hi <= e for s, e in regions):
            if libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4) == 0:  # 4 = MADV_DONTNEED
                released += hi - lo
    return released


def release_free_memory() -> None:
    """Hand the allocator's free pages back to the OS (glibc only; elsewhere nothing happens).

    glibc keeps the memory of freed activations in its heaps: after training, the process would hold
    several GB it no longer uses, and whatever runs next (scoring with ``LLM``) would stack on top; after
    loading, the transient copies of quantizing and packing (0.36 GB for Qwen3-4B int4).
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl)
            pass
