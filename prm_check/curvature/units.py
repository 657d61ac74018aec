"""Per-unit curvature features: the table the partition and the report consume.

``compute_unit_features`` runs, for one loss (one data set), a Hutchinson diagonal whose
per-unit sums get exact standard errors (the group hook sees every probe group before it
is folded in, and unit sums are linear), the gradient, optionally the empirical Fisher,
activation sparsity and, for tensor units, the top block eigenvalue. Max and quantiles of
a unit's diagonal are nonlinear and carry no standard error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from prm_check.curvature.activations import activation_sparsity
from prm_check.curvature.eigen import top_eigenpairs
from prm_check.curvature.fisher import fisher_diagonal
from prm_check.curvature.hutchinson import Progress, _emit, hutchinson_diagonal
from prm_check.curvature.operator import HessianOperator
from prm_check.curvature.params import ParamSpec
from prm_check.curvature.table import UnitFeatures
from prm_check.curvature.unitmap import GRANULARITIES, Unit, enumerate_units
from prm_check.data.batching import Batch
from prm_check.errors import CurvatureError

__all__ = [
    "GRANULARITIES",
    "Unit",
    "UnitFeatures",
    "compute_unit_features",
    "enumerate_units",
    "reduce_per_unit",
]

QUANTILES = (0.1, 0.5, 0.9)
DENSE_BLOCK_MAX = 1024  # blocks this small: exact dense eigendecomposition (graph reuse)


def _by_name(op: HessianOperator, flat_or_list) -> dict[str, torch.Tensor]:
    parts = op.unflatten(flat_or_list) if isinstance(flat_or_list, torch.Tensor) else flat_or_list
    return dict(zip(op.param_names, parts, strict=True))


def reduce_per_unit(
    units: Sequence[Unit], tensors: dict[str, torch.Tensor], how: Callable = torch.sum
) -> np.ndarray:
    """``how`` of each unit's entries (float64). With ``torch.sum`` these add up to the sum
    over all covered entries."""
    return np.array([float(how(u.gather(tensors).double())) for u in units])


def _group_se(sums: list[np.ndarray], sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over probes and its standard error from group sums (see hutchinson.py)."""
    s = np.stack(sums)
    w = np.asarray(sizes, dtype=float)[:, None]
    k = w.sum()
    mean = s.sum(axis=0) / k
    if len(sums) < 2:
        return mean, np.full_like(mean, np.nan)
    var = np.clip((s**2 / w).sum(axis=0) - k * mean**2, 0.0, None) / (len(sums) - 1)
    return mean, np.sqrt(var / k)


def _top_block_eig(model, batches, unit, method, dtype, max_tokens, seed) -> float:
    op = HessianOperator(
        model, batches, list(unit.slices), method=method, dtype=dtype, max_tokens=max_tokens
    )
    if op.n <= DENSE_BLOCK_MAX:
        dense = op.matmat(torch.eye(op.n, dtype=op.dtype)).double()
        return float(torch.linalg.eigvalsh((dense + dense.T) / 2)[-1])
    return float(top_eigenpairs(op, k=1, which="LA", seed=seed, tol=1e-4).eigenvalues[0])


def compute_unit_features(
    model: torch.nn.Module,
    batches: Sequence[Batch],
    *,
    loss_name: str,
    granularity: str = "neuron",
    params: ParamSpec = None,
    num_probes: int = 16,
    seed: int = 0,
    method: str = "rev",
    dtype: torch.dtype | None = None,
    probes_per_graph: int = 8,
    max_tokens: int | None = None,
    activation_batches: Sequence[Batch] | None = None,
    fisher: bool = True,
    top_eig: bool | None = None,
    progress: Progress = None,
) -> UnitFeatures:
    """One row per unit of ``granularity`` with the statistics listed in DESIGN.md §4.

    Columns: hdiag_sum(+_se), hdiag_mean(+_se), hdiag_max, hdiag_q10/q50/q90, obd(+_se)
    (½·Σ h_ii·w_i²), fisher_sum, grad_norm, radial_grad (g·w), weight_rms, act_sparsity,
    n_params, and for tensor units top_eig (``top_eig=None`` means "only at tensor granularity").
    ``activation_batches`` defaults to ``batches``.
    """
    if not loss_name:
        raise CurvatureError("loss_name must be a non-empty string")
    op = HessianOperator(
        model,
        batches,
        params,
        method=method,
        dtype=dtype,
        probes_per_graph=probes_per_graph,
        max_tokens=max_tokens,
    )
    units = enumerate_units(op.model, granularity, params)
    weights = _by_name(op, [p.detach() for p in op.params])
    w_sq_half = {n: 0.5 * w * w for n, w in weights.items()}
    group_sums: list[np.ndarray] = []
    group_obd: list[np.ndarray] = []
    group_sizes: list[int] = []

    def on_group(acc: list[torch.Tensor], size: int) -> None:
        named = _by_name(op, acc)
        group_sums.append(reduce_per_unit(units, named))
        group_obd.append(reduce_per_unit(units, {n: a * w_sq_half[n] for n, a in named.items()}))
        group_sizes.append(size)

    _emit(progress, f"[{loss_name}] hutchinson: {num_probes} probes, {len(units)} units")
    diag = hutchinson_diagonal(
        op, num_probes, seed, on_group=on_group, entry_stderr=False, progress=progress
    )
    hdiag = _by_name(op, diag.estimate)
    sums, sums_se = _group_se(group_sums, group_sizes)
    obd, obd_se = _group_se(group_obd, group_sizes)
    n_params = np.array([float(u.gather(weights).numel()) for u in units])

    cols: dict[str, np.ndarray] = {
        "hdiag_sum": sums,
        "hdiag_sum_se": sums_se,
        "hdiag_mean": sums / n_params,
        "hdiag_mean_se": sums_se / n_params,
        "hdiag_max": reduce_per_unit(units, hdiag, torch.max),
    }
    qs = np.array(
        [
            torch.quantile(
                u.gather(hdiag).double(), torch.tensor(QUANTILES, dtype=torch.float64)
            ).numpy()
            for u in units
        ]
    )
    for j, q in enumerate(QUANTILES):
        cols[f"hdiag_q{round(q * 100)}"] = qs[:, j]
    cols["obd"], cols["obd_se"] = obd, obd_se
    _emit(progress, f"[{loss_name}] gradient")
    grad = _by_name(op, op.gradient())
    cols["grad_norm"] = np.sqrt(reduce_per_unit(units, {n: g * g for n, g in grad.items()}))
    # g_u · w_u: the loss's first-order change when the unit's weights are scaled (a
    # neuron's row and bias scale its pre-activation). A first-order baseline, not curvature.
    cols["radial_grad"] = reduce_per_unit(units, {n: g * weights[n] for n, g in grad.items()})
    if fisher:
        _emit(progress, f"[{loss_name}] empirical Fisher")
        fd = fisher_diagonal(op.model, op.batches, op.param_names, dtype=op.dtype)
        cols["fisher_sum"] = reduce_per_unit(units, _by_name(op, fd.estimate))
    else:
        cols["fisher_sum"] = np.full(len(units), np.nan)
    cols["weight_rms"] = np.sqrt(
        reduce_per_unit(units, {n: w * w for n, w in weights.items()}) / n_params
    )
    _emit(progress, f"[{loss_name}] activation sparsity")
    act_batches = op.batches if activation_batches is None else list(activation_batches)
    cols["act_sparsity"] = activation_sparsity(op.model, act_batches, units)
    cols["n_params"] = n_params
    matvecs = diag.num_matvecs
    if top_eig if top_eig is not None else granularity == "tensor":
        if granularity != "tensor":
            raise CurvatureError(f"top_eig is defined for tensor units, not {granularity!r}")
        eigs = []
        for i, u in enumerate(units):
            _emit(progress, f"[{loss_name}] top eigenvalue {i + 1}/{len(units)}: {u.id}")
            eigs.append(_top_block_eig(op.model, op.batches, u, method, op.dtype, None, seed))
        cols["top_eig"] = np.array(eigs)
    meta = {
        "loss": loss_name,
        "granularity": granularity,
        "probes": num_probes,
        "probe_groups": diag.num_groups,
        "seed": seed,
        "method": method,
        "dtype": str(op.dtype).replace("torch.", ""),
        "num_matvecs": matvecs,
        "probes_per_graph": probes_per_graph,
        "micro_batches": len(op.batches),
        "num_tokens": op.num_tokens,
        "n_params_selected": op.n,
        "units": len(units),
        "fisher": "per-sequence empirical" if fisher else "off",
        "data": "real",
    }
    names = list(cols)
    values = np.column_stack([cols[c] for c in names]).astype(float)
    return UnitFeatures([u.id for u in units], names, values, meta)
