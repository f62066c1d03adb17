"""Kill test: SIGKILL a small deterministic CPU run at random moments, resume it each time with
`--resume auto`, and compare its final weights with an uninterrupted run's.

    PYTHONPATH=src python benchmarks/kill_test.py --kills 20 --out benchmarks/results/kill_test.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from isd.checkpoint import load

ROOT = Path(__file__).resolve().parents[1]


def make_images(root: Path, classes: int = 4, per_class: int = 16, size: int = 40) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 150, (size, size, 3), dtype=np.uint8)
            img[..., c % 3] += np.uint8(100)
            Image.fromarray(img).save(folder / f"{i}.png")


def command(data: Path, run_dir: Path, epochs: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "isd", "train", str(data), "--run-dir", str(run_dir), "--method", "isd",
            "--epochs", str(epochs), "--batch-size", "8", "--queue-size", "32", "--num-workers", "1",
            "--device", "cpu", "--seed", "7", "--set", "width=8", "--set", "stem=small", "--set", "image_size=32",
            "--set", "print_freq=1", *extra]


def final_state(run_dir: Path) -> dict:
    state = load(run_dir / "ckpt_last.pth")
    return {"model": state["state_dict"], "optimizer": state["optimizer"]["state"], "epoch": state["epoch"]}


def differences(a: dict, b: dict) -> list[str]:
    out = [f"model.{k}" for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    for index, slots in a["optimizer"].items():
        out += [f"optimizer.{index}.{k}" for k, v in slots.items() if not torch.equal(v, b["optimizer"][index][k])]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to deliver before letting the run finish")
    parser.add_argument("--epochs", type=int, default=40, help="8 steps each; enough that the kills come first")
    parser.add_argument("--window-steps", type=int, default=40,
                        help="kill moments are uniform in [0, start-up time + this many steps' time]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    work = Path(tempfile.mkdtemp(prefix="isd_kill_"))
    make_images(work / "data")

    start = time.time()
    proc = subprocess.Popen(command(work / "data", work / "reference", args.epochs, []), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = work / "reference" / "log.jsonl"
    while proc.poll() is None and not (log.exists() and log.stat().st_size > 0):
        time.sleep(0.01)
    startup_s = time.time() - start  # process start, imports, data listing, model: until the first step is logged
    if proc.wait() != 0:
        raise SystemExit("the uninterrupted run failed")
    reference_s = time.time() - start
    step_s = (reference_s - startup_s) / (args.epochs * 8)
    window = startup_s + args.window_steps * step_s
    print(f"uninterrupted run: {reference_s:.1f} s (start-up {startup_s:.1f} s, {step_s * 1000:.0f} ms/step)",
          flush=True)

    rng = random.Random(args.seed)
    killed_run = work / "killed"
    argv = command(work / "data", killed_run, args.epochs, ["--ckpt-every-steps", "1", "--resume", "auto"])
    kills, launches, moments = 0, 0, []
    while True:
        launches += 1
        err_path = work / f"stderr_{launches}.txt"  # a file: progress bars would fill a pipe and stall the run
        with open(err_path, "w") as err_file:
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err_file,
                                    start_new_session=True)
        if kills < args.kills:
            delay = rng.uniform(0.0, window)  # anywhere: start-up, loading the checkpoint, steps, checkpoint writes
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: the node "dies"
                proc.wait()
                kills += 1
                saved = [int(p.name[10:18]) for p in killed_run.glob("ckpt_step_*.pth")]
                moments.append({"after_s": round(delay, 2), "newest_checkpoint_step": max(saved, default=0),
                                "phase": "start-up/resume" if delay < startup_s else "training"})
                print(f"kill {kills}: after {delay:.2f} s, newest checkpoint at step {max(saved, default=0)}",
                      flush=True)
                continue
        if proc.wait() != 0:
            print(err_path.read_text()[-3000:], file=sys.stderr)
            return 1
        if kills >= args.kills:
            break
        print(f"the run finished after {kills} kills; use more --epochs", file=sys.stderr)
        return 1
    diff = differences(final_state(work / "reference"), final_state(killed_run))
    result = {"kills": kills, "launches": launches, "identical": not diff, "different_tensors": diff[:10],
              "epochs": args.epochs, "steps": args.epochs * 8, "kills_detail": moments,
              "uninterrupted_s": round(reference_s, 1), "startup_s": round(startup_s, 1),
              "kills_in_training": sum(k["phase"] == "training" for k in moments), "total_s": round(time.time() - start, 1),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__}
    print(json.dumps({k: v for k, v in result.items() if k != "kills_detail"}))
    print(f"{kills}/{kills} kills survived, weights {'identical' if not diff else 'DIFFERENT'}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if not diff else 1


if __name__ == "__main__":
    sys.exit(main())
