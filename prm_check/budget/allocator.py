"""Make freed tensor memory go back to the operating system (glibc ``malloc`` only).

Why: glibc serves allocations below its *dynamic* mmap threshold from heap arenas, and that
threshold grows up to 32 MiB as large blocks are freed. Per-parameter tensors of a
transformer (2–10 MiB each at OPT-125m scale) then live on the heap, and memory freed between
Hessian-vector products stays resident, fragmented. Measured on this machine (OPT-125m
blocks, 4×128 tokens): a gradient peaked at 1682 MiB RSS with the default and 1436 MiB with
a fixed 64 KiB threshold; the Hutchinson probe loop at 3282–3363 MiB vs 2601 MiB; a fixed
1 MiB threshold was not enough (3029 MiB). A fixed threshold (``mallopt(M_MMAP_THRESHOLD)``)
disables the dynamic growth, so every block of 64 KiB or more is its own mapping and is
unmapped on free. Cost: page faults on fresh mappings (small next to a product's compute).

``PRM_CHECK_MALLOC=default`` leaves the allocator alone; ``MALLOC_MMAP_THRESHOLD_`` set in
the environment also wins (glibc reads it at start-up).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
DEFAULT_THRESHOLD = 64 * 1024

_applied: bool | None = None


def return_freed_memory(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process (idempotent).

    Returns True when the setting is in effect, False where it does not apply (not glibc,
    opted out, or the environment already chose a threshold).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("PRM_CHECK_MALLOC", "") == "default":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
    return _applied
