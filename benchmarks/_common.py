"""Shared pieces of the benchmark suites: models from config, token batches, isolated workers.

Every model is built from an ``OPTConfig`` with random weights (nothing is downloaded) and
eager attention (the fused CPU SDPA kernels have no double backward, FACTS.md). Peak RSS is
only clean in a fresh process, so a configuration that is metered runs as
``python <suite>.py --worker JSON`` (:func:`run_isolated`) and prints one JSON line.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "reports" / "bench"
SEQ = 128

# Benchmark shapes. "tiny" is the default experiment's model shape; the OPT shapes are the
# planner's typed-in configurations (prm_check.budget.planner.KNOWN_SHAPES).
TINY = {
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "ffn_dim": 512,
    "vocab_size": 2048,
    "word_embed_proj_dim": 128,
}
ALIASES = {"opt125m": "opt-125m", "opt350m": "opt-350m", "opt1.3b": "opt-1.3b"}


def shape_config(kind: str | dict[str, Any]) -> dict[str, Any]:
    """OPTConfig keyword arguments for ``"tiny"``, a planner shape name, or a dict."""
    if isinstance(kind, dict):
        return dict(kind)
    if kind == "tiny":
        return dict(TINY)
    from prm_check.budget.planner import KNOWN_SHAPES

    return dict(KNOWN_SHAPES[ALIASES.get(kind, kind)])


def opt_model(kind: str | dict[str, Any], dtype=None, seed: int = 0):
    """A random-weight OPT of the given shape, eval mode, eager attention, no dropout."""
    from prm_check.models.random_opt import random_opt

    shape = shape_config(kind)
    shape.setdefault("max_position_embeddings", 2048)
    return random_opt(seed, dtype=dtype, **shape).eval()


def token_batch(vocab: int, batch: int, seq: int = SEQ, seed: int = 1):
    """A full (unpadded) :class:`~prm_check.data.batching.Batch` of random token ids."""
    import torch

    from prm_check.data.batching import Batch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (batch, seq), generator=gen)
    return Batch(ids, torch.ones_like(ids))


def run_isolated(
    script: str | Path,
    cfg: dict[str, Any],
    timeout: float = 900,
    python: str | None = None,
) -> dict[str, Any]:
    """Run ``script --worker JSON(cfg)`` in a fresh interpreter; its last stdout line is the
    result. A failure (exit code, timeout) comes back as ``{**cfg, "error": ...}``."""
    t0 = time.perf_counter()
    try:
        out = subprocess.run(
            [python or sys.executable, str(script), "--worker", json.dumps(cfg)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {**cfg, "error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        tail = [ln for ln in out.stderr.strip().splitlines() if ln.strip()][-1:]
        return {**cfg, "error": f"exit {out.returncode}: {' '.join(tail)}"[:500]}
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row.setdefault("process_s", time.perf_counter() - t0)
    return row


def worker_main(worker: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
    """If invoked as ``--worker JSON``, run ``worker`` and print its JSON; True when it did."""
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(ROOT))
        print(json.dumps(worker(json.loads(sys.argv[2]))))
        return True
    return False


def environment() -> dict[str, Any]:
    """What a reader needs to judge the timings: versions, threads, load average now."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "load_avg": list(os.getloadavg()),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)
