"""Assemble results.json from the stage outputs and write the run's files atomically.

The report directory gets: results.json (schema_version 1, see docs/results-schema.md),
results.csv (one row per sweep cell), units.csv (one row per unit), the figures and
index.html. Nothing here computes a statistic: it only arranges what the stages measured.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prm_check import __version__

SCHEMA_VERSION = 1


def _strip_private(d: dict | None) -> dict | None:
    if d is None:
        return None
    return {k: v for k, v in d.items() if not k.startswith("_")}


def assemble_results(spec, sections: Mapping[str, dict], records: Mapping[str, Any], env: dict):
    """The results.json dict; every measured section is marked ``"data": "real"``."""
    from prm_check.spec import spec_hash, spec_to_dict

    assets = sections.get("assets") or {}
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "data": "real",
        "run": {
            "name": spec.name,
            "profile": spec.profile,
            "spec": spec_to_dict(spec),
            "spec_hash": spec_hash(spec),
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "prm_check_version": __version__,
        },
        "environment": env,
        "model": {**assets.get("model", {}), "planted_units": assets.get("planted_units", [])},
    }
    for name in ("baseline", "curvature", "partition", "sweep", "embedding", "fidelity"):
        if name in sections:
            out[name] = _strip_private(sections[name])
    if "curvature" in out:
        out["curvature"]["units_csv"] = "units.csv"
    out["timings"] = {
        s: {
            "wall_s": r.wall_s,
            "cpu_s": r.cpu_s,
            "peak_rss_bytes": r.peak_rss_bytes,
            "budget_memory_bytes": r.budget_memory_bytes,
            "budget_seconds": r.budget_seconds,
            "cached": r.cached,
        }
        for s, r in records.items()
    }
    return out


def sweep_rows(results: dict) -> tuple[list[str], list[list]]:
    """results.csv: the sweep cells flattened, one row per cell."""
    cells = (results.get("sweep") or {}).get("cells", [])
    attacks = sorted({a for c in cells for a in c.get("auc", {})})
    reps = sorted({r for c in cells for r in c.get("exposure_mean", {})}, key=int)
    header = [
        "group",
        "level",
        "draw",
        "seed",
        "n_params",
        "noise_norm",
        "ppl",
        "delta_ppl",
        "rel_delta_ppl",
    ]
    header += [f"auc_{a}" for a in attacks] + [f"delta_auc_{a}" for a in attacks]
    header += [f"tpr_at_1pct_fpr_{a}" for a in attacks] + [f"exposure_r{r}" for r in reps]
    header += ["restored", "seconds"]
    rows = []
    for c in cells:
        row = [c[k] for k in header[:9]]
        row += [c["auc"].get(a) for a in attacks] + [c["delta_auc"].get(a) for a in attacks]
        row += [c["tpr_at_1pct_fpr"].get(a) for a in attacks]
        row += [c["exposure_mean"].get(r) for r in reps] + [c["restored"], c["seconds"]]
        rows.append(row)
    return header, rows


def unit_rows(results: dict, stage_dirs: Mapping[str, Path]) -> tuple[list[str], list[list]]:
    """units.csv: per unit its module, layer, group, control/planted flags and features."""
    import numpy as np

    from prm_check.pipeline import LOSSES, read_features, unit_module

    if "curvature" not in stage_dirs or not (stage_dirs["curvature"] / "result.json").exists():
        return [], []
    feats = read_features(stage_dirs["curvature"])
    ids = feats["func"].unit_ids
    groups = control = None
    if "partition" in stage_dirs and (stage_dirs["partition"] / "partition.npz").exists():
        part = np.load(stage_dirs["partition"] / "partition.npz")
        groups, control = part["groups"], part["control"]
    planted = set((results.get("model") or {}).get("planted_units", []))
    header = ["unit_id", "module", "layer", "group", "control", "planted"]
    cols = []
    for loss in LOSSES:
        for c in feats[loss].columns:
            cols.append((loss, c))
    header += [f"{loss}_{c}" for loss, c in cols]
    columns = {(loss, c): feats[loss].column(c) for loss, c in cols}
    rows = []
    for i, uid in enumerate(ids):
        module = unit_module(uid)
        layer = _layer_of(module)
        row = [
            uid,
            module,
            layer,
            str(groups[i]) if groups is not None else "",
            bool(control[i]) if control is not None else "",
            uid in planted,
        ]
        row += [float(columns[k][i]) for k in cols]
        rows.append(row)
    return header, rows


def _layer_of(module: str) -> int | str:
    parts = module.split(".")
    for a, b in itertools.pairwise(parts):
        if a in ("layers", "h") and b.isdigit():
            return int(b)
    return ""


def write_outputs(
    results: dict,
    out_dir: Path,
    stage_dirs: Mapping[str, Path],
    *,
    report: bool = True,
    progress: Callable[[str], None] | None = None,
) -> None:
    """results.json, results.csv, units.csv (+ figures and index.html), each atomically."""
    from prm_check.report.store import atomic_write_bytes, atomic_write_json, write_csv

    out_dir.mkdir(parents=True, exist_ok=True)
    header, rows = unit_rows(results, stage_dirs)
    if header:
        write_csv(out_dir / "units.csv", header, rows)
    header, rows = sweep_rows(results)
    write_csv(out_dir / "results.csv", header, rows)
    atomic_write_json(out_dir / "results.json", results)
    fid_dir = stage_dirs.get("fidelity")
    for name in ((results.get("fidelity") or {}).get("figures") or {}).values():
        src = fid_dir / name if fid_dir else None
        if src is not None and src.is_file():
            atomic_write_bytes(out_dir / Path(name).name, src.read_bytes())
    if report:
        from prm_check.report.html import write_report

        write_report(out_dir, results, progress=progress)


def copy_run(src: Path, dst: Path) -> None:
    """Copy a run directory (results and CSVs) to regenerate its report elsewhere."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "results.csv", "units.csv"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
