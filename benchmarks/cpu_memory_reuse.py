"""The CPU demo's step with glibc's default malloc against isd's kept freed memory (`isd.runtime.keep_freed_memory`).

`isd bench` runs in a fresh process per measurement, ISD_KEEP_FREED_MEMORY=0 and =1 alternating (so a host that
speeds up or slows down during the run hurts both sides alike), and each process's page faults are counted. One
JSON file: every run, the medians per side and the provenance of the first run.

    python benchmarks/cpu_memory_reuse.py --rounds 3 --out benchmarks/results/cpu_memory_reuse.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = ["bench", "--dataset", "fashion-mnist", "--recipe", "isd-fmnist-demo", "--device", "cpu",
         "--modes", "compute", "e2e"]
# the child prints its page faults after the bench: minor faults are pages the kernel had to find and zero
CHILD = ("import resource, sys; from isd.cli.main import main; code = main(sys.argv[1:]); "
         "print('minor_faults', resource.getrusage(resource.RUSAGE_SELF).ru_minflt); sys.exit(code)")


def bench_args(args: argparse.Namespace) -> list[str]:
    return [*BENCH, "--steps", str(args.steps), "--warmup", str(args.warmup), "--set", f"amp={args.amp}"]


def one_run(keep: bool, args: argparse.Namespace, out: Path) -> dict:
    env = {**os.environ, "ISD_KEEP_FREED_MEMORY": "1" if keep else "0"}
    cmd = [sys.executable, "-c", CHILD, *bench_args(args), "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    faults = int(done.stdout.split("minor_faults")[-1].split()[0])
    result = json.loads(out.read_text())
    rows = {row["mode"]: row["images_per_s"] for row in result["results"][0]["rows"]}
    print(f"keep_freed_memory={keep}: compute {rows['compute']:.1f} img/s, e2e {rows['e2e']:.1f} img/s, "
          f"{faults} page faults", flush=True)
    return {"keep_freed_memory": keep, "images_per_s": rows, "minor_page_faults": faults,
            # isd bench's steps in this process: the first, the FLOP count's, then warmup + steps per mode
            "training_steps": 2 + 2 * (args.warmup + args.steps),
            "provenance": {k: v for k, v in result.items() if k != "results"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="pairs of runs (default 3)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--amp", default="off", help="the step's precision (default off: fp32)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if not args.out.parent.is_dir():
        ap.error(f"--out {args.out}: folder {args.out.parent} does not exist; create it or pick another path")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for keep in (False, True) if r % 2 == 0 else (True, False):
                runs.append(one_run(keep, args, Path(tmp) / f"{r}-{keep}.json"))
    medians = {}
    for keep in (False, True):
        mine = [run for run in runs if run["keep_freed_memory"] == keep]
        medians["kept" if keep else "default"] = {
            mode: statistics.median(run["images_per_s"][mode] for run in mine) for mode in ("compute", "e2e")} | {
            "minor_page_faults": statistics.median(run["minor_page_faults"] for run in mine)}
    command = " ".join(["python", "benchmarks/cpu_memory_reuse.py", *sys.argv[1:]])
    summary = {"command": command, "bench": " ".join(["isd", *bench_args(args)]),
               "provenance": runs[0]["provenance"], "medians": medians, "runs": runs}
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    gain = medians["kept"]["e2e"] / medians["default"]["e2e"]
    print(f"median e2e: default {medians['default']['e2e']:.1f}, kept {medians['kept']['e2e']:.1f} img/s "
          f"({gain:.2f}x); wrote {args.out}")


if __name__ == "__main__":
    main()
