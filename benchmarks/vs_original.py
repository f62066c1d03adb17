"""Training speed of the original ISD code and of isd, side by side: same folder of JPEGs, same command line.

Each implementation runs its own `train_isd.py` / `train_byol.py` / `train_isd_plus.py` as a separate process
for two epochs on a synthetic ImageFolder of ImageNet-like JPEGs, logging every step; the second epoch's step
loop is timed from each one's own log (the original prints each step's batch time and their running mean,
isd's log.jsonl each step's images/s; both include the wait for data), so start-up, the first epoch's warm-up
and checkpoint writing are left out on both sides. Result: images/s of each and the ratio isd / original, as JSON.

On a machine without a GPU the original cannot run as written (it calls `.cuda()`); the harness then puts a
`sitecustomize.py` on the original's PYTHONPATH that makes the CUDA calls no-ops, and lists those patches in the
output. Nothing of the original is imported here or copied into the project.

    python benchmarks/vs_original.py --images 320 --batch 32 --workers 2 --repeat 2 \
        --out benchmarks/results/vs_original_cpu.json
    python benchmarks/vs_original.py --scripts train_isd.py train_byol.py --images 12800 --batch 256 --workers 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from isd.data.synthetic import jpeg_folder  # noqa: E402
from isd.experiments.provenance import code_version, device_name  # noqa: E402

CPU_PATCHES = {
    "torch.Tensor.cuda -> returns the tensor (stays on the CPU)": "torch.Tensor.cuda = lambda self, *a, **k: self",
    "torch.nn.Module.cuda -> returns the module": "torch.nn.Module.cuda = lambda self, *a, **k: self",
    "torch.cuda.synchronize -> no-op": "torch.cuda.synchronize = lambda *a, **k: None",
    "torch.cuda.empty_cache -> no-op": "torch.cuda.empty_cache = lambda *a, **k: None",
}
# isd's wrappers take the original flags; --device and --seed are isd's own
COMMON_FLAGS = ["--epochs", "2", "--save_freq", "100", "--print_freq", "1"]
QUEUED_SCRIPTS = ("train_isd.py", "train_isd_plus.py")  # train_byol.py has no queue, nor its flag


def run(cmd: list[str], env: dict, log: Path, timeout: int) -> float:
    start = time.perf_counter()
    with open(log, "w") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    if done.returncode != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited with {done.returncode}:\n{tail}")
    return time.perf_counter() - start


def original_epoch_seconds(log: Path) -> float:
    """The second epoch's step loop: the original prints each step's batch time and the epoch's running mean."""
    steps = re.findall(r"Train: \[2\]\[(\d+)/(\d+)\]\s+BT [0-9.]+ \(([0-9.]+)\)", log.read_text())
    if not steps:
        raise RuntimeError(f"no 'Train: [2][i/N] BT ...' lines in {log}")
    done, _, mean = steps[-1]
    return int(done) * float(mean)


def isd_epoch_seconds(run_dir: Path, batch: int) -> float:
    """The second epoch's step loop: isd logs each step's images/s (print_freq 1), so a step took batch / rate."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return sum(batch / r["images_per_s"] for r in rows if r.get("kind") == "train" and r.get("epoch") == 2)


def measure(script: str, args, data: Path, work: Path) -> dict:
    """Each side `--repeat` times, alternating which goes first (so a drift in the machine's speed, e.g. another
    tenant's load on a VM, falls on both); images/s is the median of each side's runs."""
    images = (args.images // args.batch) * args.batch  # drop_last: the images an epoch trains on
    flags = [str(data), *COMMON_FLAGS, "--batch_size", str(args.batch), "--num_workers", str(args.workers),
             "--arch", args.arch]
    if script in QUEUED_SCRIPTS:
        flags += ["--queue_size", str(args.queue)]
    if script == "train_isd_plus.py":
        flags += ["--augmentation", "weak/strong"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    original_env = dict(env)
    patches = []
    if not torch.cuda.is_available():
        patch_dir = work / "patches"
        patch_dir.mkdir(exist_ok=True)
        (patch_dir / "sitecustomize.py").write_text("import torch\n" + "\n".join(CPU_PATCHES.values()) + "\n")
        original_env["PYTHONPATH"] = os.pathsep.join([str(patch_dir), env.get("PYTHONPATH", "")])
        patches = list(CPU_PATCHES)
    extra = ["--device", "cuda" if torch.cuda.is_available() else "cpu", *isd_sets(args)]

    def original(i: int) -> dict:
        run_dir, log = work / f"original_{script[:-3]}_{i}", work / f"original_{script}_{i}.log"
        seconds = run([sys.executable, str(args.original / script), *flags, "--checkpoint_path", str(run_dir)],
                      original_env, log, args.timeout)
        epoch = original_epoch_seconds(log)
        return {"epoch2_seconds": round(epoch, 2), "images_per_s": round(images / epoch, 2),
                "wall_seconds": round(seconds, 1)}

    def ours(i: int) -> dict:
        run_dir = work / f"isd_{script[:-3]}_{i}"
        seconds = run([sys.executable, str(ROOT / script), *flags, "--checkpoint_path", str(run_dir), *extra],
                      env, work / f"isd_{script}_{i}.log", args.timeout)
        epoch = isd_epoch_seconds(run_dir, args.batch)
        return {"epoch2_seconds": round(epoch, 2), "images_per_s": round(images / epoch, 2),
                "wall_seconds": round(seconds, 1)}

    runs: dict[str, list[dict]] = {"original": [], "isd": []}
    for i in range(args.repeat):
        order = [("original", original), ("isd", ours)]
        for side, fn in (order if i % 2 == 0 else order[::-1]):
            runs[side].append(fn(i))
            print(f"{script} {side} run {i + 1}: {runs[side][-1]['images_per_s']} images/s", flush=True)
    out: dict = {"script": script, "images_per_epoch": images}
    for side in ("original", "isd"):
        out[side] = {"images_per_s": statistics.median(r["images_per_s"] for r in runs[side]), "runs": runs[side]}
    out["original"]["patches"] = patches
    out["isd"]["extra_flags"] = extra
    out["ratio"] = round(out["isd"]["images_per_s"] / out["original"]["images_per_s"], 3)
    return out


def isd_sets(args: argparse.Namespace) -> list[str]:
    return ["--amp", args.isd_amp] if args.isd_amp else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--original", type=Path, default=ROOT.parent / "shared" / "reference" / "original-isd",
                    help="a clone of the original code (default ../shared/reference/original-isd)")
    ap.add_argument("--scripts", nargs="+", default=["train_isd.py"],
                    choices=["train_isd.py", "train_byol.py", "train_isd_plus.py"])
    ap.add_argument("--images", type=int, default=320)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--queue", type=int, default=256, help="queue size (a multiple of the batch)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--isd-amp", choices=["auto", "bf16", "off"], help="isd's --amp (the original has only fp32)")
    ap.add_argument("--data", type=Path, help="an existing ImageFolder to use instead of a synthetic one")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side, alternating which goes first")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--out", type=Path, help="JSON file for the result (default: print only)")
    args = ap.parse_args()
    if not (args.original / "train_isd.py").is_file():
        sys.exit(f"no original code in {args.original} (--original): point it at a clone of the original ISD repo")
    with tempfile.TemporaryDirectory(prefix="isd_vs_original_") as tmp:
        work = Path(tmp)
        data = args.data or jpeg_folder(work / "data", args.images, args.classes, tuple(args.size))
        runs = []
        for script in args.scripts:
            runs.append(measure(script, args, data, work))
            print(json.dumps(runs[-1]), flush=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {**code_version(), "torch": torch.__version__, "device": device_name(device),
              "python": platform.python_version(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "setup": {"images": args.images, "image_size": list(args.size), "batch": args.batch,
                        "workers": args.workers, "arch": args.arch, "queue": args.queue,
                        "measured": "the second epoch's step loop (data wait included), from each one's log; "
                                    f"median of {args.repeat} run(s) per side"},
              "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({r["script"]: r["ratio"] for r in runs}))


if __name__ == "__main__":
    main()
