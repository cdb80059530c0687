"""The `kernelib` command: run a config, re-render reports, list parameters."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kernelib.errors import ConfigError, KernelibError


def _cmd_run(args) -> int:
    from kernelib import pipeline

    run_root = pipeline.run(args.config, runs_dir=args.runs_dir, reports_dir=args.reports_dir,
                            run_id=args.run_id, kernel_name=args.kernel,
                            progress=not args.quiet)
    from pathlib import Path

    index = Path(args.reports_dir).resolve() / run_root.name / "index.html"
    print(f"run folder: {run_root}\nreport:     {index}")
    return 0


def _cmd_report(args) -> int:
    from kernelib import pipeline

    run_root = args.run or pipeline.latest_run(args.runs_dir)
    print(f"report: {pipeline.rerender(run_root, args.reports_dir).resolve()}")
    return 0


def _cmd_params(args) -> int:
    from kernelib import params

    for row in params.describe(args.stage):
        print(f"{row['stage']}.{row['name']}: {row['type']} = {row['default']!r}\n    {row['help']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kernelib", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="validate a YAML config and run the notebook chain")
    r.add_argument("config")
    r.add_argument("--run-id", default=None, help="name of the run folder (default: NAME-TIME)")
    r.add_argument("--runs-dir", default="runs")
    r.add_argument("--reports-dir", default="reports")
    r.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3 "
                   "of this environment)")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.set_defaults(fn=_cmd_run)
    rp = sub.add_parser("report", help="render the HTML reports of a run again (default: latest)")
    rp.add_argument("run", nargs="?", default=None)
    rp.add_argument("--runs-dir", default="runs")
    rp.add_argument("--reports-dir", default="reports")
    rp.set_defaults(fn=_cmd_report)
    pp = sub.add_parser("params", help="list every stage parameter with type, default and help")
    pp.add_argument("stage", nargs="?", default=None)
    pp.set_defaults(fn=_cmd_params)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KernelibError as err:
        print(f"kernelib: {type(err).__name__}: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    except KeyboardInterrupt:
        print("kernelib: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
