"""Parameter units (tensor / neuron / head) as index blocks into named parameters.

Id convention shared by the project: tensor unit = owning module name
(``model.decoder.layers.1.fc1``); neuron unit = ``f"{module}[{row}]"`` = one output of a
Linear (weight row + bias entry) or a GPT-2 ``Conv1D`` (weight *column* + bias entry);
head unit = ``f"{attention_module}.head[{h}]"`` = head h's rows of q/k/v (+ biases) and its
input columns of the output projection (GPT-2: the matching ``c_attn`` columns and
``c_proj`` rows). The output projection's bias is shared by all heads, so it is in no
head unit.

Coverage: a parameter tensor belongs to the module that *owns* its canonical name, so a
tied ``lm_head`` (same tensor as the token embedding) yields no units of its own. At
``neuron`` granularity only Linear/Conv1D weights and biases are covered (embeddings,
LayerNorms and positional tables get no unit); at ``head`` granularity only attention
q/k/v/out weights are. Unselected parameters are left out of every unit; a unit left
with nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prm_check.curvature.params import ParamSpec, select_parameters
from prm_check.errors import CurvatureError

GRANULARITIES = ("tensor", "neuron", "head")
Index = tuple  # a tuple of ints / slices indexing one parameter tensor
ALL = slice(None)


@dataclass(frozen=True)
class Unit:
    """One unit: ``slices`` maps a canonical parameter name to the index blocks it owns."""

    id: str
    granularity: str
    module: str
    slices: dict[str, tuple[Index, ...]]

    def gather(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The unit's entries of per-parameter ``tensors`` (shaped like the parameters), 1-D."""
        parts = [
            tensors[name][idx].reshape(-1) for name, blocks in self.slices.items() for idx in blocks
        ]
        return torch.cat(parts)

    def numel(self, shapes: dict[str, torch.Size]) -> int:
        probe = {n: torch.empty(shapes[n], device="meta") for n in self.slices}
        return int(sum(probe[n][idx].numel() for n, bl in self.slices.items() for idx in bl))


def _is_conv1d(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _owned(model: torch.nn.Module, chosen: set[str]) -> dict[str, dict[str, str]]:
    """module name -> {local param name: canonical name} for selected, owned tensors."""
    out: dict[str, dict[str, str]] = {}
    for mod_name, mod in model.named_modules():
        for local, _ in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{local}" if mod_name else local
            if full in chosen:
                out.setdefault(mod_name, {})[local] = full
    return out


def _neuron_units(model, owned) -> list[Unit]:
    units: list[Unit] = []
    for mod_name, mod in model.named_modules():
        own = owned.get(mod_name, {})
        if not own or not (isinstance(mod, torch.nn.Linear) or _is_conv1d(mod)):
            continue
        conv = _is_conv1d(mod)
        rows = mod.weight.shape[1] if conv else mod.weight.shape[0]
        for r in range(rows):
            sl: dict[str, tuple[Index, ...]] = {}
            if "weight" in own:
                sl[own["weight"]] = ((ALL, r),) if conv else ((r, ALL),)
            if "bias" in own:
                sl[own["bias"]] = ((r,),)
            units.append(Unit(f"{mod_name}[{r}]", "neuron", mod_name, sl))
    return units


def _head_units(model, owned) -> list[Unit]:
    units: list[Unit] = []
    for mod_name, mod in model.named_modules():
        heads = getattr(mod, "num_heads", None)
        opt_like = all(hasattr(mod, a) for a in ("q_proj", "k_proj", "v_proj", "out_proj"))
        gpt2_like = hasattr(mod, "c_attn") and hasattr(mod, "c_proj")
        if heads is None or not (opt_like or gpt2_like):
            continue
        d = mod.head_dim
        embed = d * heads
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            sl: dict[str, tuple[Index, ...]] = {}

            def put(
                sub: str, local: str, blocks: tuple[Index, ...], sl=sl, prefix=mod_name
            ) -> None:
                name = owned.get(f"{prefix}.{sub}", {}).get(local)
                if name is not None:
                    sl[name] = blocks

            if opt_like:
                for sub in ("q_proj", "k_proj", "v_proj"):
                    put(sub, "weight", ((cols, ALL),))
                    put(sub, "bias", ((cols,),))
                put("out_proj", "weight", ((ALL, cols),))
            else:
                qkv = tuple(slice(o + h * d, o + (h + 1) * d) for o in (0, embed, 2 * embed))
                put("c_attn", "weight", tuple((ALL, c) for c in qkv))
                put("c_attn", "bias", tuple((c,) for c in qkv))
                put("c_proj", "weight", ((cols, ALL),))
            if sl:
                units.append(Unit(f"{mod_name}.head[{h}]", "head", mod_name, sl))
    return units


def enumerate_units(
    model: torch.nn.Module, granularity: str = "neuron", params: ParamSpec = None
) -> list[Unit]:
    """All units of ``granularity`` over the selected parameters, in model order."""
    if granularity not in GRANULARITIES:
        raise CurvatureError(f"unknown granularity {granularity!r}; expected {GRANULARITIES}")
    chosen = {n for n, _ in select_parameters(model, params)}
    owned = _owned(model, chosen)
    if granularity == "tensor":
        units = [
            Unit(mod, "tensor", mod, {full: ((...,),) for full in own.values()})
            for mod, own in owned.items()
        ]
    elif granularity == "neuron":
        units = _neuron_units(model, owned)
    else:
        units = _head_units(model, owned)
    if not units:
        raise CurvatureError(
            f"no {granularity} units among the selected parameters ({sorted(chosen)[:4]}...)"
        )
    return units
