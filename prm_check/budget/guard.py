"""Run a heavy step in a spawned child with a hard memory limit and a wall-clock kill.

Why a child: an over-budget Hessian step must fail *one* stage, not the machine or the
pytest session. The child sets ``RLIMIT_DATA`` (``RLIMIT_AS`` is unusable: torch reserves
GBs of address space) before it imports anything heavy, so an over-limit allocation raises
a catchable error there; the parent SIGKILLs the child's whole process group at the time
limit, because a native torch call cannot be interrupted by a signal handler.

Costs (measured on 2 shared cores at load average ~10, torch 2.13 CPU): spawning a bare
child 0.23 s; with ``import torch`` 1.4 s idle, 3.3-5 s contended (VmData 217 MiB, RSS
231 MiB); ``transformers`` adds little until model classes load (then VmData ~415 MiB).
So a fresh child is for steps of tens of seconds and more. A :class:`GuardWorker` keeps one
child warm: a step then pays a pipe round trip and a result file, 11-22 ms per call
(1-2 % of a 1 s step). Time budgets count from the step's start, not the child's start-up
(bounded separately by ``startup_timeout``).

Rules for steps: ``fn`` must be importable (module-level), its arguments and result
picklable. Results come back through a private temp file (``torch.save`` when the child has
torch loaded, else pickle: own-process, trusted data), so tensors are bit-identical. A step
that writes files must write them to :func:`staged_path` (see ``outputs=``): the parent
promotes them atomically only when the step succeeded, so no partial output survives.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prm_check.budget.meter import Measurement, Meter
from prm_check.errors import BudgetError, BudgetExceeded, PrmCheckError
from prm_check.units_fmt import format_bytes

# Data-segment size (VmData, what RLIMIT_DATA counts) of a spawned child after importing
# each module set, rounded up. Measured 2025 on this 2-core box, torch 2.13.0+cpu,
# transformers 5.25: bare python 9 MiB, +torch 216 MiB, +transformers/OPT 415 MiB.
IMPORT_FOOTPRINT_BYTES: dict[str, int] = {
    "": 32 * 2**20,
    "torch": 256 * 2**20,
    "transformers": 480 * 2**20,
}
DEFAULT_PRELOAD: tuple[str, ...] = ("torch",)
DEFAULT_STARTUP_TIMEOUT_S = 120.0
_ALLOC_FAILED = re.compile(
    r"can't allocate memory|not enough memory|out of memory|failed to map segment|MemoryError",
    re.I,
)
_TRIED = re.compile(r"tried to allocate (\d+) bytes", re.I)
_STAGED: dict[str, Path] = {}


class GuardedStepError(PrmCheckError, RuntimeError):
    """A guarded child failed with an unpicklable exception or died without an answer."""


class MemoryBudgetExceeded(BudgetExceeded):
    """A memory breach; ``observed`` is the step's resident peak (VmHWM) when it was refused.

    ``RLIMIT_DATA`` counts reserved private memory, not resident pages, so the resident
    peak is usually *below* the limit; ``requested`` is the allocation that was refused.
    """

    def __init__(
        self, limit: float, observed: float | None, stage: str,
        requested: int | None = None, detail: str = "",
    ) -> None:  # fmt: skip
        self.requested = requested
        super().__init__("memory", limit, observed, stage, detail)

    def one_line(self) -> str:
        more = f"{format_bytes(self.requested)} " if self.requested else ""
        return super().one_line() + f" resident, when a further {more}allocation was refused"

    def __reduce__(self):
        return (type(self), (self.limit, self.observed, self.stage, self.requested, self.detail))


@dataclass(frozen=True)
class GuardResult:
    """A guarded step's return value and what it cost (``measurement.isolated`` is True)."""

    value: Any
    measurement: Measurement


def minimum_budget(preload: tuple[str, ...] = DEFAULT_PRELOAD) -> int:
    """Smallest memory budget a child that imports ``preload`` can start under, in bytes."""
    return max([IMPORT_FOOTPRINT_BYTES[""]] + [IMPORT_FOOTPRINT_BYTES.get(m, 0) for m in preload])


def staged_path(name: str) -> Path:
    """Where the running step must write output ``name`` (declared via ``outputs=``)."""
    try:
        return _STAGED[name]
    except KeyError:
        raise BudgetError(
            f"output {name!r} was not declared; pass outputs={{{name!r}: final_path}} "
            f"to run_guarded/measure_only (declared: {sorted(_STAGED)})"
        ) from None


@contextlib.contextmanager
def _staging(outputs: Mapping[str, str | os.PathLike] | None) -> Iterator[dict[str, Path]]:
    """Staging paths beside each final path (same filesystem, so promotion is atomic)."""
    staged = {
        name: Path(final).with_name(f".{Path(final).name}.{uuid.uuid4().hex[:8]}.partial")
        for name, final in (outputs or {}).items()
    }
    try:
        yield staged
    finally:
        for path in staged.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _promote(staged: Mapping[str, Path], outputs: Mapping[str, str | os.PathLike]) -> None:
    for name, path in staged.items():
        if path.exists():
            os.replace(path, outputs[name])


def _is_alloc_failure(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and bool(_ALLOC_FAILED.search(str(exc)))


def _refused_request(exc: BaseException) -> int | None:
    """Bytes of the allocation that was refused, when torch names it."""
    m = _TRIED.search(str(exc))
    return int(m.group(1)) if m else None


def _set_data_limit(memory: int | None) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = hard if memory is None else memory
    if hard != resource.RLIM_INFINITY and soft > hard:
        soft = hard
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _save_result(value: Any, path: Path) -> str:
    if "torch" in sys.modules:
        sys.modules["torch"].save(value, path)
        return "torch"
    with open(path, "wb") as f:
        pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
    return "pickle"


def _load_result(path: Path, how: str) -> Any:
    if how == "torch":
        import torch

        return torch.load(path, weights_only=False)  # own child's output: trusted
    with open(path, "rb") as f:
        return pickle.load(f)


def _run_task(task: dict, tmpdir: Path) -> tuple:
    """Child side of one step; returns the message for the parent (never raises)."""
    meter = Meter()
    _STAGED.clear()
    _STAGED.update(task["staged"])
    try:
        _set_data_limit(task["memory"])
        fn, args, kwargs = pickle.loads(task["payload"])
        with meter:
            value = fn(*args, **kwargs)
        result_path = tmpdir / f"result-{uuid.uuid4().hex[:8]}"
        how = _save_result(value, result_path)
        del value
        _set_data_limit(None)
        return ("ok", meter.as_dict(), str(result_path), how)
    except BaseException as exc:  # everything must reach the parent
        if _is_alloc_failure(exc):
            request = _refused_request(exc)
            text = "".join(traceback.format_exception(exc))
            exc.__traceback__ = None
            del exc
            _set_data_limit(None)
            return ("memory", meter.as_dict(), meter.peak_rss_bytes, request, text)
        _set_data_limit(None)
        text = "".join(traceback.format_exception(exc))
        try:
            blob = pickle.dumps(exc)
            pickle.loads(blob)
        except Exception:
            blob = None
        return ("error", meter.as_dict(), blob, f"{type(exc).__name__}: {exc}", text)
    finally:
        _STAGED.clear()


def _worker_main(conn, preload: tuple[str, ...], memory: int | None, tmpdir: str) -> None:
    """Child process: own process group, limit, preload, then serve tasks until None."""
    os.setsid()  # the parent kills the whole group, including any grandchildren
    try:
        _set_data_limit(memory)
        for name in preload:
            __import__(name)
        conn.send(("ready", None))
    except BaseException as exc:
        conn.send(("startup-failed", "".join(traceback.format_exception(exc))))
        return
    while True:
        task = conn.recv()
        if task is None:
            return
        conn.send(_run_task(task, Path(tmpdir)))


class GuardWorker:
    """A warm guarded child: spawn + imports are paid once, each :meth:`run` is isolated
    by its own limits. The child is replaced after a time or memory breach."""

    def __init__(
        self,
        preload: tuple[str, ...] = DEFAULT_PRELOAD,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
    ) -> None:
        self.preload = tuple(preload)
        self.startup_timeout = startup_timeout
        self.startup_s = 0.0
        self._proc: Any = None
        self._conn: Any = None
        self._tmpdir: str | None = None

    def __enter__(self) -> GuardWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def _start(self, memory: int | None, stage: str) -> None:
        ctx = mp.get_context("spawn")
        self._tmpdir = tempfile.mkdtemp(prefix="prm-guard-")
        parent, child = ctx.Pipe(duplex=True)
        t0 = time.perf_counter()
        self._proc = ctx.Process(
            target=_worker_main, args=(child, self.preload, memory, self._tmpdir), daemon=True
        )
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(self.startup_timeout):
            self.kill()
            raise BudgetExceeded("time", self.startup_timeout, None, f"{stage} (start-up)")
        kind, text = self._recv(stage)
        self.startup_s = time.perf_counter() - t0
        if kind != "ready":
            self.kill()
            if text and _ALLOC_FAILED.search(text):
                raise BudgetExceeded(
                    "memory", memory or 0, None, f"{stage} (import)", detail=text or ""
                )
            raise GuardedStepError(f"guarded child for stage {stage} failed to start:\n{text}")

    def _recv(self, stage: str) -> tuple:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            code = self._proc.exitcode if self._proc is not None else None
            self.kill()
            raise GuardedStepError(
                f"guarded child of stage {stage} died without an answer (exit code {code}); "
                "a negative code is the signal that killed it"
            ) from None

    def kill(self) -> None:
        """SIGKILL the child's process group and forget it (its temp files go too)."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self._proc.kill()
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._proc = self._conn = self._tmpdir = None

    def close(self) -> None:
        """Ask the child to exit, then make sure it has."""
        if self.alive:
            with contextlib.suppress(OSError, BrokenPipeError):
                self._conn.send(None)
            self._proc.join(5)
        self.kill()

    def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        memory: int | str | None = None,
        seconds: float | str | None = None,
        stage: str = "step",
        outputs: Mapping[str, str | os.PathLike] | None = None,
        **kwargs: Any,
    ) -> GuardResult:
        """Run ``fn(*args, **kwargs)`` in the child under ``memory`` bytes and ``seconds``.

        Raises :class:`BudgetExceeded` on a breach (the child is replaced), the child's own
        exception type when it is picklable (``child_traceback`` attribute and a note carry
        the child's traceback), else :class:`GuardedStepError`.
        """
        memory_b, seconds_f = _check_budget(memory, seconds, self.preload)
        payload = pickle.dumps((fn, args, kwargs))
        t0 = time.perf_counter()
        if not self.alive:
            self.kill()
            self._start(memory_b, stage)
        with _staging(outputs) as staged:
            self._conn.send({"payload": payload, "memory": memory_b, "staged": staged})
            t_sent = time.perf_counter()
            try:
                answered = self._conn.poll(seconds_f)
            except BaseException:  # e.g. Ctrl-C in the parent: never leave the child running
                self.kill()
                raise
            if not answered:
                ran = time.perf_counter() - t_sent
                self.kill()
                raise BudgetExceeded("time", seconds_f, ran, stage)
            msg = self._recv(stage)
            meter = msg[1]
            measurement = Measurement(
                stage=stage,
                peak_rss_bytes=meter["peak_rss_bytes"],
                start_rss_bytes=meter["start_rss_bytes"],
                wall_s=meter["wall_s"],
                cpu_s=meter["cpu_s"],
                cuda_peak_bytes=meter["cuda_peak_bytes"],
                exact_peak=meter["exact_peak"],
                memory_limit=memory_b,
                time_limit=seconds_f,
                isolated=True,
                startup_s=self.startup_s,
                total_wall_s=time.perf_counter() - t0,
            )
            if msg[0] == "ok":
                value = _load_result(Path(msg[2]), msg[3])
                os.unlink(msg[2])
                _promote(staged, outputs or {})
                return GuardResult(value, measurement)
        if msg[0] == "memory":
            self.kill()  # a half-failed step may leave the child's heap in any state
            raise MemoryBudgetExceeded(memory_b or 0, msg[2], stage, msg[3], msg[4])
        _, _, blob, summary, text = msg
        exc = pickle.loads(blob) if blob is not None else None
        if not isinstance(exc, BaseException):
            raise GuardedStepError(f"stage {stage} failed in its child: {summary}\n{text}")
        with contextlib.suppress(AttributeError, TypeError):
            exc.child_traceback = text  # type: ignore[attr-defined]
        if hasattr(exc, "add_note"):  # Python >= 3.11
            exc.add_note(f"[prm_check guard] raised in the child of stage {stage}:\n{text}")
        raise exc


def _check_budget(
    memory: int | str | None, seconds: float | str | None, preload: tuple[str, ...]
) -> tuple[int | None, float | None]:
    from prm_check.budget.parse import parse_duration, parse_size

    memory_b = None if memory is None else parse_size(memory)
    seconds_f = None if seconds is None else parse_duration(seconds)
    if memory_b is not None and memory_b < minimum_budget(preload):
        need = minimum_budget(preload)
        raise BudgetError(
            f"memory budget {format_bytes(memory_b)} is below the bare footprint of a guarded "
            f"child importing {', '.join(preload) or 'nothing'} ({format_bytes(need)}); "
            f"give at least {format_bytes(need)} plus the step's own needs"
        )
    if seconds_f is not None and seconds_f <= 0:
        raise BudgetError(f"time budget must be positive, got {seconds_f} s; e.g. 90s, 10 min")
    return memory_b, seconds_f


def run_guarded(
    fn: Callable[..., Any],
    *args: Any,
    memory: int | str | None,
    seconds: float | str | None,
    stage: str,
    preload: tuple[str, ...] = DEFAULT_PRELOAD,
    outputs: Mapping[str, str | os.PathLike] | None = None,
    worker: GuardWorker | None = None,
    **kwargs: Any,
) -> GuardResult:
    """Run ``fn`` once in a fresh spawned child (or in ``worker``) under the budgets.

    The child's start-up (spawn + ``preload`` imports) is not charged to ``seconds`` but is
    bounded by ``startup_timeout``; ``memory`` covers the whole child, imports included.
    """
    if worker is not None:
        return worker.run(
            fn, *args, memory=memory, seconds=seconds, stage=stage, outputs=outputs, **kwargs
        )
    _check_budget(memory, seconds, tuple(preload))
    with GuardWorker(preload=preload) as w:
        return w.run(
            fn, *args, memory=memory, seconds=seconds, stage=stage, outputs=outputs, **kwargs
        )


def measure_only(
    fn: Callable[..., Any],
    *args: Any,
    stage: str,
    outputs: Mapping[str, str | os.PathLike] | None = None,
    **kwargs: Any,
) -> tuple[Any, Measurement]:
    """Run ``fn`` in this process and measure it; for cheap steps that need no isolation.

    The peak is exact on Linux (VmHWM reset); elsewhere it is the process-lifetime peak.
    """
    with _staging(outputs) as staged:
        _STAGED.update(staged)
        try:
            with Meter() as meter:
                value = fn(*args, **kwargs)
        finally:
            for name in staged:
                _STAGED.pop(name, None)
        _promote(staged, outputs or {})
    return value, meter.measurement(stage)
