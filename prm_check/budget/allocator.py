"""Make freed tensor memory go back to the operating system during curvature products
(glibc ``malloc`` only).

Why: glibc serves allocations below its *dynamic* mmap threshold from heap arenas, and that
threshold grows up to 32 MiB as large blocks are freed. Per-parameter tensors and
activations of a transformer (0.1–10 MiB each at OPT-125m scale) then live on the heap, and
memory freed between Hessian-vector products stays resident, fragmented. Measured on this
machine (OPT-125m blocks, 4×128 tokens): the Hutchinson probe loop peaked at 3282–3363 MiB
RSS with the default and at 2601 MiB with a fixed 64 KiB threshold (1 MiB was not enough:
3029 MiB); a gradient at 1682 vs 1436 MiB. A fixed threshold (``mallopt(M_MMAP_THRESHOLD)``)
makes every block of 64 KiB or more its own mapping, unmapped on free.

Those figures predate taking HVP contributions on their edges (curvature/operator.py);
with it, the full grid (K = 16, 4 × 1×128) measured 2798 MiB default vs 2397 MiB lean, at
5.17 vs 7.65 s per probe.

Why opt-in (``PRM_CHECK_MALLOC=lean``): fresh mappings cost page faults and zeroing. In the
full curvature benchmark grid (OPT-125m, 4×128) the lean setting spent 21 of 69 CPU-minutes
in the kernel: one Hessian-vector product took 3.8× a gradient instead of ~2.9×, the probe
loop 3.9–4.4× at one sequence per micro-batch, while its peak fell to 1.83–1.91× the leaner
gradient. Training the tiny built-in model with the setting process-wide doubled the step
time (0.30 → 0.60 s/step). So by default nothing changes; with ``PRM_CHECK_MALLOC=lean`` the
threshold is fixed at 64 KiB only around probe loops and products
(:func:`returning_freed_memory`) and afterwards at glibc's dynamic maximum (32 MiB).
``MALLOC_MMAP_THRESHOLD_`` set in the environment always wins (the user chose).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from contextlib import contextmanager

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
SCOPED_THRESHOLD = 64 * 1024
AFTER_THRESHOLD = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit

_mallopt = None
_depth = 0


def _load_mallopt():
    global _mallopt
    if _mallopt is None:
        _mallopt = False
        name = ctypes.util.find_library("c")
        if name:
            try:
                fn = ctypes.CDLL(name).mallopt
            except (OSError, AttributeError):
                return False
            fn.argtypes = [ctypes.c_int, ctypes.c_int]
            fn.restype = ctypes.c_int
            _mallopt = fn
    return _mallopt


def applies() -> bool:
    """Whether this process may (``PRM_CHECK_MALLOC=lean``) and can tune glibc's threshold."""
    if os.environ.get("PRM_CHECK_MALLOC", "") != "lean":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return bool(_load_mallopt())


def set_mmap_threshold(nbytes: int) -> bool:
    """Fix the threshold at ``nbytes`` (True when in effect)."""
    return applies() and bool(_mallopt(M_MMAP_THRESHOLD, int(nbytes)))


@contextmanager
def returning_freed_memory() -> Iterator[bool]:
    """Within: blocks of 64 KiB or more are returned to the OS when freed. Re-entrant;
    yields whether the setting is in effect."""
    global _depth
    on = applies()
    if on and _depth == 0:
        set_mmap_threshold(SCOPED_THRESHOLD)
    _depth += 1
    try:
        yield on
    finally:
        _depth -= 1
        if on and _depth == 0:
            set_mmap_threshold(AFTER_THRESHOLD)
