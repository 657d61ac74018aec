"""The run's ``index.html`` and the figure set, written so a failure leaves the old report.

Figures are rendered into a temp directory inside the run directory (the slow part, where
interrupts land), then renamed into place one by one, and ``index.html`` is written last
(atomically). A figure whose input section is absent is listed as "not computed" with the
reason. Every string that reaches the page goes through :func:`html.escape`. Images sit
beside the page (they are deliverables in their own right) and are linked relatively, so
the run directory can be copied or served as a whole.
"""

from __future__ import annotations

import html
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prm_check.errors import ReportError
from prm_check.report.plots import (
    FIGURES,
    FigureSkipped,
    auc_metric,
    fidelity_variants,
    ppl_metric,
)
from prm_check.report.store import (
    RESULTS_CSV,
    RESULTS_JSON,
    UNITS_CSV,
    UnitsTable,
    atomic_write_text,
    load_results,
    read_units_csv,
    safe_child,
)
from prm_check.spec.checks import stat_label

INDEX = "index.html"
TMP_PREFIX = ".report-"
STALE_TMP_S = 600  # a temp dir older than this belongs to a report that was killed
Progress = Callable[[str], None] | None

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;font-size:.9em}
th{background:#f3f3f3} .pass{color:#176317;font-weight:bold} .fail{color:#b00;font-weight:bold}
.tag{display:inline-block;padding:0 .4em;border-radius:3px;background:#eef;font-size:.85em}
figure{margin:1.5em 0} img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.9em;color:#444} .muted{color:#777}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _f(v: Any, digits: int = 3) -> str:
    x = _num(v)
    return "n/a" if x is None else f"{x:.{digits}g}"


def _ci(d: Mapping[str, Any] | None, key: str = "mean") -> str:
    """``0.78 [0.74, 0.82]`` from a dict with a value and ci_low / ci_high."""
    if not isinstance(d, Mapping):
        return "n/a"
    lo, hi = d.get("ci_low"), d.get("ci_high")
    ci = f" [{_f(lo)}, {_f(hi)}]" if _num(lo) is not None and _num(hi) is not None else ""
    return _f(d.get(key)) + ci


def _verdict(passed: Any) -> str:
    if passed is None:
        return '<span class="muted">n/a</span>'
    return '<span class="pass">PASS</span>' if passed else '<span class="fail">FAIL</span>'


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], raw: Sequence[int] = ()) -> str:
    """An HTML table; every cell escaped except the columns in ``raw`` (built here)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{c if j in raw else _e(c)}</td>" for j, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _missing(what: str) -> str:
    return f'<p class="muted">{_e(what)}: not computed (section absent from results.json)</p>'


# ---------------------------------------------------------------- sections


def _summary(results: Mapping[str, Any]) -> str:
    run, model = results.get("run", {}), results.get("model") or {}
    env, curv = results.get("environment") or {}, results.get("curvature") or {}
    rows = [
        ("run", run.get("name")),
        ("data", results.get("data")),
        ("profile", run.get("profile", "n/a")),
        ("created", run.get("created", "n/a")),
        ("prm_check version", run.get("prm_check_version", "n/a")),
        ("spec hash", run.get("spec_hash", "n/a")),
        ("model", f"{model.get('source', 'n/a')} ({model.get('variant', 'n/a')})"),
        ("model hash", str(model.get("hash", "n/a"))[:16]),
        ("model parameters", model.get("n_params", "n/a")),
        ("units", f"{curv.get('n_units', 'n/a')} ({curv.get('granularity', 'n/a')})"),
        ("environment", ", ".join(f"{k} {v}" for k, v in env.items()) or "n/a"),
    ]
    return "<h2>Run</h2>" + _table(("field", "value"), rows)


def _baseline(results: Mapping[str, Any]) -> str:
    base = results.get("baseline")
    if not base:
        return "<h2>Baseline</h2>" + _missing("baseline")
    out = [f'<h2>Baseline <span class="tag">{_e(base.get("data", "?"))}</span></h2>']
    out.append(
        f"<p>PPL {_e(_f(base.get('ppl'), 4))} (reference model "
        f"{_e(_f(base.get('ppl_reference'), 4))})</p>"
    )
    rows = []
    for name, a in (base.get("attacks") or {}).items():
        tprs = []
        for fpr, t in (a.get("tpr_at_fpr") or {}).items():
            if t.get("defined", True) and _num(t.get("tpr")) is not None:
                tprs.append(f"@{fpr}: {_ci(t, 'tpr')}")
            else:
                tprs.append(f"@{fpr}: undefined ({t.get('reason', 'too few samples')})")
        rows.append((name, _ci(a, "auc"), "; ".join(tprs) or "n/a"))
    bow = base.get("bow_auc")
    if bow:
        rows.append(("bag-of-words (should be ~0.5)", _ci(bow, "auc"), ""))
    out.append(_table(("attack", "ROC-AUC [95 % CI]", "TPR at FPR [95 % CI]"), rows))
    exp = base.get("exposure") or {}
    if exp:
        out.append(
            _table(
                ("canary repeats", "mean exposure", "min", "max", "n"),
                [
                    (r, _f(v.get("mean")), _f(v.get("min")), _f(v.get("max")), v.get("n"))
                    for r, v in exp.items()
                ],
            )
        )
    return "".join(out)


def _partition(results: Mapping[str, Any]) -> str:
    part = results.get("partition")
    if not part:
        return "<h2>Partition</h2>" + _missing("partition")
    out = [
        f'<h2>Partition <span class="tag">{_e(part.get("data", "?"))}</span></h2>',
        f"<p>rule {_e(part.get('rule'))}, sign {_e(part.get('sign'))}, q = {_e(part.get('q'))}</p>",
        _table(("group", "units"), list((part.get("counts") or {}).items())),
    ]
    evals = part.get("planted_eval") or []
    if evals:
        rank = {"oracle": 2, "baseline": 1, "hessian_rule": 0}
        rows = []
        for p in sorted(
            evals, key=lambda p: (rank.get(p.get("kind"), 3), -(p.get("roc_auc") or 0))
        ):
            tq = (p.get("top_q") or [{}])[0]
            ws = (p.get("wsens") or [{}])[0]
            rows.append(
                (
                    p.get("name"),
                    p.get("kind"),
                    f"{_f(p.get('roc_auc'))} [{_f(p.get('ci_low'))}, {_f(p.get('ci_high'))}]",
                    _f(tq.get("q")),
                    _f(tq.get("precision")),
                    _f(tq.get("recall")),
                    _f(tq.get("lift")),
                    _f(ws.get("lift")) if ws else "n/a",
                )
            )
        out.append("<h3>Planted evaluation (ground truth known)</h3>")
        out.append(
            "<p>A Hessian rule earns its keep only by beating the baselines; the oracle "
            "is the ceiling.</p>"
        )
        finding = (part.get("planted_verdict") or {}).get("finding")
        if finding:
            out.append(f"<p><strong>Finding:</strong> {_e(finding)}</p>")
        hdr = (
            "score",
            "kind",
            "ROC-AUC planted vs rest [95% CI]",
            "q",
            "precision@q",
            "recall@q",
            "lift@q",
            "Wsens lift@q",
        )
        out.append(_table(hdr, rows))
    return "".join(out)


def _sweep(results: Mapping[str, Any]) -> str:
    sweep = results.get("sweep")
    if not sweep:
        return "<h2>Noise sweep</h2>" + _missing("sweep")
    out = [
        f'<h2>Noise sweep <span class="tag">{_e(sweep.get("data", "?"))}</span></h2>',
        f"<p>levels {_e(sweep.get('levels'))}, {_e(sweep.get('draws'))} draws per level; "
        "mean [95 % CI].</p>",
    ]
    try:
        metrics = [auc_metric(sweep), ppl_metric(sweep)]
    except FigureSkipped as exc:
        return "".join(out) + f'<p class="muted">{_e(exc)}</p>'
    index = {(r.get("group"), r.get("level"), r.get("metric")): r for r in sweep.get("summary", [])}
    vs = {
        (r.get("level"), r.get("metric")): r
        for r in sweep.get("versus_control", [])
        if r.get("group") == "Wsens" and r.get("basis", "equal_alpha") == "equal_alpha"
    }
    rows = []
    for level in sweep.get("levels", []):
        if _num(level) == 0:
            continue
        row: list[Any] = [level]
        for m in metrics:
            row += [_ci(index.get(("Wsens", level, m))), _ci(index.get(("control", level, m)))]
        d = vs.get((level, metrics[0]))
        sep = d.get("separable") if d else None
        row += [_ci(d, "diff") if d else "n/a", "n/a" if sep is None else ("yes" if sep else "no")]
        rows.append(row)
    hdr = [
        "α",
        f"Wsens {metrics[0]}",
        f"control {metrics[0]}",
        f"Wsens {metrics[1]}",
        f"control {metrics[1]}",
        f"Wsens − control {metrics[0]}",
        "separable",
    ]
    out.append(_table(hdr, rows))
    out.append("<p>separable: the 95 % CI of Wsens − control (equal α, paired) excludes 0.</p>")
    return "".join(out)


def _checks(results: Mapping[str, Any]) -> str:
    checks = results.get("checks")
    if not checks:
        return "<h2>Checks</h2>" + _missing("checks")
    n_pass = sum(1 for c in checks if c.get("passed"))
    rows = [
        (
            c.get("id"),
            f"{stat_label(str(c.get('metric')), c.get('stat') or 'mean')} {c.get('op')} "
            f"{c.get('value')}",
            _f(c.get("observed")),
            _verdict(c.get("passed")),
        )
        for c in checks
    ]
    return f"<h2>Checks: {n_pass} of {len(checks)} passed</h2>" + _table(
        ("check", "hypothesis", "observed", "verdict"), rows, raw=(3,)
    )


def _embedding(results: Mapping[str, Any]) -> str:
    emb = results.get("embedding")
    if not emb:
        return "<h2>Embedding</h2>" + _missing("embedding")
    null, refit = emb.get("silhouette_null") or {}, emb.get("silhouette_refit_null") or {}
    rows = [
        ("clustering", f"{emb.get('method')} with k = {emb.get('k')}"),
        ("silhouette (standardised feature space)", _f(emb.get("silhouette"))),
        (
            "label-shuffle null: mean / p95",
            f"{_f(null.get('mean'))} / {_f(null.get('p95'))} ({null.get('n_perm')} shuffles)",
        ),
        ("ARI clusters vs W-groups", _f(emb.get("ari_vs_groups"))),
        (
            "units",
            f"{emb.get('n_units', len(emb.get('umap') or []))}"
            + (
                f" (silhouettes on a {emb.get('silhouette_rows')}-unit subsample)"
                if emb.get("subsampled")
                else ""
            ),
        ),
    ]
    if refit:
        rows.insert(
            3,
            (
                "column-permutation refit null: mean / p95",
                f"{_f(refit.get('mean'))} / {_f(refit.get('p95'))} ({refit.get('n_perm')} refits)",
            ),
        )
    dropped = emb.get("dropped_columns") or []
    if dropped:
        rows.append(
            ("dropped columns", ", ".join(f"{d['column']} ({d['reason']})" for d in dropped))
        )
    return f'<h2>Embedding <span class="tag">{_e(emb.get("data", "?"))}</span></h2>' + _table(
        ("measure", "value"), rows
    )


def _fidelity(results: Mapping[str, Any]) -> str:
    fid = results.get("fidelity")
    if not fid:
        return "<h2>Synthetic vs real fidelity</h2>" + _missing("fidelity")
    rows = []
    for name, rep in fidelity_variants(fid).items():
        verdict = rep.get("verdict")
        failed = ", ".join(map(str, rep.get("failed") or [])) or "none"
        rows.append(
            (
                name,
                _verdict(None if verdict is None else verdict == "pass"),
                failed,
                ", ".join(map(str, rep.get("not_evaluated") or [])) or "none",
            )
        )
    return "<h2>Synthetic vs real fidelity</h2>" + _table(
        ("synthetic variant", "verdict", "failed measures", "not evaluated"), rows, raw=(1,)
    )


def _figures(done: Sequence[str], skipped: Mapping[str, str], notes: Mapping[str, str]) -> str:
    out = ["<h2>Figures</h2>"]
    captions = {name: caption for name, (_, caption) in FIGURES.items()}
    for name in done:
        caption = captions.get(name, "Synthetic vs real, drawn at run time.")
        note = f" <span class='muted'>{_e(notes[name])}</span>" if name in notes else ""
        out.append(
            f'<figure id="{_e(name)}"><img src="{_e(name)}" alt="{_e(name)}">'
            f"<figcaption><b>{_e(name)}</b>: {_e(caption)}{note}</figcaption></figure>"
        )
    if skipped:
        out.append("<h3>Not computed</h3>")
        out.append(_table(("figure", "reason"), list(skipped.items())))
    return "".join(out)


def _links(run_dir: Path) -> str:
    items = []
    for name in (RESULTS_JSON, RESULTS_CSV, UNITS_CSV):
        if (run_dir / name).exists():
            items.append(f'<li><a href="{_e(name)}">{_e(name)}</a></li>')
        else:
            items.append(f'<li class="muted">{_e(name)} (missing)</li>')
    return "<h2>Files</h2><ul>" + "".join(items) + "</ul>"


def render_index(
    run_dir: Path,
    results: Mapping[str, Any],
    done: Sequence[str],
    skipped: Mapping[str, str],
    notes: Mapping[str, str] | None = None,
) -> str:
    """The whole page as a string (pure: writes nothing)."""
    name = results.get("run", {}).get("name", "?")
    label = results.get("data", "?")
    body = [
        f"<h1>prm_check report: {_e(name)} <span class='tag'>{_e(label)}</span></h1>",
        _summary(results),
        _baseline(results),
        _partition(results),
        _sweep(results),
        _checks(results),
        _embedding(results),
        _fidelity(results),
        _figures(done, skipped, notes or {}),
        _links(run_dir),
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>prm_check: {_e(name)} ({_e(label)})</title><style>{CSS}</style></head>"
        "<body>" + "\n".join(body) + "</body></html>\n"
    )


# ---------------------------------------------------------------- writing


def _load_units(run_dir: Path, results: Mapping[str, Any]) -> UnitsTable | None:
    name = (results.get("curvature") or {}).get("units_csv") or UNITS_CSV
    path = safe_child(run_dir, name)
    return read_units_csv(run_dir, name) if path.exists() else None


MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError)


def _malformed(run_dir: Path, what: str, exc: Exception) -> ReportError:
    return ReportError(
        f"{run_dir / RESULTS_JSON}: cannot write {what}: malformed input "
        f"({type(exc).__name__}: {exc})"
    )


def run_time_figures(run_dir: Path, results: Mapping[str, Any]) -> list[str]:
    """Fidelity figures the run drew itself (listed in ``fidelity.figures``, present on disk).

    They need the synthetic and real feature tables, which results.json does not hold, so
    a report keeps them; without them ``synthetic_vs_real.png`` is drawn from the measures.
    """
    figures = (results.get("fidelity") or {}).get("figures") or {}
    names = []
    for value in figures.values() if isinstance(figures, Mapping) else []:
        name = Path(str(value)).name
        if name.endswith(".png") and name not in names:
            try:
                if safe_child(run_dir, name).is_file():
                    names.append(name)
            except ReportError:
                continue
    return names


def write_report(run_dir: Path, results: dict[str, Any], progress: Progress = None) -> Path:
    """Draw every figure the results support and write ``index.html``; returns its path.

    A malformed section raises :class:`ReportError` and leaves the previous report as it was.
    """
    run_dir = Path(run_dir)
    say = progress or (lambda _msg: None)
    units = _load_units(run_dir, results)
    done: list[str] = []
    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}
    kept = run_time_figures(run_dir, results)
    for stale in run_dir.glob(f"{TMP_PREFIX}*"):  # left by a killed report (one writer per dir)
        if stale.is_dir() and time.time() - stale.stat().st_mtime > STALE_TMP_S:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=run_dir))
    try:
        for name, (plot, _) in FIGURES.items():
            if name in kept:  # drawn at run time from feature tables results.json lacks
                done.append(name)
                notes[name] = "(drawn at run time from the feature tables; kept as is)"
                continue
            t0 = time.perf_counter()
            try:
                plot(results, safe_child(tmp, name), units)
            except FigureSkipped as exc:
                skipped[name] = str(exc)
                say(f"report: {name} not computed: {exc}")
                continue
            except MALFORMED as exc:
                raise _malformed(run_dir, name, exc) from exc
            done.append(name)
            say(f"report: {name} ({time.perf_counter() - t0:.1f} s)")
        for name in kept:
            if name not in done:
                done.append(name)
                notes[name] = "(drawn at run time; kept as is)"
        try:
            page = render_index(run_dir, results, done, skipped, notes)
        except MALFORMED as exc:
            raise _malformed(run_dir, "index.html", exc) from exc
        for name in done:
            if (tmp / name).exists():
                os.replace(tmp / name, safe_child(run_dir, name))
        index = atomic_write_text(safe_child(run_dir, INDEX), page)
        for name in skipped:  # a stale figure from an older report must not linger
            stale = safe_child(run_dir, name)
            if stale.exists():
                stale.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"report: wrote {index}")
    return index


def regenerate_report(run_dir: Path, progress: Progress = None) -> Path:
    """Rebuild every figure and ``index.html`` from results.json (+ units.csv) alone."""
    return write_report(Path(run_dir), load_results(Path(run_dir)), progress=progress)
