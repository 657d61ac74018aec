"""The noise sweep: groups × levels × draws, each cell an independent unit of work.

Every cell perturbs one group's entries (``perturb.perturbed``), measures held-out
perplexity, every attack's scores on the member / non-member *eval* halves and canary
exposure, then restores the weights and checks the restoration by hashing. Deltas are
against the clean model; 95 % CIs come from a paired bootstrap over records (the same
records for clean and perturbed) and over draws, so "ΔAUC −0.01 [−0.03, 0.01]" says
whether the noise moved the attack beyond the AUC's own sampling error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata

from prm_check.errors import DataError
from prm_check.perturb import cell_seed, perturbed, state_digest
from prm_check.privacy.exposure import summarise_exposures
from prm_check.privacy.losses import losses_of_token_ids
from prm_check.privacy.metrics import roc_auc, tpr_at_fpr
from prm_check.privacy.scores import mope_scores, scores_from_losses

MOPE_SIGMA = 0.005  # absolute weight-noise sd of the MoPe attacker (tiny-OPT weights: sd ~0.02-0.1)
MOPE_DRAWS = 1  # attacker noise draws per MoPe measurement: each a forward over all eval records
# MoPe runs on the first noise draw of each (group, level) only: it costs as much as every
# other metric of a cell together, and one measurement per (group, level) gives its AUC
# with a CI over records (the summary's n_draws says so).
MOPE_SWEEP_DRAWS = 1


@dataclass(frozen=True)
class EvalSet:
    """Pre-tokenised eval data, shared by every cell (tokenised once)."""

    member_ids: list[list[int]]
    nonmember_ids: list[list[int]]
    member_texts: list[str]
    nonmember_texts: list[str]
    ppl_ids: list[list[int]]
    canary_ids: list[list[int]]
    canary_reps: list[int]
    reference_ids: list[list[int]]
    pad_id: int
    max_tokens: int
    max_length: int
    tokenizer: object = None  # only MoPe re-tokenises (its API takes texts)

    def all_sequences(self) -> list[list[int]]:
        return [
            *self.member_ids,
            *self.nonmember_ids,
            *self.ppl_ids,
            *self.canary_ids,
            *self.reference_ids,
        ]


@dataclass
class CellMeasure:
    """Raw per-record results of one model state; summaries derive from these."""

    scores: dict[str, tuple[np.ndarray, np.ndarray]]  # attack -> (member, non-member)
    ppl_sums: np.ndarray  # per ppl text: summed token loss
    ppl_counts: np.ndarray  # per ppl text: valid targets
    exposure_mean: dict[str, float]

    @property
    def ppl(self) -> float:
        return float(np.exp(self.ppl_sums.sum() / self.ppl_counts.sum()))


def measure(
    model: torch.nn.Module,
    ev: EvalSet,
    *,
    reference_losses: tuple[list[np.ndarray], list[np.ndarray]] | None,
    attacks: Sequence[str],
    mope_seed: int,
) -> CellMeasure:
    """One forward sweep over all eval sequences, then every metric from the losses."""
    losses = losses_of_token_ids(
        model, ev.all_sequences(), pad_id=ev.pad_id, max_tokens=ev.max_tokens
    )
    nm, nn, npl, nc = (
        len(ev.member_ids),
        len(ev.nonmember_ids),
        len(ev.ppl_ids),
        len(ev.canary_ids),
    )
    mem, non = losses[:nm], losses[nm : nm + nn]
    ppl = losses[nm + nn : nm + nn + npl]
    can = losses[nm + nn + npl : nm + nn + npl + nc]
    refs = losses[nm + nn + npl + nc :]
    s_m = scores_from_losses(
        mem,
        ev.member_texts,
        reference_losses=None if reference_losses is None else reference_losses[0],
    )
    s_n = scores_from_losses(
        non,
        ev.nonmember_texts,
        reference_losses=None if reference_losses is None else reference_losses[1],
    )
    scores = {a: (s_m[a], s_n[a]) for a in attacks if a in s_m}
    if "mope" in attacks:
        kw = {
            "sigma": MOPE_SIGMA,
            "n_draws": MOPE_DRAWS,
            "seed": mope_seed,
            "max_length": ev.max_length,
            "max_tokens": ev.max_tokens,
        }
        scores["mope"] = (
            mope_scores(model, ev.tokenizer, ev.member_texts, clean_losses=mem, **kw),
            mope_scores(model, ev.tokenizer, ev.nonmember_texts, clean_losses=non, **kw),
        )
    exposure = summarise_exposures(
        np.array([float(np.sum(x)) for x in can]),
        ev.canary_reps,
        np.array([float(np.sum(x)) for x in refs]),
    )
    return CellMeasure(
        scores=scores,
        ppl_sums=np.array([float(np.sum(x)) for x in ppl]),
        ppl_counts=np.array([x.size for x in ppl], dtype=float),
        exposure_mean={str(r): e.mean_rank_exposure for r, e in exposure.items()},
    )


@dataclass
class Cell:
    group: str
    level: float
    draw: int
    seed: int
    n_params: int
    noise_norm: float
    measure: CellMeasure
    restored: bool
    seconds: float

    def to_dict(self, clean: CellMeasure) -> dict:
        m = self.measure
        auc = {a: roc_auc(*m.scores[a]) for a in m.scores}
        auc0 = {a: roc_auc(*clean.scores[a]) for a in clean.scores}
        tpr = {}
        for a in m.scores:
            t = tpr_at_fpr(*m.scores[a], 0.01)
            tpr[a] = t.tpr if t.defined else None
        return {
            "group": self.group,
            "level": self.level,
            "draw": self.draw,
            "seed": self.seed,
            "n_params": self.n_params,
            "noise_norm": self.noise_norm,
            "ppl": m.ppl,
            "delta_ppl": m.ppl - clean.ppl,
            "rel_delta_ppl": m.ppl / clean.ppl - 1.0,
            "auc": auc,
            "delta_auc": {a: auc[a] - auc0[a] for a in auc},
            "tpr_at_1pct_fpr": tpr,
            "exposure_mean": m.exposure_mean,
            "restored": self.restored,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class GroupTarget:
    """What a group perturbs: entry masks, parameter count and per-parameter noise scales."""

    name: str
    masks: Mapping[str, torch.Tensor]
    n_params: int


@dataclass
class SweepResult:
    clean: CellMeasure
    cells: list[Cell] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)
    draws: int = 0


def run_sweep(
    model: torch.nn.Module,
    ev: EvalSet,
    targets: Sequence[GroupTarget],
    scales: Mapping[str, torch.Tensor],
    levels: Sequence[float],
    draws: int,
    *,
    attacks: Sequence[str],
    reference_losses=None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> SweepResult:
    """Clean measurement, then every (group, level > 0, draw) cell, weights verified after each."""
    params = dict(model.named_parameters())
    digest = state_digest(params)
    t0 = time.perf_counter()
    clean = measure(
        model,
        ev,
        reference_losses=reference_losses,
        attacks=attacks,
        mope_seed=cell_seed("clean", seed),
    )
    result = SweepResult(clean=clean, levels=list(levels), draws=draws)
    todo = [(g, a, d) for g in targets for a in levels if a > 0 for d in range(draws)]
    for i, (target, alpha, draw) in enumerate(todo):
        if target.n_params == 0:
            raise DataError(f"group {target.name!r} is empty; lower q or pick other groups")
        s = cell_seed(target.name, alpha, draw, seed)
        c0 = time.perf_counter()
        cell_attacks = [a for a in attacks if a != "mope" or draw < MOPE_SWEEP_DRAWS]
        with perturbed(model, target.masks, scales, alpha, s) as inj:
            m = measure(
                model,
                ev,
                reference_losses=reference_losses,
                attacks=cell_attacks,
                mope_seed=cell_seed("mope", target.name, alpha, draw, seed),
            )
        restored = state_digest(params) == digest
        if not restored:
            raise DataError(f"weights not restored after cell {target.name}/{alpha}/{draw}")
        result.cells.append(
            Cell(
                target.name,
                float(alpha),
                draw,
                s,
                target.n_params,
                inj.noise_norm,
                m,
                restored,
                time.perf_counter() - c0,
            )
        )
        if progress and (i + 1) % max(1, len(todo) // 10) == 0:
            el = time.perf_counter() - t0
            progress(f"  sweep {i + 1}/{len(todo)} cells, {el:.0f} s elapsed")
    return result


# --- paired bootstrap summaries -------------------------------------------------------


def _auc_rows(member: np.ndarray, nonmember: np.ndarray, im: np.ndarray, inn: np.ndarray):
    """AUC for each bootstrap row of index arrays (Mann-Whitney via ranks, ties ½)."""
    m, n = member[im], nonmember[inn]
    ranks = rankdata(np.concatenate([m, n], axis=1), axis=1)
    n_m, n_n = im.shape[1], inn.shape[1]
    return (ranks[:, :n_m].sum(axis=1) - n_m * (n_m + 1) / 2) / (n_m * n_n)


@dataclass(frozen=True)
class Replicates:
    """Bootstrap replicates of each (group, level) metric delta, shape [n_boot]."""

    values: dict[tuple[str, float, str], np.ndarray]
    point: dict[tuple[str, float, str], float]
    noise_norm: dict[tuple[str, float], float]
    n_draws: dict[tuple[str, float, str], int] = field(default_factory=dict)


def bootstrap_deltas(sweep: SweepResult, n_boot: int, seed: int) -> Replicates:
    """Paired bootstrap over records (shared by clean and perturbed) and over draws."""
    rng = np.random.default_rng(seed)
    clean = sweep.clean
    any_attack = next(iter(clean.scores))
    n_m, n_n = (len(x) for x in clean.scores[any_attack])
    n_ppl = len(clean.ppl_sums)
    im = rng.integers(0, n_m, size=(n_boot, n_m))
    inn = rng.integers(0, n_n, size=(n_boot, n_n))
    ip = rng.integers(0, n_ppl, size=(n_boot, n_ppl))
    clean_auc = {a: _auc_rows(*clean.scores[a], im, inn) for a in clean.scores}
    clean_ppl = np.exp(clean.ppl_sums[ip].sum(1) / clean.ppl_counts[ip].sum(1))
    by_key: dict[tuple[str, float], list[Cell]] = {}
    for c in sweep.cells:
        by_key.setdefault((c.group, c.level), []).append(c)
    values, point, norms, counts = {}, {}, {}, {}
    for (group, level), cells in by_key.items():
        picks: dict[int, np.ndarray] = {}  # resampled draws, one index table per draw count
        norms[(group, level)] = float(np.mean([c.noise_norm for c in cells]))
        per_draw: dict[str, np.ndarray] = {}
        pts: dict[str, list[float]] = {}
        for a in clean.scores:
            have = [c for c in cells if a in c.measure.scores]  # MoPe: first draws only
            if not have:
                continue
            per_draw[f"delta_auc_{a}"] = np.stack(
                [_auc_rows(*c.measure.scores[a], im, inn) - clean_auc[a] for c in have], axis=1
            )
            pts[f"delta_auc_{a}"] = [
                roc_auc(*c.measure.scores[a]) - roc_auc(*clean.scores[a]) for c in have
            ]
        ppl_d = np.stack(
            [
                np.exp(c.measure.ppl_sums[ip].sum(1) / c.measure.ppl_counts[ip].sum(1))
                for c in cells
            ],
            axis=1,
        )
        per_draw["delta_ppl"] = ppl_d - clean_ppl[:, None]
        per_draw["rel_delta_ppl"] = ppl_d / clean_ppl[:, None] - 1.0
        pts["delta_ppl"] = [c.measure.ppl - clean.ppl for c in cells]
        pts["rel_delta_ppl"] = [c.measure.ppl / clean.ppl - 1.0 for c in cells]
        for metric, arr in per_draw.items():
            k = arr.shape[1]
            if k not in picks:
                picks[k] = rng.integers(0, k, size=(n_boot, k))
            values[(group, level, metric)] = np.take_along_axis(arr, picks[k], axis=1).mean(axis=1)
            point[(group, level, metric)] = float(np.mean(pts[metric]))
            counts[(group, level, metric)] = k
    return Replicates(values=values, point=point, noise_norm=norms, n_draws=counts)


def _ci(x: np.ndarray) -> tuple[float, float]:
    lo, hi = np.quantile(x, [0.025, 0.975])
    return float(lo), float(hi)


def summarise(sweep: SweepResult, reps: Replicates) -> list[dict]:
    """Per group × level × metric: mean over draws and its 95 % CI."""
    rows = []
    for (group, level, metric), vals in sorted(reps.values.items()):
        lo, hi = _ci(vals)
        rows.append(
            {
                "group": group,
                "level": level,
                "metric": metric,
                "mean": reps.point[(group, level, metric)],
                "ci_low": lo,
                "ci_high": hi,
                "n_draws": reps.n_draws.get((group, level, metric), sweep.draws),
                "noise_norm": reps.noise_norm[(group, level)],
            }
        )
    return rows


def versus_control(reps: Replicates, group: str = "Wsens", control: str = "control") -> list[dict]:
    """``group`` minus ``control`` per level and metric, at equal α and at equal noise norm.

    Equal α compares groups of equal parameter count and layer mix; equal noise norm
    interpolates the control's response (linear in injected norm, through the clean point)
    at the group's own injected norm, so a difference is not an artefact of energy.
    """
    rows = []
    metrics = sorted({m for (g, _, m) in reps.values if g == group})
    levels = sorted({lv for (g, lv, _) in reps.values if g == group})
    c_levels = sorted({lv for (g, lv, _) in reps.values if g == control})
    if not levels or not c_levels:
        return rows
    c_norms = np.array([0.0] + [reps.noise_norm[(control, lv)] for lv in c_levels])
    for metric in metrics:
        c_curve = np.stack(
            [np.zeros_like(reps.values[(control, c_levels[0], metric)])]
            + [reps.values[(control, lv, metric)] for lv in c_levels],
            axis=1,
        )
        c_point = np.array([0.0] + [reps.point[(control, lv, metric)] for lv in c_levels])
        for level in levels:
            g = reps.values[(group, level, metric)]
            if (control, level, metric) in reps.values:
                d = g - reps.values[(control, level, metric)]
                diff = reps.point[(group, level, metric)] - reps.point[(control, level, metric)]
                rows.append(_vs_row(group, level, metric, diff, d, "equal_alpha"))
            target = reps.noise_norm[(group, level)]
            order = np.argsort(c_norms)
            interp = np.array([np.interp(target, c_norms[order], row[order]) for row in c_curve])
            point = float(np.interp(target, c_norms[order], c_point[order]))
            d = g - interp
            diff = reps.point[(group, level, metric)] - point
            rows.append(_vs_row(group, level, metric, diff, d, "equal_noise_norm"))
    return rows


def _vs_row(group, level, metric, diff, reps, basis) -> dict:
    lo, hi = _ci(reps)
    return {
        "group": group,
        "level": level,
        "metric": metric,
        "diff": float(diff),
        "ci_low": lo,
        "ci_high": hi,
        "separable": bool(lo > 0 or hi < 0),
        "basis": basis,
    }
