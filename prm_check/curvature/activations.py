"""Activation sparsity of each unit's output on a data set.

Definition: the fraction of the unit's output entries over valid (non-padding) tokens
with ``|a| ≤ 1e-3 · rms``, where rms is that module's output RMS over the same micro-batch's
valid tokens. For first MLP projections (``fc1``, GPT-2 ``c_fc``) the output is taken
*after* the block's activation, so for ReLU this counts exact zeros; other Linear/Conv1D
outputs are pre-activation (rarely exactly zero; the threshold makes "near zero" explicit).
A head's output is its slice of the attention context fed to the output projection.
Tensor units get the mean over their output channels; units with no Linear output
(embeddings, LayerNorms) get NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from prm_check.curvature.unitmap import Unit, _is_conv1d
from prm_check.data.batching import Batch

REL_THRESHOLD = 1e-3


def _activation_after(model: torch.nn.Module, name: str):
    parent_name, _, short = name.rpartition(".")
    if short not in ("fc1", "c_fc"):
        return None
    parent = model.get_submodule(parent_name) if parent_name else model
    return getattr(parent, "activation_fn", None) or getattr(parent, "act", None)


def activation_sparsity(
    model: torch.nn.Module, batches: Sequence[Batch], units: Sequence[Unit]
) -> np.ndarray:
    """One sparsity value per unit (NaN where undefined), see the module docstring."""
    linear = {
        n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) or _is_conv1d(m)
    }
    wanted_out = {u.module for u in units if u.granularity != "head" and u.module in linear}
    head_mods = {u.module for u in units if u.granularity == "head"}
    zeros: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    mask_holder: list[torch.Tensor] = []

    def record(key: str, a: torch.Tensor) -> None:
        valid = mask_holder[0].reshape(-1).bool()
        a = a.detach().reshape(-1, a.shape[-1])[valid]
        if a.numel() == 0:
            return
        # the RMS in float64 (a long sum); the comparison needs no more than the data's dtype
        rms = float(a.pow(2).sum(dtype=torch.float64) / a.numel()) ** 0.5
        small = (a.abs() <= REL_THRESHOLD * rms).sum(dim=0).double()
        zeros[key] = zeros.get(key, 0) + small
        counts[key] = counts.get(key, 0) + a.shape[0]

    handles = []
    for name in wanted_out:
        act = _activation_after(model, name)

        def hook(_m, _i, out, name=name, act=act):
            record(name, act(out) if act is not None else out)

        handles.append(linear[name].register_forward_hook(hook))
    for name in head_mods:
        mod = model.get_submodule(name)
        proj = getattr(mod, "out_proj", None) or mod.c_proj

        def pre(_m, args, name=name):
            record(name + "#heads", args[0])

        handles.append(proj.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            for batch in batches:
                mask_holder[:] = [batch.attention_mask]
                model(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
                )
    finally:
        for h in handles:
            h.remove()
    out = np.full(len(units), np.nan)
    for i, u in enumerate(units):
        if u.granularity == "head":
            key = u.module + "#heads"
            if key in zeros:
                mod = model.get_submodule(u.module)
                h = int(u.id.rsplit("[", 1)[1].rstrip("]"))
                d = mod.head_dim
                out[i] = float(zeros[key][h * d : (h + 1) * d].sum()) / (counts[key] * d)
        elif u.module in zeros:
            frac = zeros[u.module] / counts[u.module]
            if u.granularity == "neuron":
                out[i] = float(frac[int(u.id.rsplit("[", 1)[1].rstrip("]"))])
            else:
                out[i] = float(frac.mean())
    return out
