"""`python -m benchmarks [NAME ...] [--quick] [--scale 10000,40000,160000] [--out DIR] [--keep]`."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import traceback
from pathlib import Path

BENCHMARKS = {  # name -> module; run in this order
    "input": "benchmarks.input_pipeline",
    "train": "benchmarks.train_overhead",
    "predict": "benchmarks.prediction",
    "scale": "benchmarks.scale",
    "cv": "benchmarks.cv",
    "gpu": "benchmarks.gpu",
    "precision": "benchmarks.precision",
    "recipes": "benchmarks.recipes",
    "tricks": "benchmarks.tricks",
    "budget": "benchmarks.budget",
}


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="aigc's performance benchmarks.")
    parser.add_argument("names", nargs="*", type=benchmark, metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: everything in about two minutes")
    parser.add_argument("--scale", type=sizes, help="total images of each scale run, e.g. 10000,40000,160000")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="where results.json/.md/.png go (default: benchmarks/results)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (data, caches, store, logs)")
    return parser.parse_args(argv)


def benchmark(name: str) -> str:
    if name not in BENCHMARKS:
        raise argparse.ArgumentTypeError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return name


def sizes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated image counts, got {text!r}") from None
    if not values or min(values) < 100:
        raise argparse.ArgumentTypeError("each scale size must be >= 100 images")
    return values


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks import report
    from benchmarks.machine import describe
    from benchmarks.workspace import FULL, QUICK, open_workspace

    quiet()
    chosen = QUICK if args.quick else FULL
    if args.scale:
        chosen = dataclasses.replace(chosen, scale=args.scale)
    out, machine = args.out.resolve(), describe()  # before the workspace changes the working directory
    with open_workspace(chosen, args.keep) as ws:
        results = [run_one(name, ws) for name in args.names or BENCHMARKS]
    command = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    paths = report.write(results, machine, out, command.strip())
    print("\n" + report.markdown(results, machine, command.strip()))
    print("written: " + ", ".join(map(str, paths)))
    return 1 if any(r.error for r in results) else 0


def quiet() -> None:
    """Library chatter down to warnings: the figures are the output."""
    import logging
    import warnings

    import mlflow  # noqa: F401 - it configures its logger on import; the level must be set after

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes: every fresh model retraces
    for module in ("mlflow", "keras"):  # schema hints and shuffle notes about our synthetic inputs
        warnings.filterwarnings("ignore", category=UserWarning, module=module)


def run_one(name: str, ws):
    """Run one benchmark, print its figures; a failure is recorded and the others still run."""
    from benchmarks.figures import Result, Skip
    from benchmarks.timing import Stopwatch
    from benchmarks.workspace import say

    say(f"== {name}")
    with Stopwatch() as watch:
        try:
            result = importlib.import_module(BENCHMARKS[name]).run(ws)
        except Skip as skip:
            result = Result(name, skipped=str(skip))
        except Exception as error:  # noqa: BLE001 - report it, keep measuring the rest
            traceback.print_exc()
            result = Result(name, error=f"{type(error).__name__}: {error}")
    result.seconds = watch.seconds
    for line in [f.line() for f in result.figures] + result.notes:
        say(f"  {line}")
    if result.skipped or result.error:
        say(f"  {'skipped' if result.skipped else 'FAILED'}: {result.skipped or result.error}")
    say(f"  ({watch.seconds:.0f} s)")
    return result


if __name__ == "__main__":
    sys.exit(main())
