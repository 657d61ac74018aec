"""Report: figures, page, escaping, atomicity and clear errors on bad results files.

The results dict below is a TEST FIXTURE: made-up, internally consistent numbers that only
exercise the plotting and HTML code. It is written to pytest's tmp_path, never to reports/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from prm_check.errors import ReportError
from prm_check.report.html import regenerate_report, write_report
from prm_check.report.plots import FIGURES
from prm_check.report.store import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_results,
    read_units_csv,
    safe_child,
    write_csv,
)

EVIL = "<script>alert(1)</script>"
STATS = ("hdiag_sum", "obd", "fisher_sum", "grad_norm", "act_sparsity")
GROUPS = ("Wfunc", "Wsens", "Wboth", "Wnone", "control")
LEVELS = (0.0, 0.01, 0.1, 0.3)


def _units(rng: np.random.Generator, n: int = 160) -> tuple[list[str], list[list[object]]]:
    groups = ["Wfunc"] * 10 + ["Wsens"] * 10 + ["Wboth"] * 4 + ["Wnone"] * (n - 24)
    control = np.zeros(n, dtype=bool)
    control[rng.choice(np.arange(24, n), 10, replace=False)] = True
    header = ["unit_id", "module", "layer", "group", "control", "planted", "weight_rms"]
    header += [f"{loss}_{s}{se}" for loss in ("func", "sens") for s in STATS for se in ("", "_se")]
    rows = []
    for i, g in enumerate(groups):
        shift_f = 2.0 if g in ("Wfunc", "Wboth") else 0.0
        shift_s = 2.0 if g in ("Wsens", "Wboth") else 0.0
        uid = EVIL if i == 3 else f"layers.{i // 64}.fc1:{i % 64}"
        row: list[object] = [uid, "fc1", i // 64, g, bool(control[i]), i in (10, 11, 12), 0.02]
        for shift in (shift_f, shift_s):
            for _ in STATS:
                row += [float(rng.normal(shift, 1.0)), 0.1]
        rows.append(row)
    return header, rows


def _summary_and_cells(rng: np.random.Generator) -> tuple[list, list, list]:
    effect = {"Wfunc": (8.0, -0.01), "Wsens": (1.0, -0.04), "Wboth": (6.0, -0.05),
              "Wnone": (0.5, 0.0), "control": (1.0, -0.01)}  # fmt: skip
    cells, summary, versus = [], [], []
    cells.append({"group": "none", "level": 0.0, "draw": 0, "delta_ppl": 0.0,
                  "delta_auc": {"loss": 0.0}})  # fmt: skip
    for g in GROUPS:
        for lv in LEVELS[1:]:
            dp, da = effect[g][0] * lv * 10, effect[g][1] * lv * 10
            for d in range(3):
                cells.append({"group": g, "level": lv, "draw": d, "ppl": 95 + dp,
                              "delta_ppl": dp + rng.normal(0, 0.1), "rel_delta_ppl": dp / 95,
                              "delta_auc": {"loss": da}, "restored": True})  # fmt: skip
            for metric, m, w in (("delta_ppl", dp, 0.3), ("rel_delta_ppl", dp / 95, 0.003),
                                 ("delta_auc_loss", da, 0.01)):  # fmt: skip
                summary.append({"group": g, "level": lv, "metric": metric, "mean": m,
                                "ci_low": m - w, "ci_high": m + w, "n_draws": 3})  # fmt: skip
    for lv in LEVELS[1:]:
        diff = (effect["Wsens"][1] - effect["control"][1]) * lv * 10
        versus.append({"group": "Wsens", "level": lv, "metric": "delta_auc_loss", "diff": diff,
                       "ci_low": diff - 0.01, "ci_high": diff + 0.01,
                       "separable": diff + 0.01 < 0, "basis": "equal_alpha"})  # fmt: skip
    return cells, summary, versus


def make_results(name: str = f"fixture {EVIL}") -> tuple[dict, list[str], list[list[object]]]:
    """TEST FIXTURE: a complete schema-1 results dict with made-up numbers."""
    rng = np.random.default_rng(7)
    header, rows = _units(rng)
    cells, summary, versus = _summary_and_cells(rng)
    slq = {"nodes": [sorted([*rng.normal(0, 1, 8).tolist(), 12.0]) for _ in range(4)],
           "weights": [(np.ones(9) / 9).tolist() for _ in range(4)]}  # fmt: skip
    attack = {"auc": 0.78, "ci_low": 0.74, "ci_high": 0.82,
              "tpr_at_fpr": {"0.01": {"tpr": 0.05, "ci_low": 0.02, "ci_high": 0.09,
                                      "defined": True},
                             "0.001": {"tpr": None, "defined": False,
                                       "reason": f"n too small {EVIL}"}}}  # fmt: skip
    results = {
        "schema_version": 1,
        "data": "real",
        "run": {"name": name, "profile": "quick", "spec": {"note": EVIL}, "spec_hash": "abc",
                "created": "2026-01-01T00:00:00Z", "prm_check_version": "0.1.0"},
        "environment": {"python": "3.11", "cpu_count": 2},
        "model": {"source": "test-fixture", "variant": "planted", "hash": "0" * 64,
                  "n_params": 1000, "reference": True},
        "baseline": {"data": "real", "ppl": 95.1, "ppl_reference": 112.0,
                     "attacks": {"loss": attack, "min_k": attack},
                     "exposure": {"1": {"mean": 3.5, "min": 0.2, "max": 9.9, "n": 20}},
                     "bow_auc": {"auc": 0.51, "ci_low": 0.46, "ci_high": 0.56}},
        "curvature": {"data": "real", "units_csv": "units.csv", "n_units": len(rows),
                      "granularity": "neuron",
                      "losses": {"func": {"top_eigenvalues": [12.0, 5.0], "slq": slq},
                                 "sens": {"top_eigenvalues": [9.0], "slq": slq}}},
        "partition": {"data": "real", "rule": "obd", "sign": "abs", "q": 0.05,
                      "counts": {"Wfunc": 10, "Wsens": 10, "Wboth": 4, "Wnone": len(rows) - 24,
                                 "control": 10},
                      "planted_eval": [
                          {"name": "obd", "kind": "hessian_rule", "roc_auc": 0.83,
                           "top_q": [{"q": 0.05, "selected": 8, "precision": 0.4,
                                      "recall": 0.3, "lift": 3.2}], "wsens": []},
                          {"name": "weight_norm_row", "kind": "baseline", "roc_auc": 0.7,
                           "top_q": [{"q": 0.05, "selected": 8, "precision": 0.2,
                                      "recall": 0.1, "lift": 1.6}], "wsens": []}]},
        "sweep": {"data": "real", "levels": list(LEVELS), "draws": 3, "groups": list(GROUPS),
                  "cells": cells, "summary": summary, "versus_control": versus},
        "fidelity": {"data": {"synthetic": "synthetic", "real": "real"},
                     "verdict": {"legacy": "fail", "calibrated": "pass"},
                     "legacy": {"verdict": "fail", "failed": ["ks:obd"], "not_evaluated": [],
                                "features": [{"column": "obd", "ks_statistic": 0.6},
                                             {"column": "fisher_sum", "ks_statistic": 0.2}]},
                     "calibrated": {"verdict": "pass", "failed": [], "not_evaluated": [],
                                    "features": [{"column": "obd", "ks_statistic": 0.1}]},
                     "figures": {}},
        "checks": [{"id": f"Wsens-0.1-{EVIL}", "group": "Wsens", "level": 0.1,
                    "metric": "delta_auc_loss", "op": "<=", "value": -0.05,
                    "observed": -0.04, "passed": False}],
        "timings": {"curvature": {"wall_s": 12.0, "peak_rss_bytes": 6e8, "budget_seconds": 600,
                                  "budget_memory_bytes": 2**31, "cached": False},
                    "sweep": {"wall_s": 30.0, "peak_rss_bytes": 5e8, "budget_seconds": 20,
                              "budget_memory_bytes": 2**31},
                    "report": {"wall_s": None, "peak_rss_bytes": None}},
    }  # fmt: skip
    return results, header, rows


@pytest.fixture(scope="module")
def fixture_parts():
    """Results + units rows, with a real embedding section from embed_units (one UMAP fit)."""
    from prm_check.embed import embed_units

    results, header, rows = make_results()
    cols = [h for h in header if h.startswith(("func_", "sens_")) and not h.endswith("_se")]
    values = np.array([[r[header.index(c)] for c in cols] for r in rows], dtype=float)
    groups = [r[header.index("group")] for r in rows]
    results["embedding"] = embed_units(values, cols, groups, seed=0, n_perm=10, n_refit=3).as_dict()
    return results, header, rows


def _write_run(run_dir: Path, parts) -> dict:
    results, header, rows = parts
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "results.json", results)
    write_csv(run_dir / "units.csv", header, rows)
    write_csv(run_dir / "results.csv", ["group", "level"], [["Wsens", 0.1]])
    return load_results(run_dir)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, fixture_parts) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    results = _write_run(run_dir, fixture_parts)
    write_report(run_dir, results)
    return run_dir


def _pngs(d: Path) -> set[str]:
    return {p.name for p in d.glob("*.png")}


def test_every_figure_is_a_valid_png(report_dir: Path) -> None:
    assert _pngs(report_dir) == set(FIGURES)
    for name in FIGURES:
        img = imread(report_dir / name)
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300, name
        assert img.std() > 0.01, f"{name} is blank"


def test_index_has_captions_links_and_escapes(report_dir: Path) -> None:
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    for name, (_, caption) in FIGURES.items():
        assert f'src="{name}"' in page
        assert caption.split(";")[0].split("'")[0][:30] in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    for link in ("results.json", "results.csv", "units.csv"):
        assert f'href="{link}"' in page
    assert "Checks: 0 of 1 passed" in page
    assert "legacy" in page and "FAIL" in page
    assert not any(p.name.startswith(".") for p in report_dir.iterdir()), "temp files left"


def test_regenerate_on_copied_dir_reproduces_figure_set(report_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(report_dir, copy)
    for png in copy.glob("*.png"):
        png.unlink()
    (copy / "index.html").unlink()
    msgs: list[str] = []
    index = regenerate_report(copy, progress=msgs.append)
    assert index == copy / "index.html" and index.exists()
    assert _pngs(copy) == _pngs(report_dir) - {"synthetic_vs_real.png"} | {"synthetic_vs_real.png"}
    assert any("wrote" in m for m in msgs)


def test_missing_sections_are_not_computed(tmp_path: Path, fixture_parts) -> None:
    results, header, rows = fixture_parts
    slim = {k: v for k, v in results.items() if k not in ("curvature", "timings", "fidelity")}
    _write_run(tmp_path, (slim, header, rows))
    write_report(tmp_path, load_results(tmp_path))
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "Not computed" in page
    for name in ("hessian_spectrum.png", "budget.png", "synthetic_vs_real.png"):
        assert not (tmp_path / name).exists()
        assert name in page
    assert (tmp_path / "umap_visualization.png").exists()


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda t: t[: len(t) // 2], "not valid JSON"),
        (lambda t: t.replace('"schema_version": 1', '"schema_version": 2'), "schema_version 2"),
        (lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "run"}), "run"),
        (lambda t: t.replace('"wall_s": 12.0', '"wall_s": NaN'), "not valid JSON"),
    ],
)
def test_corrupt_results_raise_and_keep_previous_report(
    report_dir: Path, tmp_path: Path, corrupt, message: str
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(report_dir, copy)
    before = (copy / "index.html").read_bytes()
    text = (copy / "results.json").read_text()
    (copy / "results.json").write_text(corrupt(text))
    with pytest.raises(ReportError, match=message) as info:
        regenerate_report(copy)
    assert "results.json" in str(info.value)
    assert (copy / "index.html").read_bytes() == before
    assert not any(p.name.startswith(".") for p in copy.iterdir())


def test_malformed_section_raises_and_keeps_previous_files(
    report_dir: Path, tmp_path: Path, fixture_parts
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(report_dir, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    bad = json.loads(json.dumps(fixture_parts[0]))
    bad["sweep"]["summary"][0]["level"] = {"oops": 1}  # breaks the 3rd figure mid-report
    with pytest.raises(ReportError, match="malformed"):
        write_report(copy, bad)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


def test_run_time_fidelity_figures_are_kept(report_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(report_dir, copy)
    results = load_results(copy)
    (copy / "synthetic_vs_real.png").write_bytes(b"run-time figure")
    shutil.copy(copy / "budget.png", copy / "synthetic_vs_real_calibrated.png")
    results["fidelity"]["figures"] = {
        "legacy": str(tmp_path / "elsewhere" / "synthetic_vs_real.png"),
        "calibrated": "synthetic_vs_real_calibrated.png",
        "evil": "../../etc/passwd.png",
    }
    write_report(copy, results)
    assert (copy / "synthetic_vs_real.png").read_bytes() == b"run-time figure"
    page = (copy / "index.html").read_text(encoding="utf-8")
    assert 'src="synthetic_vs_real_calibrated.png"' in page and "passwd" not in page


def test_missing_results_json(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="not found"):
        load_results(tmp_path)


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "", ".", "a\\b", "x\x00"])
def test_safe_child_rejects_escaping_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ReportError):
        safe_child(tmp_path, name)


def test_safe_child_rejects_symlink_escape(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(ReportError):
        safe_child(tmp_path, "link/x")
    assert safe_child(tmp_path, "figure.png") == tmp_path / "figure.png"


def test_atomic_writes_are_strict_and_leave_no_temp_files(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a.json", {"x": float("nan"), "y": np.float32(1.5),
                                            "z": np.arange(2), "w": float("inf")})  # fmt: skip
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": None, "y": 1.5, "z": [0, 1],
                                                             "w": None}  # fmt: skip
    atomic_write_text(tmp_path / "b.txt", "hé")
    atomic_write_bytes(tmp_path / "c.bin", b"\x00\x01")
    write_csv(tmp_path / "d.csv", ["a", "b"], [[1, float("nan")], [None, True]])
    assert (tmp_path / "d.csv").read_text() == "a,b\n1,\n,true\n"
    with pytest.raises(ReportError):
        write_csv(tmp_path / "d.csv", ["a", "b"], [[1]])
    assert (tmp_path / "d.csv").read_text() == "a,b\n1,\n,true\n"
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "a.json", {"x": object()})
    assert json.loads((tmp_path / "a.json").read_text())["y"] == 1.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt", "c.bin", "d.csv"]


def test_units_csv_round_trip(tmp_path: Path, fixture_parts) -> None:
    _, header, rows = fixture_parts
    write_csv(tmp_path / "units.csv", header, rows)
    table = read_units_csv(tmp_path)
    assert len(table) == len(rows) and table.column("unit_id")[3] == EVIL
    assert table.boolean("control").sum() == 10
    np.testing.assert_allclose(
        table.numeric("func_obd"), [r[header.index("func_obd")] for r in rows]
    )
    (tmp_path / "units.csv").write_text("a,b\n1\n")
    with pytest.raises(ReportError, match="row 1"):
        read_units_csv(tmp_path)
