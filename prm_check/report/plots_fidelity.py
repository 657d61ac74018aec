"""The synthetic-vs-real figure and the ``prm-check compare`` table.

Drawn with an explicit Agg canvas (no pyplot, no global backend switch), so it is safe in
the pytest plugin and headless CI; written atomically so a crash never leaves a half PNG.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from prm_check.errors import DataError
from prm_check.fidelity import FidelityReport, compare_features

FILENAME = "synthetic_vs_real.png"
DPI = 150
MAX_PANELS = 16  # beyond this, the worst-fitting features (largest KS statistic) are shown
PANEL_COLS = 4


def plot_synthetic_vs_real(report_or_inputs: Any, path: str | os.PathLike) -> Path:
    """Write ``synthetic_vs_real.png``: per-feature histograms overlaid, correlation
    matrices side by side. ``report_or_inputs`` is a :class:`FidelityReport`, a
    ``(synthetic, real)`` pair or a mapping with ``"synthetic"`` and ``"real"`` (compared
    with default thresholds). ``path`` is the PNG file, or a directory to put it in."""
    report = _as_report(report_or_inputs)
    out = Path(path)
    if out.is_dir():
        out = out / FILENAME
    if not out.parent.is_dir():
        raise DataError(f"cannot write figure: directory {out.parent} does not exist")

    feats = list(report.features)
    idx = list(range(len(feats)))
    shown_note = ""
    if len(idx) > MAX_PANELS:
        idx = sorted(idx, key=lambda j: -feats[j].ks_statistic)[:MAX_PANELS]
        shown_note = f" (the {MAX_PANELS} worst of {len(feats)} features by KS)"
    feat_rows = math.ceil(len(idx) / PANEL_COLS)
    fig = Figure(figsize=(3.6 * PANEL_COLS, 2.6 * feat_rows + 5.5))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(feat_rows + 2, PANEL_COLS, height_ratios=[1] * feat_rows + [1, 1])
    name = report.synthetic_name
    verdict = "PASS" if report.passed else "FAIL"
    for k, j in enumerate(idx):
        ax = fig.add_subplot(grid[k // PANEL_COLS, k % PANEL_COLS])
        _feature_panel(ax, report, j, name, legend=k == 0)
    for pos, (mat, title) in enumerate(
        (
            (report.real_corr, "real: correlation"),
            (report.synthetic_corr, f"synthetic ({name}): correlation"),
        )
    ):
        ax = fig.add_subplot(grid[feat_rows:, 2 * pos : 2 * pos + 2])
        im = ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(title, fontsize=9)
        _corr_ticks(ax, report.columns)
        fig.colorbar(im, ax=ax, shrink=0.8)
    failed = ", ".join(report.failed()[:6]) + (" ..." if len(report.failed()) > 6 else "")
    fig.suptitle(
        f"synthetic ({name}, n={report.n_synthetic}) vs real (n={report.n_real}): {verdict}"
        + (f" - failed: {failed}" if failed else "")
        + shown_note,
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    _save_atomic(fig, out)
    return out


def format_fidelity_table(report: FidelityReport | Mapping[str, Any]) -> str:
    """Plain-text table of every measure and verdict, for ``prm-check compare``.

    Takes a :class:`FidelityReport` or its ``as_dict()`` as read back from results.json.
    """
    d = report.as_dict() if isinstance(report, FidelityReport) else report
    try:
        measures = list(d["measures"])
        syn, real, verdict = d["synthetic"], d["real"], str(d["verdict"]).upper()
        rows = [
            (str(m["name"]), _fmt(m["value"]), f"{m['op']} {m['threshold']:g}", _word(m["passed"]))
            for m in measures
        ]
    except (KeyError, TypeError) as e:
        raise DataError(f"not a fidelity report (missing {e})") from None
    w = max([len("measure"), *(len(r[0]) for r in rows)])
    head = (
        f"fidelity: synthetic {syn.get('name', '?')!r} (n={syn.get('n_units')}, data=synthetic)"
        f" vs real (n={real.get('n_units')}, data=real): {verdict}"
    )
    lines = [head, f"{'measure':<{w}}  {'value':>10}  {'threshold':<10}  verdict"]
    lines += [f"{a:<{w}}  {b:>10}  {c:<10}  {v}" for a, b, c, v in rows]
    n_failed = sum(1 for m in measures if m["passed"] is False)
    n_na = sum(1 for m in measures if m["passed"] is None)
    lines.append(f"failed: {n_failed}, not evaluated: {n_na}, measures: {len(rows)}")
    return "\n".join(lines)


def _feature_panel(ax: Any, report: FidelityReport, j: int, name: str, legend: bool) -> None:
    r = report.real_std[:, j]
    s = report.synthetic_std[:, j]
    # 0.5-99.5 percentiles of each side: heavy tails would squash the bulk into one bin, and
    # taking them per side keeps a small synthetic sample's outliers on the plot
    (r_lo, r_hi), (s_lo, s_hi) = np.percentile(r, [0.5, 99.5]), np.percentile(s, [0.5, 99.5])
    lo, hi = min(r_lo, s_lo), max(r_hi, s_hi)
    bins = np.linspace(lo, hi, 31) if hi > lo else 30
    ax.hist(r, bins=bins, density=True, alpha=0.5, label="real", color="tab:blue")
    ax.hist(s, bins=bins, density=True, histtype="step", lw=1.5, label=f"synthetic ({name})",
            color="tab:red")  # fmt: skip
    f = report.features[j]
    ok = all(report.measure(f"{m}:{f.column}").passed is not False for m in ("ks", "wasserstein"))
    ax.set_title(
        f"{f.column}\nKS p(adj)={f.ks_pvalue_adjusted:.2g} W1={f.wasserstein:.2f} "
        + ("pass" if ok else "FAIL"),
        fontsize=8,
        color="black" if ok else "tab:red",
    )
    ax.set_xlabel("standardised by real mean/SD (0.5-99.5 pct)", fontsize=7)
    ax.tick_params(labelsize=7)
    if legend:
        ax.legend(fontsize=6)


def _corr_ticks(ax: Any, columns: tuple[str, ...]) -> None:
    if len(columns) <= 20:
        ticks = range(len(columns))
        ax.set_xticks(ticks, labels=columns, rotation=90, fontsize=6)
        ax.set_yticks(ticks, labels=columns, fontsize=6)
    else:
        ax.set_xticks([])
        ax.set_yticks([])


def _save_atomic(fig: Figure, out: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=DPI)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _as_report(obj: Any) -> FidelityReport:
    if isinstance(obj, FidelityReport):
        return obj
    if isinstance(obj, Mapping) and "synthetic" in obj and "real" in obj:
        extra = {k: v for k, v in obj.items() if k not in ("synthetic", "real")}
        return compare_features(obj["synthetic"], obj["real"], **extra)
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return compare_features(obj[0], obj[1])
    raise DataError(
        "plot_synthetic_vs_real needs a FidelityReport, a (synthetic, real) pair or a mapping"
        f" with 'synthetic' and 'real'; got {type(obj).__name__}"
    )


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _word(passed: bool | None) -> str:
    return "n/a" if passed is None else ("pass" if passed else "FAIL")
