"""Command-line options, ini keys and the one precedence rule: marker > CLI > ini > spec.

Why one module: pytest-timeout's lesson — precedence stated once and applied everywhere, so a
budget never means one thing for spec items and another for hand-written tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from prm_check.errors import BudgetError

PROFILES = ("quick", "full")  # = prm_check.spec.PROFILES (not imported: keep addoption light)
DEFAULT_REPORT_DIR = "reports"
MARK_BUDGET = "prm_budget"
MARK_ITEM = "prm"


def add_options(parser: pytest.Parser) -> None:
    """Register every option with its ini twin (ini is the lowest precedence)."""
    group = parser.getgroup("prm_check", "PRM experiments as checks (prm_check)")
    group.addoption(
        "--prm-spec",
        action="append",
        default=[],
        metavar="PATH",
        help="experiment spec (*.prm.toml) to collect as tests and serve to the prm_spec / "
        "prm_run fixtures; repeatable (ini: prm_spec)",
    )
    group.addoption(
        "--prm-model",
        metavar="PATH",
        help="local Hugging Face model folder replacing every spec's model (ini: prm_model)",
    )
    group.addoption(
        "--prm-report-dir",
        metavar="DIR",
        help=f"where run reports go, one folder per experiment (default {DEFAULT_REPORT_DIR}/)",
    )
    group.addoption(
        "--prm-memory-budget",
        metavar="SIZE",
        help="memory budget of guarded steps, e.g. '2 GiB'; overrides ini and specs, "
        "a prm_budget marker overrides it",
    )
    group.addoption(
        "--prm-time-budget",
        metavar="DURATION",
        help="time budget of guarded steps, e.g. '10 min'; same precedence as the memory one",
    )
    group.addoption(
        "--prm-baseline",
        metavar="PATH",
        help="gate each item's metrics against this baseline JSON (ini: prm_baseline)",
    )
    group.addoption(
        "--prm-update-baseline",
        action="store_true",
        default=False,
        help="rewrite the baseline from this run; items whose values changed fail once "
        "(regenerate, then commit)",
    )
    group.addoption(
        "--prm-force-baseline",
        action="store_true",
        default=False,
        help="rewrite the baseline from this run and pass",
    )
    group.addoption(
        "--prm-profile",
        choices=PROFILES,
        help="effort profile of specs: quick (CI) or full; default quick when $CI is set, "
        "else the ini prm_profile, else full",
    )
    parser.addini("prm_spec", "spec files for --prm-spec", type="paths", default=[])
    parser.addini("prm_model", "default for --prm-model", default="")
    parser.addini("prm_report_dir", "default for --prm-report-dir", default=DEFAULT_REPORT_DIR)
    parser.addini("prm_memory_budget", "default memory budget of guarded steps", default="")
    parser.addini("prm_time_budget", "default time budget of guarded steps", default="")
    parser.addini("prm_baseline", "default for --prm-baseline", default="")
    parser.addini("prm_profile", "default for --prm-profile (quick / full)", default="")
    parser.addini(
        "prm_stage_runner",
        "module:factory returning the stage runner (default: the real pipeline); "
        "factory(config) -> object with run_stage(stage, spec, model_override=...)",
        default="",
    )


def _cli_or_ini(config: pytest.Config, option: str, ini: str) -> str | None:
    value = config.getoption(option)
    if value is None or value == "":
        value = config.getini(ini)
    return str(value) if value not in (None, "") else None


def _path(config: pytest.Config, option: str, ini: str) -> Path | None:
    """A path option: CLI values are relative to the invocation dir, ini ones to the rootdir."""
    cli = config.getoption(option)
    if cli not in (None, ""):
        base, value = config.invocation_params.dir, str(cli)
    else:
        value = str(config.getini(ini) or "")
        if not value:
            return None
        base = config.inipath.parent if config.inipath else config.rootpath
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


@dataclass(frozen=True)
class Budget:
    """A resolved budget: bytes and seconds (None = unlimited) and where each came from."""

    memory: int | None = None
    seconds: float | None = None
    memory_from: str = "none"
    seconds_from: str = "none"

    def describe(self) -> str:
        from prm_check.units_fmt import format_bytes, format_seconds

        mem = "unlimited" if self.memory is None else format_bytes(self.memory)
        sec = "unlimited" if self.seconds is None else format_seconds(self.seconds)
        return f"memory {mem} ({self.memory_from}), time {sec} ({self.seconds_from})"


def _parsed(kind: str, value: Any, where: str) -> int | float:
    from prm_check.budget.parse import parse_duration, parse_size

    try:
        return parse_size(value) if kind == "memory" else parse_duration(value)
    except BudgetError as exc:
        raise BudgetError(f"{where}: {exc}") from None


def marker_budget(item: pytest.Item) -> dict[str, Any]:
    """``{"memory": .., "seconds": ..}`` from the closest ``prm_budget`` marker (may be {})."""
    mark = item.get_closest_marker(MARK_BUDGET)
    if mark is None:
        return {}
    if mark.args:
        raise BudgetError(
            f"{item.nodeid}: @pytest.mark.{MARK_BUDGET} takes keywords only, e.g. "
            f'(memory="2 GiB", seconds=600); got positional {mark.args!r}'
        )
    unknown = set(mark.kwargs) - {"memory", "seconds"}
    if unknown:
        raise BudgetError(
            f"{item.nodeid}: @pytest.mark.{MARK_BUDGET} knows memory= and seconds=, "
            f"not {', '.join(sorted(unknown))}"
        )
    return dict(mark.kwargs)


def resolve_budget(
    config: pytest.Config,
    item: pytest.Item | None,
    spec_memory: int | None = None,
    spec_seconds: float | None = None,
) -> Budget:
    """The effective budget: marker > CLI option > ini key > spec (for spec stages) > none.

    A marker value of ``None`` means "unlimited" explicitly; an absent key falls through.
    """
    marks = marker_budget(item) if item is not None else {}
    out: dict[str, Any] = {}
    for kind, option, ini, spec_value in (
        ("memory", "prm_memory_budget", "prm_memory_budget", spec_memory),
        ("seconds", "prm_time_budget", "prm_time_budget", spec_seconds),
    ):
        parse_kind = "memory" if kind == "memory" else "time"
        if kind in marks:
            value = marks[kind]
            where = f"@pytest.mark.{MARK_BUDGET}({kind}=...)"
            out[kind] = None if value is None else _parsed(parse_kind, value, where)
            out[f"{kind}_from"] = "marker"
            continue
        cli = config.getoption(option)
        ini_value = config.getini(ini)
        if cli not in (None, ""):
            out[kind] = _parsed(parse_kind, cli, "--" + option.replace("_", "-"))
            out[f"{kind}_from"] = "command line"
        elif ini_value not in (None, ""):
            out[kind] = _parsed(parse_kind, ini_value, f"ini {ini}")
            out[f"{kind}_from"] = "ini"
        elif spec_value is not None:
            out[kind] = spec_value
            out[f"{kind}_from"] = "spec"
        else:
            out[kind] = None
            out[f"{kind}_from"] = "none"
    return Budget(**out)


def profile(config: pytest.Config) -> str:
    """--prm-profile > $CI (quick) > ini prm_profile > full (hypothesis's CI-profile habit)."""
    from prm_check.spec import default_profile

    cli = config.getoption("prm_profile")
    if cli:
        return str(cli)
    if default_profile() == "quick":
        return "quick"
    ini = str(config.getini("prm_profile") or "").strip()
    if ini and ini not in PROFILES:
        raise pytest.UsageError(f"ini prm_profile = {ini!r}: expected one of {PROFILES}")
    return ini or "full"


def report_dir(config: pytest.Config) -> Path:
    return _path(config, "prm_report_dir", "prm_report_dir") or config.rootpath / "reports"


def model_override(config: pytest.Config) -> str | None:
    path = _path(config, "prm_model", "prm_model")
    return None if path is None else str(path)


def baseline_path(config: pytest.Config) -> Path | None:
    path = _path(config, "prm_baseline", "prm_baseline")
    if path is None and (
        config.getoption("prm_update_baseline") or config.getoption("prm_force_baseline")
    ):
        raise pytest.UsageError(
            "--prm-update-baseline / --prm-force-baseline need --prm-baseline PATH"
        )
    return path


def spec_paths(config: pytest.Config) -> list[Path]:
    """--prm-spec paths (relative to the invocation dir), else the ini prm_spec list."""
    cli = [Path(p) for p in config.getoption("prm_spec") or []]
    if cli:
        base = config.invocation_params.dir
        return [p if p.is_absolute() else base / p for p in cli]
    return [Path(p) for p in config.getini("prm_spec")]
