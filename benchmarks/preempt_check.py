"""SIGTERM an `isd train` run while it trains, time how long it takes to checkpoint and exit, resume it.

    PYTHONPATH=src python benchmarks/preempt_check.py --data .data/fashion-mnist --out preempt.json
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from isd.checkpoint import load


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="isd-r18-fmnist")
    ap.add_argument("--data", default=None, help="folder with the Fashion-MNIST .gz files")
    ap.add_argument("--after-rows", type=int, default=30, help="log rows (steps) to wait for before SIGTERM")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="isd_preempt_"))
    argv = [sys.executable, "-m", "isd", "train", "--recipe", args.recipe, "--run-dir", str(run_dir),
            "--set", "print_freq=1", "--set", "eval_every=0", *([args.data] if args.data else [])]
    err_file = open(run_dir / "stderr.txt", "w+")  # a file, not a pipe: progress bars would fill a pipe and block
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err_file, text=True)
    log = run_dir / "log.jsonl"
    while proc.poll() is None and not (log.exists() and sum(1 for _ in open(log)) >= args.after_rows):
        time.sleep(0.05)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    to_exit = time.perf_counter() - sent
    err_file.seek(0)
    err = err_file.read()
    state = load(run_dir / "ckpt_last.pth")
    rows = [json.loads(line) for line in open(log) if '"train"' in line]
    resumed = subprocess.run(argv + ["--resume", "auto", "--set", f"epochs={state['epoch']}"],
                             capture_output=True, text=True)
    result = {"exit_code": proc.returncode, "seconds_from_signal_to_exit": round(to_exit, 2),
              "steps_logged": rows[-1]["step"], "checkpoint": [state["epoch"], state["step_in_epoch"]],
              "message": err.strip().splitlines()[-1] if err.strip() else "",
              "resume_exit_code": resumed.returncode,
              "resume_says": [line for line in resumed.stdout.splitlines() if "resumed from" in line],
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["exit_code"] == 75 and resumed.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
