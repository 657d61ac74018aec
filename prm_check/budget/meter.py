"""Measure peak resident memory, wall and CPU time of one step.

Linux: the kernel's high-water mark ``VmHWM`` after a reset through
``/proc/self/clear_refs`` (value 5) catches spikes that sampling misses. Elsewhere the
fallback is ``ru_maxrss``, a process-lifetime peak: valid only in a fresh process (the
guard's child), so ``Meter.exact`` says which one you got. ``psutil`` supplies the
current RSS where ``/proc`` is missing.

CUDA: ``torch.cuda.max_memory_allocated`` is the caching allocator's exact high-water
mark (reset on entry), so no sampling thread is needed; memory reserved by the caching
allocator but not allocated, and other processes' use, are not included.
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


def read_vm_data() -> int | None:
    """Size of the private writable mappings (what ``RLIMIT_DATA`` counts), in bytes."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmData:"):
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

    def measurement(
        self, stage: str, memory_limit: int | None = None, time_limit: float | None = None
    ) -> Measurement:
        """Freeze this meter's readings into a :class:`Measurement` of ``stage``."""
        return Measurement(
            stage=stage,
            peak_rss_bytes=self.peak_rss_bytes,
            start_rss_bytes=self.start_rss_bytes,
            wall_s=self.wall_s,
            cpu_s=self.cpu_s,
            cuda_peak_bytes=self.cuda_peak_bytes,
            exact_peak=self.exact,
            memory_limit=memory_limit,
            time_limit=time_limit,
        )

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


@dataclass(frozen=True)
class Measurement:
    """What one step cost: absolute peak RSS (bytes), RSS at its start, wall and CPU seconds.

    ``isolated`` is True when the step ran in a guarded child; ``startup_s`` is then the
    child's spawn + import time and ``total_wall_s`` the parent's view of the whole call.
    """

    stage: str
    peak_rss_bytes: int
    start_rss_bytes: int
    wall_s: float
    cpu_s: float
    cuda_peak_bytes: int | None = None
    exact_peak: bool = True
    memory_limit: int | None = None
    time_limit: float | None = None
    isolated: bool = False
    startup_s: float = 0.0
    total_wall_s: float | None = None

    @property
    def peak_delta_bytes(self) -> int:
        """Growth of RSS during the step (peak minus RSS at its start)."""
        return max(0, self.peak_rss_bytes - self.start_rss_bytes)

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)
