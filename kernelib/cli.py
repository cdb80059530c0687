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
                            progress=not args.quiet, force=args.force,
                            from_stage=args.from_stage, only=args.only, jobs=args.jobs,
                            executor=args.executor, address=args.address)
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


def _cmd_predict(args) -> int:
    from kernelib import runtimes

    rows = runtimes.predict_top_k(args.export_path, args.inputs, k=args.top_k,
                                  invert=args.invert)
    print(runtimes.format_top_k(rows))
    return 0


def _cmd_serve(args) -> int:
    from kernelib import serve

    serve.serve(args.path, host=args.host, port=args.port, runtime=args.runtime,
                max_batch_size=args.max_batch_size, batch_timeout_us=args.batch_timeout_us,
                max_body_bytes=args.max_body_bytes, poll_s=args.poll_seconds)
    return 0


def _add_serve(sub) -> None:
    sv = sub.add_parser("serve", help="serve an export folder over TF Serving's REST API and "
                        "the Open Inference Protocol (KServe V2)")
    sv.add_argument("path", metavar="RUN_DIR|EXPORT_DIR")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, "
                    "this machine only; 0.0.0.0 for every interface)")
    sv.add_argument("--port", type=int, default=8501)
    sv.add_argument("--runtime", default="auto", choices=["auto", "onnx", "litert", "saved_model"],
                    help="runtime (default auto: the fastest verified one in exports.json)")
    sv.add_argument("--max-batch-size", type=int, default=0, help="rows per dynamic batch "
                    "(default 0: no batching)")
    sv.add_argument("--batch-timeout-us", type=int, default=0, help="how long a batch waits for "
                    "more rows once the runtime is free (default 0)")
    sv.add_argument("--max-body-bytes", type=int, default=64 << 20,
                    help="largest request body accepted (default 64 MiB)")
    sv.add_argument("--poll-seconds", type=float, default=1.0,
                    help="how often the export folder is scanned for new versions")
    sv.set_defaults(fn=_cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kernelib", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="validate a YAML config and run the notebook chain")
    r.add_argument("config")
    r.add_argument("--run-id", default=None,
                   help="name of the run folder (default: NAME-TIME); an existing run id "
                        "resumes that run, reusing its finished stages")
    r.add_argument("--force", action="store_true", help="re-run every stage, ignoring the cache")
    r.add_argument("--from", dest="from_stage", metavar="STAGE", default=None,
                   help="re-run from this stage on (earlier stages may come from the cache)")
    r.add_argument("--only", metavar="STAGE", default=None,
                   help="run only this stage (or train:MEMBER); the rest must be cached")
    r.add_argument("--jobs", type=int, default=1,
                   help="train up to N members at once, as separate processes")
    r.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: this machine (--jobs); ray: every step a Ray task, with the "
                        "resources of run.resources and members' 'resources' (pip install "
                        "'kernelib[ray]')")
    r.add_argument("--address", default=None, help="--executor ray: the cluster to join (auto, "
                   "or ray://HEAD:10001); default: start Ray inside this command")
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
    pr = sub.add_parser("predict", help="top-k classes of images or an .npy array, computed by "
                        "an exported model (.keras, SavedModel folder, .tflite or .onnx)")
    pr.add_argument("export_path", metavar="EXPORT_PATH")
    pr.add_argument("inputs", metavar="INPUTS", help="a PNG/JPEG file, a folder of them, or "
                    "an .npy array of raw inputs")
    pr.add_argument("--top-k", type=int, default=3, help="classes shown per input (default: 3)")
    pr.add_argument("--invert", action="store_true", help="invert image pixels first (dark "
                    "ink on light paper, for models trained on light strokes on dark)")
    pr.set_defaults(fn=_cmd_predict)
    _add_serve(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KernelibError as err:
        print(f"kernelib: {type(err).__name__}: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    except KeyboardInterrupt as err:  # SIGINT, or SIGTERM during a run (pipeline.interrupts)
        print(f"kernelib: interrupted {err or ''}".rstrip(), file=sys.stderr)
        return 128 + getattr(err, "signum", 2)


if __name__ == "__main__":
    sys.exit(main())
