"""One function per report figure, each drawn only from what results.json / units.csv hold.

Every ``plot_xxx(results, path, units=None) -> Path`` writes one 150 dpi PNG atomically and
returns its path, or raises :class:`FigureSkipped` (with the reason) when the section it
needs is absent, so the page can say "not computed" instead of inventing a picture. Titles
start with the section's ``data`` label (real / synthetic). Explicit Agg canvases (no
pyplot state) keep this safe inside pytest and headless CI.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from prm_check.report.store import UnitsTable, atomic_write_bytes
from prm_check.units_fmt import format_bytes

DPI = 150
GROUP_ORDER = ("Wfunc", "Wsens", "Wboth", "Wnone", "control")
GROUP_COLORS = {
    "Wfunc": "tab:blue",
    "Wsens": "tab:red",
    "Wboth": "tab:purple",
    "Wnone": "0.6",
    "control": "black",
}
KEY_STATS = ("obd", "hdiag_sum", "fisher_sum", "grad_norm", "act_sparsity")


class FigureSkipped(Exception):
    """The figure's input section is absent; the message says which (shown as "not computed")."""


# ---------------------------------------------------------------- helpers


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return atomic_write_bytes(Path(path), buf.getvalue())


def _section(results: Mapping[str, Any], key: str) -> dict[str, Any]:
    sec = results.get(key)
    if not sec:
        raise FigureSkipped(f"results.json has no '{key}' section")
    return sec


def _label(results: Mapping[str, Any], sec: Mapping[str, Any] | None = None) -> str:
    """The provenance word for a title: the section's ``data``, else the run's."""
    value = (sec or {}).get("data", results.get("data", "unlabelled"))
    return value if isinstance(value, str) else "unlabelled"


def _title(results: Mapping[str, Any], sec: Mapping[str, Any] | None, text: str) -> str:
    """``[real] text - run NAME``, wrapped so long run names are not clipped."""
    import textwrap

    name = str(results.get("run", {}).get("name", "?"))
    name = name if len(name) <= 60 else name[:57] + "..."
    return textwrap.fill(f"[{_label(results, sec)}] {text} - run {name}", width=80)


def _group_color(group: str) -> str:
    return GROUP_COLORS.get(group, "tab:green")


def _ordered_groups(groups: Sequence[str]) -> list[str]:
    known = [g for g in GROUP_ORDER if g in groups]
    return known + sorted(g for g in set(groups) if g not in GROUP_ORDER)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _summary_rows(sweep: Mapping[str, Any], metric: str) -> dict[str, list[dict[str, Any]]]:
    """Summary entries of one metric, per group, sorted by level."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in sweep.get("summary", []):
        if row.get("metric") == metric and row.get("group") not in (None, "none"):
            out.setdefault(row["group"], []).append(row)
    return {g: sorted(rows, key=lambda r: _num(r.get("level"))) for g, rows in out.items()}


def _pick_metric(sweep: Mapping[str, Any], prefer: Sequence[str], prefix: str) -> str:
    names = {r.get("metric") for r in sweep.get("summary", [])}
    for name in prefer:
        if name in names:
            return name
    fallback = sorted(n for n in names if isinstance(n, str) and n.startswith(prefix))
    if not fallback:
        raise FigureSkipped(f"sweep summary has no '{prefix}*' metric")
    return fallback[0]


def ppl_metric(sweep: Mapping[str, Any]) -> str:
    return _pick_metric(sweep, ("delta_ppl", "rel_delta_ppl"), "delta_ppl")


def auc_metric(sweep: Mapping[str, Any]) -> str:
    return _pick_metric(sweep, ("delta_auc_loss",), "delta_auc_")


def _metric_label(metric: str) -> str:
    if metric == "delta_ppl":
        return "ΔPPL (perplexity, absolute)"
    if metric == "rel_delta_ppl":
        return "ΔPPL / PPL (relative)"
    if metric.startswith("delta_auc_"):
        return f"ΔAUC, {metric[len('delta_auc_') :]} attack (ROC-AUC units)"
    return metric


def _ci(rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = np.array([_num(r.get("mean")) for r in rows])
    lo = np.array([_num(r.get("ci_low")) for r in rows])
    hi = np.array([_num(r.get("ci_high")) for r in rows])
    return mean, np.where(np.isfinite(lo), lo, mean), np.where(np.isfinite(hi), hi, mean)


def _symlog_if_wide(ax: Any, values: np.ndarray, axis: str) -> None:
    """Symlog when values span > 2 decades (Wfunc noise can blow PPL up by 100x)."""
    v = np.abs(values[np.isfinite(values) & (values != 0)])
    if v.size and v.max() / max(np.median(v), 1e-300) > 100:
        getattr(ax, f"set_{axis}scale")("symlog", **{"linthresh": float(np.median(v))})


def _umap_xy(results: Mapping[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    emb = _section(results, "embedding")
    xy = np.asarray(emb.get("umap") or [], dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) == 0:
        raise FigureSkipped("embedding section holds no 2-D UMAP coordinates")
    return emb, xy


# ---------------------------------------------------------------- figures


def plot_umap_visualization(
    results: Mapping[str, Any], path: Path, units: UnitsTable | None = None
) -> Path:
    """UMAP of the standardised unit features coloured by W-group (control and planted ringed)."""
    emb, xy = _umap_xy(results)
    if units is None or not units.has("group"):
        raise FigureSkipped("units.csv with a 'group' column is needed to colour by group")
    if len(units) != len(xy):
        raise FigureSkipped(f"units.csv has {len(units)} rows but UMAP has {len(xy)} points")
    groups = np.array(units.column("group"))
    fig = _new_figure(7.5, 6.2)
    ax = fig.add_subplot()
    for g in _ordered_groups(list(groups)):
        m = groups == g
        small = g == "Wnone"
        ax.scatter(
            xy[m, 0],
            xy[m, 1],
            s=4 if small else 10,
            c=_group_color(g),
            alpha=0.35 if small else 0.85,
            lw=0,
            label=f"{g} (n={int(m.sum())})",
        )
    for col, marker, color, name in (
        ("control", "o", "black", "random control"),
        ("planted", "s", "tab:orange", "planted (ground truth)"),
    ):
        if units.has(col):
            m = units.boolean(col)
            if m.any():
                ax.scatter(
                    xy[m, 0],
                    xy[m, 1],
                    s=22,
                    facecolors="none",
                    edgecolors=color,
                    marker=marker,
                    lw=0.7,
                    label=f"{name} (n={int(m.sum())})",
                )
    ax.set_xlabel("UMAP 1 (arbitrary units)")
    ax.set_ylabel("UMAP 2 (arbitrary units)")
    ax.set_title(_title(results, emb, "UMAP of unit curvature features"), fontsize=10)
    ax.legend(fontsize=7, markerscale=1.5, loc="best", framealpha=0.85)
    fig.tight_layout()
    return _save(fig, path)


def plot_parameter_clustering(
    results: Mapping[str, Any], path: Path, units: UnitsTable | None = None
) -> Path:
    """Clusters (k-means in feature space) on the UMAP layout, and cluster x group counts."""
    emb, xy = _umap_xy(results)
    clusters = np.asarray(emb.get("clusters") or [], dtype=int)
    if len(clusters) != len(xy):
        raise FigureSkipped("embedding section holds no cluster label per UMAP point")
    has_groups = units is not None and units.has("group") and len(units) == len(xy)
    fig = _new_figure(12.5 if has_groups else 7.5, 5.8)
    ax = fig.add_subplot(1, 2 if has_groups else 1, 1)
    from matplotlib import colormaps

    tab = colormaps["tab10"]
    for c in sorted(set(clusters.tolist())):
        m = clusters == c
        color = "0.7" if c < 0 else tab(c % 10)
        name = "noise" if c < 0 else f"cluster {c}"
        ax.scatter(
            xy[m, 0], xy[m, 1], s=6, c=[color], lw=0, alpha=0.8, label=f"{name} (n={int(m.sum())})"
        )
    ax.set_xlabel("UMAP 1 (arbitrary units)")
    ax.set_ylabel("UMAP 2 (arbitrary units)")
    ax.legend(fontsize=7, markerscale=2)
    null = emb.get("silhouette_null") or {}
    refit = emb.get("silhouette_refit_null") or {}
    ari = emb.get("ari_vs_groups")
    sub = (
        f"{emb.get('method', '?')}, k={emb.get('k', '?')}: silhouette {_fmt(emb.get('silhouette'))}"
        f" (label-shuffle p95 {_fmt(null.get('p95'))}"
        + (f", refit-null p95 {_fmt(refit.get('p95'))}" if refit else "")
        + f"); ARI vs groups {_fmt(ari)}"
    )
    ax.set_title(sub, fontsize=8)
    if has_groups:
        groups = np.array(units.column("group"))
        gnames = _ordered_groups(list(groups))
        cnames = sorted(set(clusters.tolist()))
        counts = np.array(
            [[np.sum((clusters == c) & (groups == g)) for g in gnames] for c in cnames], dtype=float
        )
        frac = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1)
        ax2 = fig.add_subplot(1, 2, 2)
        im = ax2.imshow(frac, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        for i in range(len(cnames)):
            for j in range(len(gnames)):
                ax2.text(
                    j,
                    i,
                    f"{int(counts[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if frac[i, j] > 0.6 else "black",
                )
        ax2.set_xticks(range(len(gnames)), labels=gnames)
        ax2.set_yticks(range(len(cnames)), labels=[f"cluster {c}" for c in cnames])
        ax2.set_xlabel("W-group (partition)")
        ax2.set_title("units per cluster and group (colour: fraction of the group)", fontsize=8)
        fig.colorbar(im, ax=ax2, label="fraction of group's units")
    fig.suptitle(_title(results, emb, "parameter clustering"), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_prm_phase_diagram(
    results: Mapping[str, Any], path: Path, units: UnitsTable | None = None
) -> Path:
    """ΔPPL vs ΔAUC per group, one point per noise level, 95 % CI error bars on both axes."""
    sweep = _section(results, "sweep")
    pm, am = ppl_metric(sweep), auc_metric(sweep)
    ppl, auc = _summary_rows(sweep, pm), _summary_rows(sweep, am)
    fig = _new_figure(8, 6.2)
    ax = fig.add_subplot()
    xs_all = []
    for g in _ordered_groups([g for g in ppl if g in auc]):
        by_level = {_num(r["level"]): r for r in auc[g]}
        pairs = [(r, by_level[_num(r["level"])]) for r in ppl[g] if _num(r["level"]) in by_level]
        pairs = [(p, a) for p, a in pairs if _num(p["level"]) > 0] or pairs
        if not pairs:
            continue
        x, xlo, xhi = _ci([p for p, _ in pairs])
        y, ylo, yhi = _ci([a for _, a in pairs])
        xs_all.append(x)
        ax.errorbar(
            x,
            y,
            xerr=[x - xlo, xhi - x],
            yerr=[y - ylo, yhi - y],
            fmt="",
            color=_group_color(g),
            ls="--" if g == "control" else "-",
            capsize=2,
            lw=1.2,
            elinewidth=0.8,
            label=g,
        )
        # Marker size grows with α; only the largest α is labelled (the rest crowd the origin).
        sizes = 12 + 30 * np.arange(len(pairs)) / max(len(pairs) - 1, 1)
        ax.scatter(x, y, s=sizes, color=_group_color(g), zorder=3)
        for (p, _), xi, yi in list(zip(pairs, x, y, strict=True))[-1:]:
            ax.annotate(
                f"α={_num(p['level']):g}",
                (xi, yi),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
                color=_group_color(g),
            )
    if not xs_all:
        raise FigureSkipped(f"sweep summary has no group with both {pm} and {am}")
    ax.axhline(0, color="0.5", lw=0.6)
    ax.axvline(0, color="0.5", lw=0.6)
    _symlog_if_wide(ax, np.concatenate(xs_all), "x")
    ax.set_xlabel(_metric_label(pm) + " - higher = more function lost")
    ax.set_ylabel(_metric_label(am) + " - lower = less leakage")
    ax.set_title(
        _title(results, sweep, "PRM phase diagram (mean, 95 % CI)"),
        fontsize=10,
    )
    ax.legend(fontsize=8, title="group (bigger marker = larger α)", title_fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_noise_response_curves(
    results: Mapping[str, Any], path: Path, units: UnitsTable | None = None
) -> Path:
    """ΔPPL and ΔAUC against noise level α, one line per group with 95 % CI bands."""
    sweep = _section(results, "sweep")
    metrics = (ppl_metric(sweep), auc_metric(sweep))
    fig = _new_figure(12, 5)
    levels_seen: list[float] = []
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, 2, i + 1)
        rows = _summary_rows(sweep, metric)
        for g in _ordered_groups(list(rows)):
            lv = np.array([_num(r.get("level")) for r in rows[g]])
            m, lo, hi = _ci(rows[g])
            levels_seen.extend(lv.tolist())
            c = _group_color(g)
            ax.plot(
                lv,
                m,
                marker="o",
                color=c,
                ms=3,
                lw=1.3,
                ls="--" if g == "control" else "-",
                label=g,
            )
            ax.fill_between(lv, lo, hi, color=c, alpha=0.15, lw=0)
        ax.axhline(0, color="0.5", lw=0.6)
        pos = [v for v in levels_seen if v > 0]
        if pos and min(levels_seen) <= 0 < max(pos) / min(pos):
            ax.set_xscale("symlog", linthresh=min(pos))
        elif pos and max(pos) / min(pos) > 20:
            ax.set_xscale("log")
        ax.set_xlabel("noise level α (multiples of the reference weight SD)")
        ax.set_ylabel(_metric_label(metric))
        ax.set_title(f"{_metric_label(metric)} vs α", fontsize=9)
        ax.legend(fontsize=7, title="group (band: 95 % CI)", title_fontsize=7)
    fig.suptitle(_title(results, sweep, "noise response curves"), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def group_feature_stats(
    units: UnitsTable, columns: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Per group (control included): mean percentile rank of each column and its 95 % CI.

    Percentile ranks (0-1 over all units) rather than raw means, because curvature
    statistics are heavy-tailed and a few units would dominate a mean; 0.5 = typical.
    Returns (groups, mean, ci_low, ci_high), arrays shaped (n_groups, n_columns).
    """
    from scipy import stats

    groups = np.array(units.column("group"))
    masks = {g: groups == g for g in _ordered_groups(list(groups))}
    if units.has("control"):
        masks["control"] = units.boolean("control")
    names = [g for g in _ordered_groups(list(masks)) if masks[g].any()]
    mean = np.full((len(names), len(columns)), np.nan)
    lo, hi = mean.copy(), mean.copy()
    for j, col in enumerate(columns):
        v = units.numeric(col)
        ok = np.isfinite(v)
        rank = np.full(len(v), np.nan)
        rank[ok] = (stats.rankdata(v[ok]) - 0.5) / ok.sum()
        for i, g in enumerate(names):
            r = rank[masks[g] & ok]
            if r.size:
                mean[i, j] = r.mean()
            if r.size > 1:
                half = stats.t.ppf(0.975, r.size - 1) * r.std(ddof=1) / math.sqrt(r.size)
                lo[i, j], hi[i, j] = mean[i, j] - half, mean[i, j] + half
    return names, mean, lo, hi


def plot_statistical_summary(
    results: Mapping[str, Any], path: Path, units: UnitsTable | None = None
) -> Path:
    """Heat map: per-group mean percentile rank (± 95 % CI) of the key unit statistics."""
    if units is None or not units.has("group"):
        raise FigureSkipped("units.csv with a 'group' column is needed")
    prefixes = ("func", "sens", "nonmember")
    cols = [f"{p}_{s}" for p in prefixes for s in KEY_STATS if units.has(f"{p}_{s}")]
    cols += [c for c in ("weight_rms", "n_params") if units.has(c)]
    if not cols:
        raise FigureSkipped("units.csv has none of the key statistic columns")
    names, mean, lo, hi = group_feature_stats(units, cols)
    fig = _new_figure(max(8, 0.75 * len(cols) + 2.5), 1.0 * len(names) + 3.2)
    ax = fig.add_subplot()
    im = ax.imshow(mean, cmap="RdBu_r", vmin=0, vmax=1, aspect="auto")
    for i in range(len(names)):
        for j in range(len(cols)):
            if np.isfinite(mean[i, j]):
                half = (hi[i, j] - lo[i, j]) / 2
                txt = f"{mean[i, j]:.2f}" + (f"\n±{half:.2f}" if np.isfinite(half) else "")
                ax.text(
                    j,
                    i,
                    txt,
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="white" if abs(mean[i, j] - 0.5) > 0.3 else "black",
                )
    ax.set_xticks(range(len(cols)), labels=cols, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_ylabel("group")
    fig.colorbar(im, ax=ax, label="mean percentile rank over all units (0.5 = typical)")
    units_src = results.get("curvature") or {}
    ax.set_title(
        _title(results, units_src, "per-group unit statistics (mean rank ± 95 % CI)"),
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, path)


def slq_density(
    nodes: Sequence[Sequence[float]],
    weights: Sequence[Sequence[float]],
    grid: np.ndarray,
    sigma: float,
) -> np.ndarray:
    """Gaussian-smoothed SLQ density per probe, shape (n_probes, len(grid))."""
    from scipy.stats import norm

    out = []
    for nd, wt in zip(nodes, weights, strict=True):
        nd, wt = np.asarray(nd, dtype=float), np.asarray(wt, dtype=float)
        out.append((wt[:, None] * norm.pdf(grid[None, :], nd[:, None], sigma)).sum(axis=0))
    return np.array(out)


def plot_hessian_spectrum(
    results: Mapping[str, Any], path: Path, units: UnitsTable | None = None
) -> Path:
    """SLQ spectral density per loss (band: 95 % CI over probes), top eigenvalues marked."""
    curv = _section(results, "curvature")
    losses = {k: v for k, v in (curv.get("losses") or {}).items() if (v or {}).get("slq")}
    if not losses:
        raise FigureSkipped("curvature section holds no SLQ nodes/weights")
    names = [k for k in ("func", "sens", "nonmember") if k in losses] + sorted(
        k for k in losses if k not in ("func", "sens", "nonmember")
    )
    fig = _new_figure(5.2 * len(names), 4.6)
    colors = {"func": "tab:blue", "sens": "tab:red", "nonmember": "tab:green"}
    for i, name in enumerate(names):
        sec = losses[name]
        nodes, weights = sec["slq"]["nodes"], sec["slq"]["weights"]
        flat = np.concatenate([np.asarray(n, dtype=float) for n in nodes])
        top = [v for v in (sec.get("top_eigenvalues") or []) if isinstance(v, (int, float))]
        lo, hi = float(min(flat.min(), *top)), float(max(flat.max(), *top))
        span = max(hi - lo, 1e-12)
        grid = np.linspace(lo - 0.05 * span, hi + 0.05 * span, 800)
        dens = slq_density(nodes, weights, grid, sigma=0.01 * span)
        m = dens.mean(axis=0)
        half = 1.96 * dens.std(axis=0, ddof=1) / math.sqrt(len(dens)) if len(dens) > 1 else 0 * m
        floor = max(m.max() * 1e-6, 1e-300)
        ax = fig.add_subplot(1, len(names), i + 1)
        c = colors.get(name, "tab:purple")
        ax.plot(grid, np.maximum(m, floor), color=c, lw=1.2, label=f"L_{name} density")
        ax.fill_between(
            grid,
            np.maximum(m - half, floor),
            np.maximum(m + half, floor),
            color=c,
            alpha=0.2,
            lw=0,
            label="95 % CI over probes",
        )
        for j, v in enumerate(top):
            ax.axvline(
                v, color="black", ls=":", lw=0.8, label="top eigenvalues" if j == 0 else None
            )
        ax.set_yscale("log")
        ax.set_xlabel("Hessian eigenvalue λ (loss units per parameter²)")
        ax.set_ylabel("spectral density (1/λ units, log scale)")
        ax.set_title(
            f"L_{name}: {len(nodes)} probes, λmax≈{_fmt(max(top) if top else hi)}", fontsize=9
        )
        ax.legend(fontsize=7)
    fig.suptitle(_title(results, curv, "Hessian spectral density (SLQ)"), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_budget(results: Mapping[str, Any], path: Path, units: UnitsTable | None = None) -> Path:
    """Wall time and peak memory per stage as bars, each stage's budget as a red tick."""
    timings = _section(results, "timings")
    stages = [s for s, t in timings.items() if isinstance(t, dict)]
    if not stages:
        raise FigureSkipped("timings section lists no stage")
    fig = _new_figure(12, 0.45 * len(stages) + 2.6)
    panels = (
        ("wall_s", "budget_seconds", "wall-clock time (s, log scale)", 1.0, "{:.1f} s"),
        (
            "peak_rss_bytes",
            "budget_memory_bytes",
            "peak resident memory (MiB, log scale)",
            2**20,
            None,
        ),
    )
    y = np.arange(len(stages))
    for i, (key, bkey, xlabel, scale, fmt) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        vals = np.array([_num(timings[s].get(key)) / scale for s in stages])
        budgets = np.array([_num(timings[s].get(bkey)) / scale for s in stages])
        over = np.isfinite(budgets) & np.isfinite(vals) & (vals > budgets)
        ax.barh(y, np.nan_to_num(vals, nan=0.0), color=np.where(over, "tab:red", "tab:blue"))
        ok = np.isfinite(budgets)
        ax.scatter(
            budgets[ok], y[ok], marker="|", s=400, color="black", lw=2.5, zorder=3, label="budget"
        )
        for yi, s, v in zip(y, stages, vals, strict=True):
            if np.isfinite(v):
                text = fmt.format(v) if fmt else format_bytes(v * scale)
                if timings[s].get("cached"):
                    text += " (cached)"
                ax.text(v, yi, " " + text, va="center", fontsize=7)
            else:
                ax.text(
                    0.01,
                    yi,
                    "not measured",
                    va="center",
                    fontsize=7,
                    color="0.4",
                    transform=ax.get_yaxis_transform(),
                )
        pos = np.concatenate([vals[np.isfinite(vals) & (vals > 0)], budgets[ok & (budgets > 0)]])
        if pos.size:
            ax.set_xscale("log")
            ax.set_xlim(pos.min() / 3, pos.max() * 8)
        ax.set_yticks(y, labels=stages)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        if ok.any():
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(
        _title(results, {"data": "real"}, "time and memory per stage vs budget"), fontsize=10
    )
    fig.tight_layout()
    return _save(fig, path)


def fidelity_variants(fid: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The per-variant reports (legacy, calibrated, ...) of a fidelity section."""
    return {
        k: v for k, v in fid.items() if isinstance(v, Mapping) and isinstance(v.get("verdict"), str)
    }


def plot_fidelity_measures(
    results: Mapping[str, Any], path: Path, units: UnitsTable | None = None
) -> Path:
    """Per-feature KS statistic of each synthetic variant vs real, from results.json alone.

    The full overlay figure (``plots_fidelity.plot_synthetic_vs_real``) needs the feature
    tables, which results.json does not hold; this one draws what it does hold.
    """
    fid = _section(results, "fidelity")
    variants = {k: v for k, v in fidelity_variants(fid).items() if v.get("features")}
    if not variants:
        raise FigureSkipped("fidelity section holds no per-feature measures")
    fig = _new_figure(11, 5.2)
    ax = fig.add_subplot()
    cols = list(dict.fromkeys(f["column"] for v in variants.values() for f in v["features"]))
    width = 0.8 / len(variants)
    for i, (name, v) in enumerate(variants.items()):
        ks = {f["column"]: _num(f.get("ks_statistic")) for f in v["features"]}
        verdict = str(v.get("verdict", "?")).upper()
        heights = [ks.get(c, np.nan) for c in cols]
        label = f"synthetic '{name}': overall {verdict}"
        ax.bar(np.arange(len(cols)) + i * width, heights, width, label=label)
    ax.set_xticks(
        np.arange(len(cols)) + 0.4 - width / 2, labels=cols, rotation=60, ha="right", fontsize=7
    )
    ax.set_ylabel("two-sample KS statistic vs real (0 = same distribution, 1 = disjoint)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(
        "[synthetic vs real] per-feature distribution distance - run "
        f"{results.get('run', {}).get('name', '?')}",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, path)


def _fmt(v: Any) -> str:
    f = _num(v)
    return "n/a" if not math.isfinite(f) else f"{f:.3g}"


PlotFn = Callable[[Mapping[str, Any], Path, "UnitsTable | None"], Path]

FIGURES: dict[str, tuple[PlotFn, str]] = {
    "umap_visualization.png": (
        plot_umap_visualization,
        "Do the W-groups occupy distinct regions? Overlap means curvature features alone"
        " do not separate them.",
    ),
    "parameter_clustering.png": (
        plot_parameter_clustering,
        "Clusters found without group labels: compare the silhouette with its null (p95)"
        " and read the table for whether clusters match groups.",
    ),
    "prm_phase_diagram.png": (
        plot_prm_phase_diagram,
        "The PRM claim holds where Wsens sits below-left of control: more AUC drop for less"
        " PPL rise, with CIs that do not overlap.",
    ),
    "noise_response_curves.png": (
        plot_noise_response_curves,
        "How fast each group's noise moves PPL and AUC; Wsens should bend ΔAUC down earlier"
        " than control.",
    ),
    "statistical_summary.png": (
        plot_statistical_summary,
        "Which statistics set each group apart (red = high rank); Wsens should be high on"
        " sens_* and not on func_* by construction.",
    ),
    "hessian_spectrum.png": (
        plot_hessian_spectrum,
        "Bulk near zero plus a few outliers is typical; negative mass means non-convex"
        " directions; dotted lines are Lanczos top eigenvalues.",
    ),
    "synthetic_vs_real.png": (
        plot_fidelity_measures,
        "How far synthetic 'Hessian features' are from the real ones; large distances mean"
        " the synthetic shortcut cannot stand in for real statistics.",
    ),
    "budget.png": (
        plot_budget,
        "Each stage's time and peak memory against its budget (black tick); a red bar broke it.",
    ),
}
