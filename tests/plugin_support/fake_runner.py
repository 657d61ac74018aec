"""TEST FIXTURE — a fake stage runner for the plugin's pytester tests. Its numbers are
hand-made placeholders shaped like results.json sections; they measure nothing.

It exists so the plugin's collection, budgets, gating, xdist and reporting paths can be
tested in seconds. Budgets are still enforced by the *real* guard: every stage runs in a
spawned child under ``spec.budgets``, and can be told (env ``PRM_FAKE_STAGES``, JSON) to
sleep, allocate or raise, e.g. ``{"fidelity": {"allocate_mib": 300}, "shift": 0.2}``.
``PRM_FAKE_LOG`` (a file) gets one line per computed stage; ``PRM_FAKE_CACHE`` (a folder)
makes it cache on disk like the real pipeline, to test that xdist workers share work.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

BEHAVIOUR_ENV = "PRM_FAKE_STAGES"
LOG_ENV = "PRM_FAKE_LOG"
CACHE_ENV = "PRM_FAKE_CACHE"
LOSSES = ("func", "sens", "nonmember")


def _behaviour() -> dict[str, Any]:
    return json.loads(os.environ.get(BEHAVIOUR_ENV) or "{}")


def _cell(group: str, level: float, draw: int, attacks: list[str], shift: float) -> dict:
    auc = {a: 0.75 - level + shift for a in attacks}
    return {
        "group": group,
        "level": level,
        "draw": draw,
        "seed": draw,
        "n_params": 100,
        "noise_norm": level,
        "ppl": 40.0 + level,
        "delta_ppl": level,
        "rel_delta_ppl": level / 40.0,
        "auc": auc,
        "delta_auc": {a: -level for a in attacks},
        "tpr_at_1pct_fpr": {a: None for a in attacks},
        "exposure_mean": {},
        "restored": True,
        "seconds": 0.0,
    }


def _sweep(spec: dict, shift: float) -> dict:
    sw = spec["sweep"]
    summary, cells = [], []
    for g in sw["groups"]:
        for lv in sw["levels"]:
            if lv == 0:
                continue
            strength = 0.5 if g == "Wsens" else 0.1
            for a in sw["attacks"]:
                mean = -strength * lv + shift
                summary.append(
                    {"group": g, "level": lv, "metric": f"delta_auc_{a}", "mean": mean,
                     "ci_low": mean - 0.01, "ci_high": mean + 0.01}
                )  # fmt: skip
            for metric, mean in (("rel_delta_ppl", 0.1 * lv), ("delta_ppl", 3.0 * lv)):
                summary.append({"group": g, "level": lv, "metric": metric, "mean": mean + shift})
            for d in range(sw["draws"]):
                cells.append(_cell(g, lv, d, sw["attacks"], shift))
    versus = [
        {
            "group": "Wsens",
            "level": lv,
            "metric": f"delta_auc_{a}",
            "basis": "equal_alpha",
            "diff": -0.4 * lv,
            "ci_low": -0.4 * lv - 0.01,
            "ci_high": -0.4 * lv + 0.01,
        }
        for lv in sw["levels"]
        for a in sw["attacks"]
    ]
    auc = {a: 0.75 + shift for a in sw["attacks"]}
    return {
        "data": "real",
        "fake": True,
        "levels": sw["levels"],
        "groups": sw["groups"],
        "clean": {"ppl": 40.0 + shift, "auc": auc},
        "cells": cells,
        "summary": summary,
        "versus_control": versus,
    }


def _section(stage: str, spec: dict, shift: float) -> dict:
    if stage == "assets":
        return {"model": {"source": "fake", "n_params": 1000}, "planted_units": ["u1", "u2"]}
    if stage == "curvature":
        c = spec["curvature"]
        losses = {
            loss: {
                "tokens": 128,
                "texts": 4,
                "top_eigenvalues": [5.0 + shift - i for i in range(c["top_k"])],
                "seconds": 0.01,
                "meta": {"probes": c["probes"]},
            }
            for loss in LOSSES
        }
        return {"data": "real", "fake": True, "granularity": c["granularity"], "losses": losses}
    if stage == "partition":
        rule = spec["partition"]["rule"]
        evals = [
            {"name": rule, "kind": "hessian_rule", "roc_auc": 0.9 + shift, "wsens": []},
            {"name": "weight_norm_row", "kind": "baseline", "roc_auc": 0.6, "wsens": []},
        ]
        counts = {"Wfunc": 5, "Wsens": 5, "Wboth": 1, "Wnone": 89, "control": 5}
        verdict = {
            "finding": "fake: the rule wins",
            "best_hessian_rule": {"name": rule, "roc_auc": 0.9 + shift},
            "best_baseline": {"name": "weight_norm_row", "roc_auc": 0.6},
        }
        return {
            "data": "real",
            "fake": True,
            "rule": rule,
            "counts": counts,
            "planted_eval": evals,
            "planted_verdict": verdict,
        }
    if stage == "sweep":
        return _sweep(spec, shift)
    if stage == "fidelity":
        out = {}
        for v in spec["fidelity"]["variants"]:
            value = 0.5 + shift
            m = {"name": "ks_pvalue", "value": value, "threshold": 0.01, "op": ">="}
            ok = value >= 0.01
            out[v] = {"verdict": "pass" if ok else "fail", "measures": [{**m, "passed": ok}]}
        return out
    return {"data": "real", "fake": True}


def compute(stage: str, spec: dict, behaviour: dict) -> dict:
    """Runs in the guarded child: misbehave as told, then return the hand-made section."""
    own = behaviour.get(stage, {})
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a") as f:
            f.write(f"{stage}\n")
    if own.get("sleep"):
        time.sleep(float(own["sleep"]))
    if own.get("allocate_mib"):
        block = bytearray(int(own["allocate_mib"]) * 2**20)  # touches every page
        del block
    if own.get("error"):
        from prm_check.errors import DataError

        raise DataError(own["error"])
    section = _section(stage, spec, float(behaviour.get("shift", 0.0)))
    if stage == "assets" and behaviour.get("model"):  # {"recipe": .., "weights": ..}
        m = behaviour["model"]
        section["model"] |= {"cache_key": m["recipe"], "hash": m["weights"]}
    return section


class FakeRunner:
    """Implements the plugin's runner protocol with :func:`compute` in the real guard."""

    def run_stage(self, stage: str, spec: Any, *, model_override: str | None = None):
        from prm_check.budget.guard import run_guarded
        from prm_check.pipeline import stage_budget, stage_keys
        from prm_check.spec import spec_to_dict

        cache = os.environ.get(CACHE_ENV)
        path = Path(cache) / f"{stage}-{stage_keys(spec)[stage]}.json" if cache else None
        if path is not None and path.exists():  # like the pipeline: timing kept with the result
            saved = json.loads(path.read_text())
            return saved["section"], {**saved["record"], "cached": True}
        memory, seconds = stage_budget(spec, stage)
        res = run_guarded(
            compute,
            stage,
            spec_to_dict(spec),
            _behaviour(),
            memory=memory,
            seconds=seconds,
            stage=stage,
            preload=(),
        )
        m = res.measurement
        record = {"wall_s": m.wall_s, "cpu_s": m.cpu_s, "peak_rss_bytes": m.peak_rss_bytes}
        if path is not None:
            path.write_text(json.dumps({"section": res.value, "record": record}))
        return res.value, {**record, "cached": False}

    def load_model(self, spec: Any, *, model_override: str | None = None) -> dict:
        return {"fake_model_of": spec.name, "override": model_override}

    def environment(self) -> dict:
        return {"python": "fake", "fake": True}


def make_runner(config: Any) -> FakeRunner:
    return FakeRunner()


def allocate(mib: int) -> int:
    """For prm_budget tests: allocate and touch ``mib`` MiB in the guarded child."""
    block = bytearray(mib * 2**20)
    return len(block)


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
