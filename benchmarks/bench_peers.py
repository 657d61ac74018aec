"""prm_check side by side with PyHessian, curvlinops and hessian-eigenthings.

Run through ``make bench`` (it builds ``.venv-bench``, the only place the peers are
installed), or directly with that venv::

    .venv-bench/bin/python -m pytest benchmarks/bench_peers.py -p no:randomly -s
    PRM_BENCH_QUICK=1 ...   # tiny model only in the speed table

**Accuracy** (in this process, float64, tiny OPT and GPT-2): the dense Hessian is exact
(``jacfwd(jacrev(f, chunk_size=1))``, the tests' reference: torch 2.13's vmapped
``torch.func.hessian`` is wrong on LayerNorm rows), and every library estimates trace,
top-3 eigenvalues and diagonal at the same number of Hessian-vector products. Every call
is wrapped: an exception becomes a row with the error. Standard errors are the library's
own where it reports one (prm_check, hessian-eigenthings) or the spread of the samples it
returns (PyHessian); ``z = |estimate − exact| / stderr``. For eigenvalues the "stderr" is
the a-posteriori residual bound ``‖Hx − λx‖/‖x‖`` plus the operator's own product error.

**Speed / memory** (float32, random weights, the tiny default shape at 8×128 and the
OPT-125m shape at 4×128, all parameters): one fresh worker per model times every library
in turn, round after round (A/B/C/D, A/B/C/D, ...), so drift hits all alike; peak RSS
comes from a separate fresh worker per (library, operation) (kernel VmHWM,
``prm_check.budget.meter.Meter``). Ratios are to one gradient of the same loss.

Writes ``reports/bench/peers_accuracy.json`` and ``reports/bench/peers_speed.json``.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    OUT_DIR,
    environment,
    opt_model,
    run_isolated,
    token_batch,
    worker_main,
    write_json,
)
from peers.adapters import ADAPTERS, LIBS, Unsupported

ACC_OUT = OUT_DIR / "peers_accuracy.json"
SPEED_OUT = OUT_DIR / "peers_speed.json"
M = 64  # Hutchinson products per trace / diagonal estimate, every library
EIG_BUDGET = 60  # products offered to iterative eigensolvers with a fixed budget
SEED = 0


def _quick() -> bool:
    return os.environ.get("PRM_BENCH_QUICK", "") not in ("", "0")


# =========================================================================== accuracy
def tiny_gpt2(dtype):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=16, n_embd=8, n_layer=2, n_head=2, n_positions=32, bos_token_id=1,
        eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    cfg._attn_implementation = "eager"
    return GPT2LMHeadModel(cfg).eval().to(dtype)


def accuracy_models():
    import torch

    f64 = torch.float64
    tiny_opt = dict(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, ffn_dim=16,
                    vocab_size=16, max_position_embeddings=32)  # fmt: skip
    return {
        "tiny OPT (2 layers, h=8)": lambda: opt_model(tiny_opt, dtype=f64),
        "tiny GPT-2 (2 layers, h=8)": lambda: tiny_gpt2(f64),
    }


def dense_hessian(model, batch, names):
    """Exact H of the mean next-token loss over ``names`` (float64)."""
    import torch

    from prm_check.lm import batch_loss_sum

    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    numels = [params[n].numel() for n in names]

    def f(flat):
        parts = [c.view(s) for c, s in zip(flat.split(numels), shapes, strict=True)]
        mapping = dict(zip(names, parts, strict=True))

        def bound(**kw):
            return torch.func.functional_call(model, mapping, args=(), kwargs=kw)

        return batch_loss_sum(bound, batch)[0] / batch.num_valid_targets

    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    return torch.func.jacfwd(torch.func.jacrev(f, chunk_size=1))(flat).detach()


def _row(model: str, lib: str, quantity: str, **kw) -> dict[str, Any]:
    return {"model": model, "lib": lib, "quantity": quantity, **kw}


def _scalar_row(model, lib, quantity, est, exact, se=None, **kw):
    err = abs(est - exact)
    r = _row(model, lib, quantity, estimate=est, exact=exact, abs_err=err,
             rel_err=err / max(abs(exact), 1e-300), **kw)  # fmt: skip
    if se is not None and np.isfinite(se) and se > 0:
        r["stderr"], r["z"] = se, err / se
    return r


def accuracy(m: int = M) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    exact_info = {}
    for mname, build in accuracy_models().items():
        model = build()
        vocab = model.config.vocab_size
        batch = token_batch(vocab, 4, 16, seed=SEED + 1)
        names = [n for n, _ in model.named_parameters() if "pos" not in n and "wpe" not in n]
        H = dense_hessian(model, batch, names)
        n = H.shape[0]
        asym = float((H - H.T).norm() / H.norm())
        H = (H + H.T) / 2
        evals = torch.linalg.eigvalsh(H).flip(0).numpy()
        d_exact = torch.diagonal(H).clone()
        tr = float(d_exact.sum())
        h_norm = float(abs(evals).max())
        exact_info[mname] = {"n": n, "trace": tr, "top3": evals[:3].tolist(),
                             "asymmetry": asym, "spectral_norm": h_norm}  # fmt: skip
        v = torch.randn(n, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
        hv_exact = H @ v
        for lib in LIBS:
            for p in model.parameters():
                p.requires_grad_(True)
            try:
                ad = ADAPTERS[lib](model, batch, names)
            except Exception as exc:  # the failure is the row
                rows.append(_row(mname, lib, "install / construct", error=_err(exc)))
                continue
            version = getattr(ad, "version", None)
            hvp_err = None
            try:
                hv = ad.hvp(v.clone())
                hvp_err = float((hv - hv_exact).norm() / hv_exact.norm())
                rows.append(_row(mname, lib, "HVP", rel_err=hvp_err, matvecs=1, version=version))
            except Exception as exc:
                rows.append(_row(mname, lib, "HVP", error=_err(exc), version=version))
            variants = [("trace", {})]
            if lib == "pyhessian":  # default tol=1e-3 (early stop) and tol disabled
                variants = [("trace (default tol=1e-3)", {}),
                            ("trace (tol disabled)", {"tol": float("-inf")})]  # fmt: skip
            if lib == "hessian-eigenthings":
                variants = [("trace (hutchinson)", {}),
                            ("trace (default: hutch++)", {"method": "hutch++"})]  # fmt: skip
            for label, kw in variants:
                try:
                    t = ad.trace(m, SEED, **kw)
                    rows.append(_scalar_row(mname, lib, label, t["estimate"], tr,
                                            t.get("stderr"), matvecs=t["matvecs"],
                                            version=version))  # fmt: skip
                except Exception as exc:
                    rows.append(_row(mname, lib, label, error=_err(exc), version=version))
            try:
                d = ad.diag(m, SEED)
                est = torch.as_tensor(d["estimate"]).double()
                diff = est - d_exact
                r = _row(mname, lib, "diagonal", matvecs=d["matvecs"], version=version,
                         rel_err=float(diff.norm() / d_exact.norm()),
                         corr=float(np.corrcoef(est.numpy(), d_exact.numpy())[0, 1]))  # fmt: skip
                se = d.get("stderr")
                if se is not None:
                    se = torch.as_tensor(se).double()
                    ok = se > 0
                    zs = (diff[ok] / se[ok]).abs()
                    r["z"] = float(zs.pow(2).mean().sqrt())  # RMS z over entries
                    r["within_2se"] = float((zs <= 2).double().mean())
                rows.append(r)
            except Unsupported as exc:
                rows.append(_row(mname, lib, "diagonal", error=f"unsupported: {exc}",
                                 version=version))  # fmt: skip
            except Exception as exc:
                rows.append(_row(mname, lib, "diagonal", error=_err(exc), version=version))
            if lib == "pyhessian":
                rows.append(_early_stop_row(mname, ad, m, tr, version))
            eig_variants = [("top-3 eigenvalues", {})]
            if lib == "hessian-eigenthings":
                eig_variants = [("top-3 eigenvalues (default reorth.)", {}),
                                ("top-3 eigenvalues (reorthogonalize=True)",
                                 {"reorthogonalize": True})]  # fmt: skip
            for label, kw in eig_variants:
                rows.append(_eig_row(mname, lib, label, ad, kw, evals, hvp_err, h_norm, version))
            del ad
    return {"schema": 1, "matvecs": m, "eig_budget": EIG_BUDGET, "seed": SEED,
            "exact": exact_info, "rows": rows}  # fmt: skip


EARLY_STOP_SEEDS = 20


def _early_stop_row(mname, ad, m, tr, version) -> dict[str, Any]:
    """PyHessian's trace at its default tol over many seeds: how many probes it used."""
    try:
        runs = [ad.trace(m, s) for s in range(EARLY_STOP_SEEDS)]
    except Exception as exc:
        return _row(mname, "pyhessian", "trace (default tol), 20 seeds", error=_err(exc))
    used = np.array([r["matvecs"] for r in runs])
    est = np.array([r["estimate"] for r in runs])
    return _row(mname, "pyhessian", f"trace (default tol), {EARLY_STOP_SEEDS} seeds",
                matvecs=float(used.mean()), exact=tr,
                rel_err=float(np.sqrt(np.mean((est - tr) ** 2)) / abs(tr)),
                stopped_at_2=int((used <= 2).sum()), runs=EARLY_STOP_SEEDS,
                matvecs_min=int(used.min()), matvecs_max=int(used.max()),
                version=version)  # fmt: skip


def _eig_row(mname, lib, label, ad, kw, evals, hvp_err, h_norm, version) -> dict[str, Any]:
    try:
        e = ad.topk(3, SEED, budget=EIG_BUDGET, **kw)
        got = np.asarray(e["eigenvalues"], dtype=float)[:3]
        err = np.abs(got - evals[:3])
        r = _row(mname, lib, label, estimate=got.tolist(), exact=evals[:3].tolist(),
                 abs_err=err.tolist(), rel_err=float(np.max(err / np.abs(evals[:3]))),
                 matvecs=e["matvecs"], version=version)  # fmt: skip
        if "bound" in e:
            slack = (hvp_err or 0.0) * h_norm  # the operator's own product error
            bound = np.asarray(e["bound"], dtype=float)[:3] + slack
            r["stderr"] = bound.tolist()
            r["z"] = float(np.max(err / np.maximum(bound, 1e-300)))
        return r
    except Exception as exc:
        return _row(mname, lib, label, error=_err(exc), version=version)


def _err(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]


# =========================================================================== speed
SPEED_MODELS = {"tiny": 8, "opt125m": 4}  # model -> batch (× 128 tokens)
PROBES = {"tiny": 8, "opt125m": 2}  # K probes per measured Hutchinson call
OPS = {"tiny": ("hvp", "probe", "topk"), "opt125m": ("hvp", "probe")}
RSS_OPS = ("probe",)  # isolated peak-RSS workers; every op also gets an in-process peak
TOPK_BUDGET = 21  # products per top-3 eigensolve in the speed table (7 per power iteration)


def _limit_memory(gib: float) -> None:
    lim = int(gib * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (lim, lim))


def _setup(cfg):
    import torch

    torch.set_num_threads(int(cfg.get("threads", 2)))
    model = opt_model(cfg["model"])
    batch = token_batch(model.config.vocab_size, cfg["batch"])
    return model, batch


def _grad_fn(model, batch):
    import torch

    from prm_check.lm import batch_loss_sum

    params = list(model.parameters())

    def grad():
        for p in params:
            p.requires_grad_(True)
        loss, count = batch_loss_sum(model, batch)
        torch.autograd.grad(loss / count, params)

    return grad


def _op_fn(ad, op: str, k: int, n: int):
    import torch

    if op == "hvp":
        v = torch.randn(n, generator=torch.Generator().manual_seed(3))
        return lambda: ad.hvp(v)
    if op == "probe":
        return lambda: ad.probes(k, SEED)
    if op == "probe-vmapped":  # curvlinops' own batched Hutchinson (an n×k probe matrix)
        return lambda: ad.probes(k, SEED, batched=True)
    if op == "topk":
        return lambda: ad.topk_budget(3, TOPK_BUDGET, SEED)
    raise ValueError(op)


def _adapter(lib, model, batch, cfg):
    for p in model.parameters():
        p.requires_grad_(True)
    if lib == "prm_check":
        return ADAPTERS[lib](model, batch, None, probes_per_graph=cfg["k"])
    if lib == "curvlinops":  # vmapped probes only where k·n fits (tiny); else one at a time
        return ADAPTERS[lib](model, batch, None, batched=cfg["model"] == "tiny")
    return ADAPTERS[lib](model, batch, None)


def prewarm(libs, ops) -> None:
    """Run every (library, operation) once on a very small OPT: the first double backward,
    ``torch.func`` transform, etc. in a process costs seconds that are not the operation's."""
    small = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "ffn_dim": 32, "vocab_size": 64}  # fmt: skip
    model = opt_model(small)
    batch = token_batch(64, 2, 16)
    n = sum(p.numel() for p in model.parameters())
    for lib in libs:
        try:
            ad = _adapter(lib, model, batch, {"k": 2, "model": "tiny"})
            for op in ops:
                _op_fn(ad, op, 2, n)()
        except Exception:
            pass  # the real run records the error


def timing_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """All libraries in one process, alternating, ``rounds`` times; per-op median."""
    _limit_memory(cfg.get("limit_gib", 16))
    prewarm(cfg["libs"], cfg["ops"])
    model, batch = _setup(cfg)
    n = sum(p.numel() for p in model.parameters())
    libs, errors = {}, {}
    for lib in cfg["libs"]:
        try:
            libs[lib] = _adapter(lib, model, batch, cfg)
        except Exception as exc:
            errors[lib] = _err(exc)
    tasks = [("torch", "grad", _grad_fn(model, batch))]
    for op in cfg["ops"]:
        for lib, ad in libs.items():
            tasks.append((lib, op, _op_fn(ad, op, cfg["k"], n)))
    from prm_check.budget.meter import Meter

    times: dict[str, list[float]] = {}
    peaks: dict[str, float] = {}
    extra: dict[str, Any] = {}
    for r in range(cfg["rounds"] + cfg.get("warmup", 0)):
        for lib, op, fn in tasks:
            key = f"{lib}|{op}"
            if key in errors:
                continue
            try:
                with Meter() as meter:
                    out = fn()
            except Exception as exc:
                errors[key] = _err(exc)
                continue
            dt = meter.wall_s
            peaks[key] = max(peaks.get(key, 0), meter.peak_rss_bytes / 2**20)
            if op == "topk" and isinstance(out, dict):
                extra[key] = {"matvecs": out["matvecs"]}
            if r >= cfg.get("warmup", 0):
                times.setdefault(key, []).append(dt / (cfg["k"] if op == "probe" else 1))
    return {**cfg, "n": n, "times": times, "inproc_peak_mib": peaks, "errors": errors,
            "extra": extra}  # fmt: skip


def rss_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """One operation, once, in this fresh process: peak RSS (VmHWM) and wall time."""
    from prm_check.budget.meter import Meter

    _limit_memory(cfg.get("limit_gib", 16))
    prewarm([cfg["lib"]] if cfg["lib"] != "torch" else [], [cfg["op"]])
    model, batch = _setup(cfg)
    n = sum(p.numel() for p in model.parameters())
    if cfg["lib"] == "torch":
        fn = _grad_fn(model, batch)
    else:
        ad = _adapter(cfg["lib"], model, batch, cfg)
        fn = _op_fn(ad, cfg["op"], cfg["k"], n)
    with Meter() as m:
        fn()
    per = cfg["k"] if cfg["op"] == "probe" else 1
    return {**cfg, "n": n, "peak_mib": m.peak_rss_bytes / 2**20,
            "start_mib": m.start_rss_bytes / 2**20, "wall_s": m.wall_s / per}  # fmt: skip


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    return timing_worker(cfg) if cfg["phase"] == "time" else rss_worker(cfg)


def speed(quick: bool | None = None) -> dict[str, Any]:
    quick = _quick() if quick is None else quick
    env0 = environment()
    models = ["tiny"] if quick else list(SPEED_MODELS)
    libs = list(LIBS)
    timing, rss = [], []
    for mdl in models:
        base = {"model": mdl, "batch": SPEED_MODELS[mdl], "k": PROBES[mdl]}
        # a warm-up round first: the first large double backward in a process pays the heap's
        # growth (page faults), and without it that cost lands on whichever library runs first
        rounds, warmup = (2, 1) if mdl == "tiny" else (1, 1)
        timing.append(run_isolated(__file__, {**base, "phase": "time", "libs": libs,
                                              "ops": list(OPS[mdl]), "rounds": rounds,
                                              "warmup": warmup}, timeout=2400))  # fmt: skip
        rss.append(run_isolated(__file__, {**base, "phase": "rss", "lib": "torch", "op": "grad"}))
        for op in RSS_OPS:
            for lib in libs:
                rss.append(run_isolated(__file__, {**base, "phase": "rss", "lib": lib, "op": op}))
    rows = summarise(timing, rss)
    return {"schema": 1, "quick": quick, "env_start": env0, "env_end": environment(),
            "probes": PROBES, "timing": timing, "rss": rss, "rows": rows}  # fmt: skip


def summarise(timing: list[dict], rss: list[dict]) -> list[dict]:
    """One row per (model, library, operation): median time, ×grad, peak RSS, ×grad."""
    rows = []
    for t in timing:
        mdl = t["model"]
        peaks = {(r["lib"], r["op"]): r for r in rss if r.get("model") == mdl}
        g = peaks.get(("torch", "grad"), {})
        tg = statistics.median(t.get("times", {}).get("torch|grad", [float("nan")]))
        keys = ["torch|grad"] + [f"{lib}|{op}" for op in t.get("ops", []) for lib in t["libs"]]
        for key in keys:
            lib, op = key.split("|")
            ts = t.get("times", {}).get(key)
            p = peaks.get((lib, op), {})
            row = {"model": mdl, "batch": t["batch"], "n": t.get("n"), "lib": lib, "op": op,
                   "k": t["k"] if op == "probe" else None}  # fmt: skip
            if "error" in t:
                row["error"] = t["error"]
            elif ts:
                row["time_s"] = statistics.median(ts)
                row["times"] = ts
                row["time_x_grad"] = row["time_s"] / tg
            else:
                row["error"] = t.get("errors", {}).get(key) or t.get("errors", {}).get(lib)
            if key in t.get("extra", {}):
                row.update(t["extra"][key])
            if key in t.get("inproc_peak_mib", {}):
                row["inproc_peak_mib"] = t["inproc_peak_mib"][key]
            if "peak_mib" in p:
                row["peak_mib"] = p["peak_mib"]
                row["isolated_wall_s"] = p["wall_s"]
                if "peak_mib" in g:
                    row["mem_x_grad"] = p["peak_mib"] / g["peak_mib"]
            elif "error" in p:
                row["rss_error"] = p["error"]
            rows.append(row)
    return rows


# =========================================================================== pytest
def test_peers_accuracy():
    result = {"env_start": environment(), **accuracy()}
    result["env_end"] = environment()
    write_json(ACC_OUT, result)
    bad = []
    for r in result["rows"]:
        if r["lib"] != "prm_check":
            continue
        limit = {"HVP": 1e-8, "trace": 3.0, "diagonal": 1.5}.get(r["quantity"], 1.0)
        value = r.get("rel_err") if r["quantity"] == "HVP" else r.get("z")
        if "error" in r or value is None or value > limit:
            bad.append(r)
    assert not bad, f"prm_check disagrees with the exact Hessian beyond its errors: {bad}"


def test_peers_speed():
    result = speed()
    write_json(SPEED_OUT, result)
    bad = [r for r in result["rows"] if r["lib"] in ("prm_check", "torch") and "error" in r]
    assert not bad, bad


def _gate_case():
    import torch

    torch.set_num_threads(2)
    model = opt_model("tiny")
    batch = token_batch(model.config.vocab_size, 2)
    return model, batch


def test_gate_hvp_tiny(benchmark):
    """Stable, short pytest-benchmark item for ``--benchmark-compare-fail`` gating:
    one prm_check HVP (graph build + product) on the tiny shape at 2×128."""
    import torch

    model, batch = _gate_case()
    ad = ADAPTERS["prm_check"](model, batch, None)
    v = torch.randn(ad.op.n, generator=torch.Generator().manual_seed(3))
    benchmark.pedantic(ad.hvp, args=(v,), rounds=5, iterations=1, warmup_rounds=1)


def test_gate_probe_tiny(benchmark):
    """Gate item: 8 Hutchinson probes through one graph on the tiny shape at 2×128."""
    model, batch = _gate_case()
    ad = ADAPTERS["prm_check"](model, batch, None, probes_per_graph=8)
    benchmark.pedantic(ad.probes, args=(8, SEED), rounds=3, iterations=1, warmup_rounds=1)


if __name__ == "__main__":
    if not worker_main(worker):
        import json

        print(json.dumps(accuracy() if "--accuracy" in sys.argv else speed(), default=str)[:4000])
