"""Command line: ``prm-check run | build-default | plan | report | compare``.

Heavy imports happen inside each command so ``prm-check --help`` is instant. Every
:class:`~prm_check.errors.PrmCheckError` becomes one readable line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from prm_check.errors import PrmCheckError


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from prm_check.pipeline import run_experiment
    from prm_check.spec import apply_profile, default_profile, default_spec, load_spec

    spec = load_spec(args.spec) if args.spec else default_spec()
    profile = "quick" if args.quick else (args.profile or default_profile())
    spec = apply_profile(spec, profile)
    out = Path(args.out) if args.out else Path("reports") / spec.name
    result = run_experiment(
        spec, out, model_override=args.model, guard=not args.no_guard, progress=_progress
    )
    print(result.summary_table())
    print(f"\nwrote {out}/results.json, results.csv, units.csv and index.html")
    # A refuted hypothesis is a finding, reported above; --strict turns it into exit 1 for
    # scripts that gate on it (the pytest plugin's check[...] items are the usual gate).
    return 1 if args.strict and not result.all_checks_passed else 0


def cmd_build_default(args: argparse.Namespace) -> int:
    from prm_check.models.builtin import build_default

    path = build_default(seed=args.seed, force=args.force, progress=_progress)
    print(f"default assets ready in {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from prm_check.report.html import regenerate_report

    index = regenerate_report(Path(args.run_dir), progress=_progress)
    print(f"wrote {index}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from prm_check.fidelity import format_fidelity_table
    from prm_check.report.store import load_results

    results = load_results(Path(args.run_dir))
    fidelity = results.get("fidelity")
    if not fidelity:
        raise PrmCheckError(f"{args.run_dir}/results.json has no fidelity section; re-run it")
    print(format_fidelity_table(fidelity))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prm-check",
        description="Real Hessian statistics of causal LMs and the PRM experiment.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole experiment and write a report")
    run.add_argument("spec", nargs="?", help="experiment spec (.prm.toml); default: built-in")
    run.add_argument("--model", help="local model folder (save_pretrained layout) to use instead")
    run.add_argument("--out", help="report directory (default reports/<spec name>)")
    run.add_argument("--quick", action="store_true", help="the quick (CI) profile")
    run.add_argument("--profile", choices=["quick", "full"], help="spec profile")
    run.add_argument(
        "--no-guard", action="store_true", help="run stages in-process (measure, don't enforce)"
    )
    run.add_argument("--strict", action="store_true", help="exit 1 when a hypothesis check fails")
    run.set_defaults(func=cmd_run)

    build = sub.add_parser("build-default", help="build (or rebuild) the built-in default assets")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.set_defaults(func=cmd_build_default)

    try:
        from prm_check.budget.plan_cli import add_plan_parser
    except ImportError:  # pragma: no cover - only while the planner is absent
        add_plan_parser = None
    if add_plan_parser is not None:
        add_plan_parser(sub)

    report = sub.add_parser("report", help="regenerate figures and index.html from results.json")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)

    compare = sub.add_parser("compare", help="print the synthetic-vs-real fidelity table of a run")
    compare.add_argument("run_dir")
    compare.set_defaults(func=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PrmCheckError as exc:
        print(f"prm-check: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prm-check: interrupted; finished stages stay cached", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
