"""``*.prm.toml`` files as pytest modules of real, parametrized test functions.

Why a synthetic module rather than custom Item classes: pytest's own Module collector then
does parametrization, ids, ``-k`` / ``-m``, fixtures and xdist scheduling as for any Python
test file; we only supply the module object (``_getobj``, documented as the override point)
built from the parsed spec, so ``default.prm.toml::check[Wsens-0.3-delta_auc_loss]`` is an
ordinary ``Function`` item.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prm_check.errors import PrmCheckError
from prm_check.pytest_plugin import options, spec_items

SPEC_SUFFIX = ".prm.toml"
CURVATURE_LOSSES = ("func", "sens", "nonmember")


def load_for_session(path: Path, config: pytest.Config) -> Any:
    """Parse ``path`` and apply the session's profile (a spec pinned to a profile keeps it)."""
    from prm_check.spec import apply_profile, load_spec

    spec = load_spec(path)
    wanted = options.profile(config)
    if spec.profile == "full" and wanted != "full":
        spec = apply_profile(spec, wanted)
        object.__setattr__(spec, "source_path", str(path))
    return spec


def _item_function(name: str, body: Callable[..., None], module: str) -> Callable[..., None]:
    """A fresh function object per spec module, so marks never leak between modules."""
    fn = types.FunctionType(body.__code__, body.__globals__, name, body.__defaults__)
    fn.__doc__, fn.__qualname__, fn.__module__ = body.__doc__, name, module
    fn.__prm_item__ = True  # type: ignore[attr-defined]
    return fn


def build_module(spec: Any, path: Path) -> types.ModuleType:
    """The synthetic module of one spec: one test function per kind of check."""
    from prm_check.pipeline import STAGES

    slug = re.sub(r"\W", "_", str(path))
    mod = types.ModuleType(f"prm_spec__{slug}", f"Checks of experiment {spec.name!r}.")
    mod.__file__ = str(path)
    mod.__prm_spec__ = spec  # type: ignore[attr-defined]
    mod.pytestmark = [pytest.mark.prm]  # type: ignore[attr-defined]
    gran = spec.curvature.granularity

    def add(kind: str, argname: str | None = None, values=(), ids=None) -> None:
        fn = _item_function(kind, spec_items.ITEM_FUNCTIONS[kind], mod.__name__)
        if argname is not None:
            if not values:
                return  # nothing to check: no item rather than an "empty parameter set" skip
            fn = pytest.mark.parametrize(argname, list(values), ids=ids)(fn)
        setattr(mod, kind, fn)

    add("curvature", "loss", CURVATURE_LOSSES, ids=[f"{loss}-{gran}" for loss in CURVATURE_LOSSES])
    add("partition")
    add("sweep")
    add("check", "check_id", [c.id for c in spec.checks], ids=[c.id for c in spec.checks])
    add("fidelity", "variant", spec.fidelity.variants, ids=list(spec.fidelity.variants))
    add("budget", "stage", STAGES, ids=list(STAGES))
    return mod


class SpecModule(pytest.Module):
    """A spec file; a malformed one is a collection error naming the field, not a crash."""

    _prm_module: types.ModuleType | None = None

    def _getobj(self) -> types.ModuleType:
        if self._prm_module is None:
            try:
                spec = load_for_session(self.path, self.config)
            except PrmCheckError as exc:
                raise self.CollectError(f"{type(exc).__name__}: {exc}") from None
            self._prm_module = build_module(spec, self.path)
        return self._prm_module

    def istestfunction(self, obj: object, name: str) -> bool:
        return getattr(obj, "__prm_item__", False) is True

    def istestclass(self, obj: object, name: str) -> bool:
        return False


def collect_file(file_path: Path, parent: pytest.Collector) -> SpecModule | None:
    if not file_path.name.endswith(SPEC_SUFFIX):
        return None
    return SpecModule.from_parent(parent, path=file_path)
