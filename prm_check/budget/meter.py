"""Measure peak resident memory, wall and CPU time of one step.

Linux: the kernel's high-water mark ``VmHWM`` after a reset through
``/proc/self/clear_refs`` (value 5) catches spikes that sampling misses. Elsewhere the
fallback is ``ru_maxrss``, a process-lifetime peak: valid only in a fresh process (the
guard's child), so ``Meter.exact`` says which one you got.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def read_vm_hwm() -> int | None:
    """Peak RSS since the last reset, in bytes, or None where /proc is absent."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def read_rss() -> int:
    """Current resident set size in bytes."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.Process().memory_info().rss)


def reset_peak() -> bool:
    """Reset the kernel high-water mark to the current RSS; False when unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


@dataclass
class Meter:
    """Context manager: ``with Meter() as m: step()`` then read ``m.peak_rss_bytes`` etc.

    ``peak_rss_bytes`` is the process peak during the block (absolute, includes what was
    resident before); ``start_rss_bytes`` lets callers subtract the baseline.
    """

    peak_rss_bytes: int = 0
    start_rss_bytes: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    cuda_peak_bytes: int | None = None
    exact: bool = True
    _t0: float = field(default=0.0, repr=False)
    _c0: float = field(default=0.0, repr=False)

    def __enter__(self) -> Meter:
        self.start_rss_bytes = read_rss()
        self.exact = reset_peak()
        self._cuda_reset()
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._t0
        self.cpu_s = time.process_time() - self._c0
        hwm = read_vm_hwm() if self.exact else None
        self.peak_rss_bytes = hwm if hwm is not None else _maxrss_bytes()
        self.cuda_peak_bytes = self._cuda_peak()

    @staticmethod
    def _cuda_reset() -> None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    @staticmethod
    def _cuda_peak() -> int | None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated())
        return None

    def as_dict(self) -> dict:
        return {
            "peak_rss_bytes": self.peak_rss_bytes,
            "start_rss_bytes": self.start_rss_bytes,
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "cuda_peak_bytes": self.cuda_peak_bytes,
            "exact_peak": self.exact,
            "pid": os.getpid(),
        }
