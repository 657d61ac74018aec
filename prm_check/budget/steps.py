"""Heavy steps the planner is calibrated on: gradient, HVP (rev / fwd), Lanczos, SLQ.

Why here: the planner's constants must be re-derivable (``planner.calibrate``) on the
machine at hand, by running exactly these steps in guarded children on random-weight OPT
models built from a config (no download). ``engine="operator"`` (the ``"auto"`` default
when importable) runs the project's
:class:`~prm_check.curvature.operator.HessianOperator` (flat vectors: more parameter-sized
buffers); ``engine="standin"`` a minimal reverse-over-reverse / ``jvp(grad)`` on tensor
lists, kept so the guard and planner do not depend on the curvature package.
"""

from __future__ import annotations

from typing import Any

METHODS = ("gradient", "hvp_rev", "hvp_fwd", "lanczos", "slq")
DTYPES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}


def build_model(config: dict[str, Any], dtype: str = "float32", seed: int = 0):
    """A random-weight OPT of ``config`` (planner shape dict) in eval mode, eager attention."""
    import torch

    from prm_check.models.random_opt import random_opt

    model = random_opt(seed, pad_id=1, eos_id=2, **config)
    return model.eval().to(getattr(torch, dtype))


def random_batch(vocab: int, batch: int, seq: int, seed: int = 0):
    """A full (unpadded) batch of uniform random token ids: every position is a target."""
    import torch

    from prm_check.data.batching import Batch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    return Batch(ids, torch.ones_like(ids))


def _loss(model, batch):
    from prm_check.lm import batch_loss_sum

    total, count = batch_loss_sum(model, batch)
    return total / max(count, 1)


def _rademacher(params, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 2, p.shape, generator=g) * 2 - 1).to(p.dtype) for p in params]


def _hvps_rev(model, batch, params, probes: int, keep: int) -> list:
    """``probes`` HVPs on one retained ``create_graph`` gradient; keeps ``keep`` results."""
    import torch

    grads = torch.autograd.grad(_loss(model, batch), params, create_graph=True)
    kept = []
    for k in range(probes):
        v = _rademacher(params, k)
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=k < probes - 1)
        flat = torch.cat([h.reshape(-1) for h in hv])
        del hv, v
        if len(kept) < keep:
            kept.append(flat)
    return kept


def _hvp_fwd(model, batch, params) -> None:
    import torch
    from torch.func import functional_call, grad, jvp

    names = [n for n, p in model.named_parameters() if p.requires_grad]

    def loss_of(ps):
        out = functional_call(
            model, dict(zip(names, ps, strict=True)), (), {"input_ids": batch.input_ids}
        )
        logits = out.logits[:, :-1, :]
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch.input_ids[:, 1:].reshape(-1)
        )

    primals = tuple(p.detach() for p in params)
    jvp(grad(loss_of), (primals,), (tuple(_rademacher(params, 0)),))


def run_step(
    config: dict[str, Any],
    method: str,
    batch: int,
    seq: int,
    dtype: str = "float32",
    probes: int = 1,
    m: int = 0,
    seed: int = 0,
    repeat: int = 1,
    engine: str = "auto",
) -> dict[str, Any]:
    """Build the model, then run and meter ``repeat`` ``method`` steps on ``batch`` x ``seq``.

    Returns the step's own readings (model build excluded): absolute peak RSS over all
    repeats, RSS before the step, wall and CPU seconds of the *last* repeat (the first pays
    one-off kernel set-up), and the parameter count.
    """
    import torch

    from prm_check.budget.meter import Meter

    if method not in METHODS:
        raise ValueError(f"method {method!r} not in {METHODS}")
    torch.set_grad_enabled(True)
    model = build_model(config, dtype, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    data = random_batch(config["vocab_size"], batch, seq, seed)
    if engine == "auto":
        try:
            import prm_check.curvature.operator  # noqa: F401
        except ImportError:
            engine = "standin"
        else:
            engine = "operator"
    peak, start = 0, 0
    step = _operator_step if engine == "operator" else _standin_step
    for i in range(max(repeat, 1)):
        with Meter() as meter:
            step(model, data, params, method, probes, m)
        peak = max(peak, meter.peak_rss_bytes)
        start = meter.start_rss_bytes if i == 0 else start
    return {
        "peak_rss_bytes": float(peak),
        "start_rss_bytes": float(start),
        "wall_s": meter.wall_s,
        "cpu_s": meter.cpu_s,
        "n_params": float(sum(p.numel() for p in params)),
        "engine": engine,
    }


def _operator_step(model, data, params, method: str, probes: int, m: int) -> None:
    import torch

    from prm_check.curvature.operator import HessianOperator

    op = HessianOperator(model, [data], method="fwd" if method == "hvp_fwd" else "rev")
    if method == "gradient":
        op.gradient()
        return
    krylov = method in ("lanczos", "slq")
    basis = []  # Lanczos / one SLQ probe keep the Krylov basis of m vectors
    for k in range(max(m, 1) if krylov else probes):
        g = torch.Generator().manual_seed(k)
        v = torch.empty(op.n, dtype=op.dtype).bernoulli_(0.5, generator=g).mul_(2).sub_(1)
        hv = op.matvec(v)  # a Rademacher probe built in place: no int64 temporary
        if krylov:
            basis.append(hv)
        del hv, v


def _standin_step(model, data, params, method: str, probes: int, m: int) -> None:
    import torch

    if method == "gradient":
        torch.autograd.grad(_loss(model, data), params)
    elif method == "hvp_rev":
        _hvps_rev(model, data, params, probes, keep=0)
    elif method == "hvp_fwd":
        for _ in range(probes):
            _hvp_fwd(model, data, params)
    else:
        _hvps_rev(model, data, params, max(m, 1), keep=max(m, 1))
