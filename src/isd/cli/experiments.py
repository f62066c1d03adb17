"""`isd experiment` and `isd report`."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from isd.cli.common import Flags
from isd.errors import UsageError
from isd.experiments.plans import load_plan, plan_names, select
from isd.experiments.report import report, update_readme
from isd.experiments.runner import RESULT, read_result, run_cells


def register(sub) -> None:
    e = sub.add_parser(
        "experiment", help="run a grid of training runs (method x seed x draw) and write result files",
        description="Run the cells of a plan (a YAML grid of method x seed x draw) at one budget. Each cell is an "
        "ordinary run folder under the experiment folder and ends with result.json: 1-NN, 20-NN, weighted kNN, the "
        "linear probe, per-class accuracies, time, images/s and provenance. Running again skips finished cells and "
        "resumes unfinished ones; --only and --shard run part of the grid, and several processes may share one "
        "experiment folder. At the end, the tables and charts of `isd report` are written beside the cells.",
        epilog="examples:\n  isd experiment fmnist-balanced --budget smoke\n"
        "  isd experiment fmnist-balanced --budget gpu --jobs 4        # four cells at a time on one GPU\n"
        "  isd experiment fmnist-unbalanced --budget cpu --only method=isd,draw=1\n"
        "  isd experiment folder /data/photos --budget cpu --shard 1/2\n  isd experiment --list",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("plan", metavar="PLAN", nargs="?", help=f"a shipped plan ({', '.join(plan_names())}) or a plan "
                   ".yaml file")
    e.add_argument("data", metavar="DATA", nargs="?", default="", help="data folder (the folder plan's images; for "
                   "Fashion-MNIST, a folder with its .gz files, else the usual places)")
    e.add_argument("--budget", default="smoke", help="one of the plan's budgets: smoke (default), cpu, cpu-seeds, "
                   "gpu, full, ...; `isd experiment PLAN --list --budget B` and the plan say what each means")
    e.add_argument("--out", help="experiment folder (default runs/experiments/PLAN-BUDGET)")
    e.add_argument("--only", help="run the matching cells only: KEY=VALUE pairs, keys method, seed, draw, name "
                   "(e.g. method=isd,seed=1)")
    e.add_argument("--shard", help="run every N-th cell starting at the I-th: I/N (e.g. 2/5)")
    e.add_argument("--jobs", type=int, default=1, help="cells run at once by worker processes (default 1; several "
                   "fill a GPU that one small-image run leaves idle)")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: GPU if visible")
    e.add_argument("--list", action="store_true", help="list the plans, or PLAN's cells and their state, and exit")
    e.add_argument("--no-report", action="store_true", help="do not write the tables and charts at the end")
    e.set_defaults(handler=run_experiment, flags=Flags(e))

    r = sub.add_parser(
        "report", help="markdown tables and PNG charts from experiment folders",
        description="Read every result.json under the EXPDIRs and print markdown tables (mean ± std over seeds, n "
        "shown; per draw for unbalanced plans); write charts (accuracy per method, per class or rare classes, kNN "
        "against epoch and wall time) and report.md into each experiment folder. A .json file of `isd bench --out` "
        "or benchmarks/vs_original.py --out is printed as a speed table.",
        epilog="examples:\n  isd report runs/experiments/fmnist-balanced-smoke\n"
        "  isd report --readme README.md     # regenerate the README's generated result blocks",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("folders", metavar="EXPDIR", nargs="*", help="experiment folders (or speed .json files)")
    r.add_argument("--readme", metavar="FILE", help="regenerate the blocks between `<!-- begin: isd report "
                   "EXPDIR... -->` and `<!-- end: isd report -->` in FILE instead")
    r.set_defaults(handler=run_report, flags=Flags(r))


def run_experiment(args: argparse.Namespace) -> int:
    if not args.plan or args.list and not args.plan:
        if not args.list:
            raise UsageError("no PLAN given: pass one of " + ", ".join(plan_names()) + " (see `isd experiment --list`)")
        for name in plan_names():
            print(f"{name:22s} {load_plan(name).description.splitlines()[0][:100]}")
        return 0
    if not 1 <= args.jobs <= 64:
        raise UsageError(f"--jobs must be in [1, 64], got {args.jobs}")
    plan = load_plan(args.plan)
    cells = select(plan.cells(args.budget), args.only, args.shard)
    if not cells:
        raise UsageError(f"no cell of plan {plan.name} at budget {args.budget} matches --only {args.only}")
    out = Path(args.out or f"runs/experiments/{plan.name}-{args.budget}")
    if args.list:
        for cell in cells:
            state = "done" if read_result(out / cell.name) else "started" if (out / cell.name).is_dir() else "to do"
            print(f"{cell.name:32s} {state}")
        return 0
    for cell in cells:  # every cell's config, data and run folder are checked before the first one runs
        cell.config(out / cell.name, args.data)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"experiment folder {out} cannot be created ({err.strerror}); pass a writable --out") from None
    print(f"{plan.name}, budget {args.budget} ({plan.budget(args.budget).get('about', '')}): {len(cells)} cells "
          f"in {out}")
    if args.jobs > 1:
        run_workers(args, len(cells), out)
    else:
        run_cells(plan, cells, out, args.data, args.device)
    finished = [c for c in cells if read_result(out / c.name)]
    print(f"{len(finished)} of {len(cells)} cells finished")
    if finished and not args.no_report:
        print(report([str(out)]))
        print(f"tables and charts: {out}/report.md")
    return 0 if len(finished) == len(cells) else 1


def run_workers(args: argparse.Namespace, total: int, out: Path) -> None:
    """`--jobs N`: N copies of this command, each taking the next unclaimed cell; their output goes to
    EXPDIR/worker_I.log, and a line is printed here as each cell finishes."""
    base = [sys.executable, "-m", "isd", "experiment", args.plan, args.data, "--budget", args.budget, "--out", str(out),
            "--device", args.device, "--no-report"]
    for flag, value in (("--only", args.only), ("--shard", args.shard)):
        base += [flag, value] if value else []
    env = {**os.environ, "ISD_CONCURRENT_CELLS": os.environ.get("ISD_CONCURRENT_CELLS", str(args.jobs))}
    workers: list[tuple[subprocess.Popen, IO[str]]] = []

    def forward(signum, frame):  # a stop signal reaches every worker: each checkpoints and exits
        for p, _ in workers:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        for i in range(args.jobs):
            log = open(out / f"worker_{i + 1}.log", "w")
            workers.append((subprocess.Popen(base, stdout=log, stderr=subprocess.STDOUT, env=env), log))
            time.sleep(2)  # staggered, so that each claims a different first cell
        seen: set[Path] = set()
        while any(p.poll() is None for p, _ in workers):
            time.sleep(5)
            for path in sorted(out.glob(f"*/{RESULT}")):
                if path not in seen:
                    seen.add(path)
                    print(f"finished {path.parent.name} ({len(seen)}/{total})", flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for p, log_file in workers:
            p.wait()
            log_file.close()
            if p.returncode not in (0, 1):
                print(f"worker {log_file.name} exited with code {p.returncode}")


def run_report(args: argparse.Namespace) -> int:
    if args.readme:
        path = Path(args.readme)
        if not path.is_file():
            raise UsageError(f"--readme {path} does not exist")
        print(f"{update_readme(path)} block(s) regenerated in {path}")
        return 0
    if not args.folders:
        raise UsageError("no EXPDIR given: pass experiment folders (e.g. runs/experiments/fmnist-balanced-smoke)")
    print(report(args.folders))
    return 0
