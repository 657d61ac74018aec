"""The plain-text summary printed at the end of ``prm-check run`` (from results.json)."""

from __future__ import annotations

from prm_check.units_fmt import format_bytes


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=False))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _f(x, nd: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def _ci(d: dict, key: str = "auc") -> str:
    return f"{_f(d.get(key))} [{_f(d.get('ci_low'))}, {_f(d.get('ci_high'))}]"


def baseline_section(b: dict) -> str:
    rows = []
    for name, a in (b.get("attacks") or {}).items():
        t = (a.get("tpr_at_fpr") or {}).get("0.01") or {}
        tpr = _f(t.get("tpr")) if t.get("defined") else "undefined"
        rows.append([name, _ci(a), tpr])
    out = [
        f"held-out PPL: fine-tuned {_f(b.get('ppl'), 1)}, reference {_f(b.get('ppl_reference'), 1)}"
    ]
    out.append(_table(["attack", "AUC [95% CI]", "TPR@1%FPR"], rows))
    exp = b.get("exposure") or {}
    if exp:
        out.append(
            "canary exposure (mean rank exposure): "
            + ", ".join(f"r={r}: {_f(e.get('mean'), 2)}" for r, e in exp.items())
        )
    bow = b.get("bow_auc")
    if bow:
        out.append(f"bag-of-words member/non-member AUC (should be ~0.5): {_ci(bow)}")
    return "\n".join(out)


def partition_section(p: dict) -> str:
    out = [
        f"rule {p.get('rule')} (sign {p.get('sign')}), q = {p.get('q')}: "
        + ", ".join(f"{k}={v}" for k, v in (p.get("counts") or {}).items())
    ]
    evals = p.get("planted_eval") or []
    if evals:
        q = p.get("q")
        rows = []
        for e in sorted(evals, key=lambda e: -e["roc_auc"]):
            top = next((r for r in e["top_q"] if q is not None and abs(r["q"] - q) < 1e-12), None)
            rows.append(
                [
                    e["name"],
                    e["kind"],
                    _ci(e, "roc_auc"),
                    _f(top["lift"], 2) if top else "n/a",
                    _f(top["recall"], 2) if top else "n/a",
                ]
            )
        out.append(f"planted units ({p.get('planted_pool')}):")
        out.append(_table(["score", "kind", "ROC-AUC [95% CI]", f"lift@{q}", f"recall@{q}"], rows))
        verdict = p.get("planted_verdict") or {}
        if verdict.get("finding"):
            out.append(f"finding: {verdict['finding']}")
    return "\n".join(out)


def sweep_section(s: dict) -> str:
    rows = []
    summ = {(r["group"], r["level"], r["metric"]): r for r in s.get("summary", [])}
    for g in s.get("groups", []):
        for lv in s.get("levels", []):
            a = summ.get((g, lv, "delta_auc_loss"))
            p = summ.get((g, lv, "rel_delta_ppl"))
            if a and p:
                rows.append([g, lv, _ci(a, "mean"), _ci(p, "mean"), _f(a["noise_norm"], 2)])
    out = (
        [_table(["group", "alpha", "dAUC(loss) [95% CI]", "rel dPPL [95% CI]", "noise norm"], rows)]
        if rows
        else []
    )
    vs = [r for r in s.get("versus_control", []) if r["metric"] == "delta_auc_loss"]
    if vs:
        out.append("Wsens minus control, dAUC(loss):")
        out.append(
            _table(
                ["alpha", "basis", "diff [95% CI]", "separable"],
                [
                    [r["level"], r["basis"], _ci(r, "diff"), "yes" if r["separable"] else "no"]
                    for r in vs
                ],
            )
        )
    return "\n".join(out)


def format_summary(results: dict) -> str:
    parts = [f"== prm_check run {results['run']['name']} ({results['run']['profile']}) =="]
    m = results.get("model") or {}
    parts.append(
        f"model {m.get('source')} {m.get('variant') or ''} "
        f"({m.get('n_params')} params, hash {str(m.get('hash'))[:12]})"
    )
    if results.get("baseline"):
        parts += ["", "-- baseline (real)", baseline_section(results["baseline"])]
    if results.get("partition"):
        parts += ["", "-- partition (real)", partition_section(results["partition"])]
    if results.get("sweep"):
        parts += ["", "-- noise sweep (real)", sweep_section(results["sweep"])]
    fid = results.get("fidelity") or {}
    for name, verdict in (fid.get("verdict") or {}).items():
        failed = [
            m["name"] for m in (fid.get(name) or {}).get("measures", []) if m.get("passed") is False
        ]
        parts.append(
            f"fidelity[{name}] synthetic vs real: {verdict}"
            + (
                f" (failed: {', '.join(failed[:6])}{' ...' if len(failed) > 6 else ''})"
                if failed
                else ""
            )
        )
    checks = results.get("checks") or []
    if checks:
        rows = [
            [
                c["id"],
                f"{c['op']} {c['value']}",
                _f(c["observed"], 4),
                "PASS" if c["passed"] else "FAIL",
            ]
            for c in checks
        ]
        parts += ["", "-- checks", _table(["check", "threshold", "observed", ""], rows)]
    t = results.get("timings") or {}
    if t:
        rows = [
            [
                s,
                f"{r['wall_s']:.1f}",
                format_bytes(r["peak_rss_bytes"] or 0),
                "cached" if r.get("cached") else "",
            ]
            for s, r in t.items()
        ]
        parts += ["", "-- stages", _table(["stage", "wall s", "peak RSS", ""], rows)]
    return "\n".join(parts)
