"""Choose the parameter subset a curvature computation differentiates with respect to.

Why a subset: the Hessian of a 125M-parameter model is never formed, but even its products
cost memory proportional to the parameters differentiated; restricting autograd to (say)
the transformer blocks cuts both time and memory, and the tied embedding dominates the
second backward pass (see FACTS.md).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from prm_check.errors import CurvatureError

ParamSpec = str | Sequence[str] | None


def _matches(pattern: str, name: str) -> bool:
    """Exact name, glob (``*``, ``?``, ``[``), or a regex (``re:`` prefix) matched in full."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def select_parameters(
    model: torch.nn.Module, params: ParamSpec = None
) -> list[tuple[str, torch.nn.Parameter]]:
    """Named parameters chosen by ``params``, in model order, each tensor once.

    ``None`` takes every parameter with ``requires_grad``. A string or a list of strings
    are patterns: an exact name, a glob (``"model.decoder.layers.*"``) or a regular
    expression prefixed ``"re:"``. A pattern that matches nothing is an error naming it
    (a typo must not silently shrink the subset). Tied weights appear once, under the
    first name PyTorch gives them.
    """
    named = list(model.named_parameters())  # deduplicates tied tensors
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
        if not chosen:
            raise CurvatureError("the model has no parameter with requires_grad=True")
        return chosen
    patterns = [params] if isinstance(params, str) else list(params)
    if not patterns:
        raise CurvatureError("empty parameter subset: params=[] selects nothing")
    for pat in patterns:
        if not isinstance(pat, str):
            raise CurvatureError(f"parameter pattern must be a string, got {pat!r}")
        if not any(_matches(pat, n) for n, _ in named):
            close = [n for n, _ in named][:5]
            raise CurvatureError(
                f"unknown parameter name or pattern {pat!r}: it matches no parameter "
                f"(names look like {close})"
            )
    return [(n, p) for n, p in named if any(_matches(pat, n) for pat in patterns)]


@contextmanager
def only_these_require_grad(
    model: torch.nn.Module, chosen: Sequence[torch.nn.Parameter]
) -> Iterator[None]:
    """Temporarily switch ``requires_grad`` off outside ``chosen`` so autograd records
    (and keeps in memory) only what the subset needs; the flags are restored on exit."""
    keep = {id(p) for p in chosen}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
