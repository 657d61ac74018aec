"""Predict the peak memory of a heavy step before running it, and pick a micro-batch.

Why a model and not a trial run: OPT-1.3b/2.7b must be planned on a box that cannot hold
them, so parameters are counted on the ``meta`` device and the peak is a formula:

    peak = RUNTIME + P·d·(1 + alpha[m]) + (beta_layers[m]·A_L + beta_logits[m]·A_V)·d
           (+ m·P·d Krylov basis for Lanczos/SLQ)
    A_L = mb·S·L·(12·h + 2·f + 3·heads·S),   A_V = mb·S·V      (elements)

``P`` parameters, ``d`` bytes per element, ``L`` layers, ``h`` hidden, ``f`` ffn, ``V``
vocab. ``A_L`` counts what an eager OPT forward saves per token and layer (layer-norm in/out,
q/k/v, attention scores/probabilities per head, fc1 in/out, residuals); ``A_V`` is one
logits-sized tensor. Two activation terms because the peak sits at different moments: for
a small model it is the end of the forward (layer activations), for OPT-125m the end of the
backward (gradients complete, layer activations freed, logit gradients alive). The terms
are added, not max-ed, which errs on the safe side. More micro-batches cost time, not
memory: the operator sums them into the output buffer it always holds (inside ``alpha``).
Coefficients are fitted per method by :func:`calibrate` (non-negative least squares in
relative error). Predictions are of the absolute peak RSS of a guarded child (spawn +
torch + transformers included), i.e. what ``run_guarded`` meters; float32 on CPU is
calibrated, other dtypes are only scaled by bytes per element.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prm_check.budget.parse import parse_size
from prm_check.budget.steps import DTYPES, METHODS
from prm_check.errors import BudgetError
from prm_check.units_fmt import format_bytes

_OPT_COMMON = {"vocab_size": 50272, "max_position_embeddings": 2048}
# Real OPT configurations (facebook/opt-* config.json), typed in: nothing is downloaded.
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "builtin:tiny-opt": {
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "ffn_dim": 512,
        "vocab_size": 2048,
        "max_position_embeddings": 256,
        "word_embed_proj_dim": 128,
    },
    "opt-125m": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "ffn_dim": 3072, "word_embed_proj_dim": 768, **_OPT_COMMON},
    "opt-350m": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                 "ffn_dim": 4096, "word_embed_proj_dim": 512, "do_layer_norm_before": False,
                 **_OPT_COMMON},
    "opt-1.3b": {"hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32,
                 "ffn_dim": 8192, "word_embed_proj_dim": 2048, **_OPT_COMMON},
    "opt-2.7b": {"hidden_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 32,
                 "ffn_dim": 10240, "word_embed_proj_dim": 2560, **_OPT_COMMON},
}  # fmt: skip

# Fitted by calibrate() on 2026-12-04, this 2-core / 24 GiB box, torch 2.13.0+cpu,
# transformers 5.25, float32, engine = HessianOperator (one probe per graph), S = 128:
# tiny OPT at mb 1/4/16 and OPT-125m shape at mb 1/2/4, 18 guarded points, in-sample
# error <= 2.6 %. RUNTIME is the RSS of a spawned child after importing torch +
# transformers and building OPT classes (measured 377-406 MiB). Lanczos/SLQ reuse the
# hvp_rev fit plus the m-vector basis: that addition is by construction, not fitted.
RUNTIME_BYTES = 400 * 2**20
ALPHA: dict[str, float] = {"gradient": 2.911, "hvp_rev": 4.903, "hvp_fwd": 6.425}
BETA_LAYERS: dict[str, float] = {"gradient": 0.9727, "hvp_rev": 4.049, "hvp_fwd": 3.804}
BETA_LOGITS: dict[str, float] = {"gradient": 0.0, "hvp_rev": 0.0, "hvp_fwd": 12.45}
FIT_NOTE = "fitted 2026-12-04 on 18 guarded HessianOperator steps, float32, CPU"
ACT_WEIGHTS = (12.0, 2.0, 3.0)  # per token and layer: c1·h + c2·f + c3·heads·S


@dataclass(frozen=True)
class ModelShape:
    """The sizes a plan needs; ``n_params`` is counted on the meta device."""

    name: str
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    n_params: int
    config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def count_parameters(config: dict[str, Any]) -> int:
    """Parameters of an OPT with ``config``, built on ``meta`` (no memory, no download)."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    with torch.device("meta"):
        model = OPTForCausalLM(OPTConfig(**config))
    return sum(p.numel() for p in model.parameters())


def _shape_from_folder(path: Path) -> ModelShape:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise BudgetError(
            f"model {str(path)!r} is neither a known shape ({', '.join(KNOWN_SHAPES)}) "
            "nor a folder with config.json"
        )
    cfg = json.loads(cfg_file.read_text())

    def get(*keys: str, default: Any = None) -> Any:
        for k in keys:
            if k in cfg:
                return cfg[k]
        if default is None:
            raise BudgetError(f"{cfg_file}: none of {keys} present; cannot plan this model")
        return default

    hidden = int(get("hidden_size", "n_embd", "d_model"))
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_cfg)
    return ModelShape(
        name=str(path),
        hidden=hidden,
        layers=int(get("num_hidden_layers", "n_layer", "num_layers")),
        heads=int(get("num_attention_heads", "n_head")),
        ffn=int(get("ffn_dim", "intermediate_size", "n_inner", default=4 * hidden) or 4 * hidden),
        vocab=int(get("vocab_size")),
        n_params=sum(p.numel() for p in model.parameters()),
        config=cfg,
    )


def resolve_shape(spec: str) -> ModelShape:
    """``builtin:tiny-opt``, ``opt-125m`` ... ``opt-2.7b`` (also ``facebook/opt-*``), or a
    local folder with ``config.json``."""
    key = spec.removeprefix("facebook/")
    if key in KNOWN_SHAPES:
        c = KNOWN_SHAPES[key]
        return ModelShape(
            name=key,
            hidden=c["hidden_size"],
            layers=c["num_hidden_layers"],
            heads=c["num_attention_heads"],
            ffn=c["ffn_dim"],
            vocab=c["vocab_size"],
            n_params=count_parameters(c),
            config=dict(c),
        )
    return _shape_from_folder(Path(spec))


def activation_elements(shape: ModelShape, micro_batch: int, seq: int) -> tuple[float, float]:
    """Structural counts ``(A_L, A_V)`` of activation elements (see module docstring)."""
    c1, c2, c3 = ACT_WEIGHTS
    per_layer = c1 * shape.hidden + c2 * shape.ffn + c3 * shape.heads * seq
    tokens = float(micro_batch) * seq
    return tokens * shape.layers * per_layer, tokens * shape.vocab


def _method_key(method: str) -> str:
    if method not in METHODS:
        raise BudgetError(f"method {method!r} unknown; expected one of {', '.join(METHODS)}")
    return "hvp_rev" if method in ("lanczos", "slq") else method


def predict_terms(
    shape: ModelShape,
    method: str,
    micro_batch: int,
    seq: int,
    dtype: str = "float32",
    m: int = 0,
    n_micro: int = 1,  # kept for callers; micro-batch count does not change the peak
) -> dict[str, float]:
    """Predicted peak split into named terms (bytes); their sum is the predicted peak."""
    if dtype not in DTYPES:
        raise BudgetError(f"dtype {dtype!r} unknown; expected one of {', '.join(DTYPES)}")
    key = _method_key(method)
    d = DTYPES[dtype]
    pd = shape.n_params * d
    a_l, a_v = activation_elements(shape, micro_batch, seq)

    def act(k: str) -> float:
        return (BETA_LAYERS[k] * a_l + BETA_LOGITS[k] * a_v) * d

    terms = {
        "runtime": float(RUNTIME_BYTES),
        "weights": float(pd),
        "gradients": ALPHA["gradient"] * pd,
        "activations": act("gradient"),
        "hvp buffers": 0.0,
        "hvp activations": 0.0,
        "krylov basis": 0.0,
    }
    if key != "gradient":
        terms["hvp buffers"] = (ALPHA[key] - ALPHA["gradient"]) * pd
        terms["hvp activations"] = act(key) - act("gradient")
    if method in ("lanczos", "slq"):
        terms["krylov basis"] = float(max(m, 1)) * pd
    return terms


_ACT_TERMS = ("activations", "hvp activations")


@dataclass(frozen=True)
class Plan:
    """A step's predicted peak and the micro-batch chosen for ``budget`` (None: no fit)."""

    model: str
    n_params: int
    method: str
    dtype: str
    batch: int
    seq: int
    budget: int | None
    micro_batch: int | None
    n_micro: int
    terms: dict[str, float]
    predicted_peak: float
    fits: bool
    reason: str
    m: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _too_big(terms: dict[str, float], budget: int, shape: ModelShape, seq: int, **kw) -> str:
    fixed = {k: v for k, v in terms.items() if k not in _ACT_TERMS}
    fixed_sum = sum(fixed.values())
    if fixed_sum > budget:
        big = max((k for k in fixed if k != "runtime"), key=lambda k: fixed[k])
        return (
            f"cannot fit: size-of-model terms alone need {format_bytes(fixed_sum)} > budget "
            f"{format_bytes(budget)}; largest is {big} ({format_bytes(fixed[big])}); use a "
            f"smaller parameter subset or dtype, or a budget >= {format_bytes(fixed_sum)}"
        )
    s_fit = max(
        (s for s in range(2, seq) if sum(predict_terms(shape, micro_batch=1, seq=s, **kw).values())
         <= budget),
        default=None,
    )  # fmt: skip
    hint = f"shorten sequences to <= {s_fit} tokens" if s_fit else "no sequence length fits"
    act = sum(terms[k] for k in _ACT_TERMS)
    return (
        f"cannot fit: activations (+HVP activations) of one sequence of {seq} tokens need "
        f"{format_bytes(act)}, leaving {format_bytes(budget - fixed_sum)} after the "
        f"size-of-model terms; {hint}, or a budget >= {format_bytes(fixed_sum + act)}"
    )


def plan(
    model_spec: str | ModelShape,
    batch: int,
    seq: int,
    budget: int | str | None,
    method: str = "hvp_rev",
    dtype: str = "float32",
    m: int = 0,
) -> Plan:
    """Largest micro-batch ``mb <= batch`` whose predicted peak fits ``budget``.

    With ``budget=None`` the whole batch is planned as one micro-batch.
    """
    shape = model_spec if isinstance(model_spec, ModelShape) else resolve_shape(model_spec)
    if batch < 1 or seq < 2:
        raise BudgetError(f"need batch >= 1 and seq >= 2, got batch={batch}, seq={seq}")
    limit = None if budget is None else parse_size(budget)
    kw = {"method": method, "dtype": dtype, "m": m}
    chosen, terms = None, {}
    for mb in range(batch, 0, -1):
        n_micro = math.ceil(batch / mb)
        terms = predict_terms(shape, micro_batch=mb, seq=seq, n_micro=n_micro, **kw)
        if limit is None or sum(terms.values()) <= limit:
            chosen = mb
            break
    fits = chosen is not None
    if fits:
        reason = "fits" if limit is None else f"fits in {format_bytes(limit)}"
    else:
        terms = predict_terms(shape, micro_batch=1, seq=seq, n_micro=batch, **kw)
        reason = _too_big(terms, limit or 0, shape, seq, **kw)
    return Plan(
        model=shape.name,
        n_params=shape.n_params,
        method=method,
        dtype=dtype,
        batch=batch,
        seq=seq,
        budget=limit,
        micro_batch=chosen,
        n_micro=math.ceil(batch / chosen) if chosen else batch,
        terms=terms,
        predicted_peak=sum(terms.values()),
        fits=fits,
        reason=reason,
        m=m,
    )


def predict_peak(model_spec: str | ModelShape, method: str, micro_batch: int, seq: int,
                 dtype: str = "float32", m: int = 0) -> float:  # fmt: skip
    """Predicted absolute peak RSS (bytes) of one ``method`` step on ``micro_batch`` x ``seq``."""
    shape = model_spec if isinstance(model_spec, ModelShape) else resolve_shape(model_spec)
    return sum(predict_terms(shape, method, micro_batch, seq, dtype, m).values())


@dataclass(frozen=True)
class Calibration:
    """Fitted coefficients per method and the guarded measurements behind them."""

    runtime_bytes: int
    alpha: dict[str, float]
    beta_layers: dict[str, float]
    beta_logits: dict[str, float]
    rows: tuple[dict[str, Any], ...]


def measure_points(
    models: Sequence[str] = ("builtin:tiny-opt", "opt-125m"),
    batches: dict[str, Sequence[int]] | None = None,
    seq: int = 128,
    methods: Sequence[str] = ("gradient", "hvp_rev", "hvp_fwd"),
    memory: str = "10GiB",
    engine: str = "auto",
) -> list[dict[str, Any]]:
    """Run each step in a fresh guarded child (a fresh heap per point) and meter it."""
    from prm_check.budget.guard import run_guarded
    from prm_check.budget.steps import run_step

    batches = batches or {"builtin:tiny-opt": (1, 4, 16), "opt-125m": (1, 2, 4)}
    rows = []
    for name in models:
        shape = resolve_shape(name)
        for method in methods:
            for mb in batches.get(name, (1, 2, 4)):
                res = run_guarded(
                    run_step, shape.config, method, mb, seq, engine=engine,
                    memory=memory, seconds=1800,
                    stage=f"calibrate {name} {method} {mb}x{seq}",
                    preload=("torch", "transformers"),
                )  # fmt: skip
                rows.append({"model": name, "method": method, "batch": mb, "seq": seq,
                             **res.value})  # fmt: skip
    return rows


def fit(rows: Sequence[dict[str, Any]], runtime_bytes: int = RUNTIME_BYTES) -> Calibration:
    """Non-negative least squares, in *relative* error, of ``peak - runtime - weights``."""
    import numpy as np
    from scipy.optimize import nnls

    coefs: dict[str, list[float]] = {}
    shapes = {name: resolve_shape(name) for name in {r["model"] for r in rows}}
    for method in sorted({r["method"] for r in rows}):
        x, y = [], []
        for r in (r for r in rows if r["method"] == method):
            shape = shapes[r["model"]]
            d = DTYPES[r.get("dtype", "float32")]
            a_l, a_v = activation_elements(shape, r["batch"], r["seq"])
            peak = r["peak_rss_bytes"]
            x.append([shape.n_params * d / peak, a_l * d / peak, a_v * d / peak])
            y.append((peak - runtime_bytes - shape.n_params * d) / peak)
        coefs[method] = [float(c) for c in nnls(np.array(x), np.array(y))[0]]
    return Calibration(
        runtime_bytes,
        {k: c[0] for k, c in coefs.items()},
        {k: c[1] for k, c in coefs.items()},
        {k: c[2] for k, c in coefs.items()},
        tuple(rows),
    )


def calibrate(**kwargs: Any) -> Calibration:
    """Re-derive ``ALPHA``/``BETA`` on this machine (minutes: OPT-125m HVPs at 1, 2, 4 x 128).

    Prints nothing and edits nothing: paste the returned ``alpha``/``beta_*`` into ALPHA,
    BETA_LAYERS and BETA_LOGITS. ``benchmarks/bench_budget.py`` checks them (±20 %).
    """
    return fit(measure_points(**kwargs))
