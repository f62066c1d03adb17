"""`isd bench`: images/s of the training step for method x arch x image size x batch."""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import torch

from isd.cli.common import Flags, set_flag
from isd.config import ARCHS, DATASETS, METHODS, Config, build_config
from isd.data.synthetic import jpeg_folder
from isd.errors import UsageError
from isd.experiments.provenance import provenance
from isd.train.bench import MODES, bench

STEADY_CPU_SECONDS = 60  # shorter timed runs on a CPU read high: 15 steps read ~30% above 100 on a 2-core EPYC


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="training speed: compute only, data only and end to end, with MFU on GPUs",
        description="Images/s of the real training step for every combination of --method, --arch, --size and "
        "--batch: `compute` (one batch, the step only), `data` (batches only: decoding and augmentation) and `e2e` "
        "(both). FLOPs per image are counted on the step; beside a GPU figure, MFU against the chip's dense peak. "
        "DATA is a folder (train/<class>/<image>), --dataset fashion-mnist, or, when neither is given, a "
        "synthetic folder of 500x375 JPEGs made in a temporary folder.",
        epilog="examples:\n  isd bench --method isd byol --arch resnet18 --size 224 --batch 256\n"
        "  isd bench --dataset fashion-mnist --recipe isd-r18-fmnist --modes compute e2e\n"
        "  isd bench /datasets/imagenet --arch resnet50 --method isd-plus --set num_workers=16 --out bench.json\n"
        "  isd bench --dataset fashion-mnist --recipe isd-fmnist-demo --vary amp=off,bf16 --vary channels_last=off,on",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", metavar="DATA", nargs="?", default="", help="image folder (default: a synthetic one)")
    p.add_argument("--dataset", choices=DATASETS, help="data source (default: folder)")
    p.add_argument("--recipe", help="start from this recipe's values (see `isd recipes`)")
    p.add_argument("--method", nargs="+", choices=METHODS, help="methods (default: the recipe's, else isd)")
    p.add_argument("--arch", nargs="+", choices=ARCHS, help="backbones (default: the recipe's, else resnet18)")
    p.add_argument("--size", nargs="+", type=int, help="image sizes (default: 224 for folders, native otherwise)")
    p.add_argument("--batch", nargs="+", type=int, help="batch sizes (default: the recipe's, else 256)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="what to time (default: all)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode (default 20; on a CPU, give each mode "
                   "a minute or more, e.g. --steps 100 --warmup 10: shorter runs read high there)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--synthetic-images", type=int, default=2048, help="images in the synthetic folder (default 2048)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: GPU if visible")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, e.g. amp=off")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2", help="one more dimension of the "
                   "grid: each value of a config key in turn (repeatable), e.g. --vary amp=off,bf16 --vary "
                   "data_pipeline=workers,device")
    p.add_argument("--out", help="also write the rows and provenance to this JSON file")
    p.add_argument("--profile", metavar="DIR", help="also profile 10 end-to-end steps of each setting with "
                   "torch.profiler: one operator table per setting in DIR; on a GPU the kernels per step and the "
                   "share of the wall time the GPU computes go into the results")
    p.set_defaults(handler=run_bench, flags=Flags(p, keys={"size": "image_size", "batch": "batch_size"},
                                                  otherwise=set_flag))


def _check(args: argparse.Namespace) -> None:
    for name, low, high in (("steps", 1, 10**6), ("warmup", 0, 10**6), ("synthetic_images", 2, 10**7)):
        if not low <= getattr(args, name) <= high:
            raise UsageError(f"--{name.replace('_', '-')} must be in [{low}, {high}], got {getattr(args, name)}")
    if args.out and not Path(args.out).resolve().parent.is_dir():
        raise UsageError(f"--out {args.out}: its folder does not exist")
    if args.profile and Path(args.profile).exists() and not Path(args.profile).is_dir():
        raise UsageError(f"--profile {args.profile}: not a folder")
    if args.profile:
        try:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"--profile {args.profile}: the folder cannot be made ({err.strerror})") from None


def varied(pairs: list[str]) -> list[list[str]]:
    """`--vary KEY=V1,V2` texts -> every combination, as `--set` pairs (one list per combination)."""
    dimensions = []
    for pair in pairs:
        key, _, values = pair.partition("=")
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if not key.strip() or not choices:
            raise UsageError(f"--vary expects KEY=V1,V2,..., got {pair!r} (e.g. --vary amp=off,bf16)")
        dimensions.append([f"{key.strip()}={v}" for v in choices])
    return [list(combo) for combo in itertools.product(*dimensions)]


def run_bench(args: argparse.Namespace) -> int:
    _check(args)
    grid = list(itertools.product(args.method or [None], args.arch or [None], args.size or [None],
                                  args.batch or [None], varied(args.vary)))
    with tempfile.TemporaryDirectory(prefix="isd_bench_data_") as tmp:
        data = args.data
        on_disk = (args.dataset or "folder") in ("folder", "imagenet", "imagenet100")
        configs = []
        for method, arch, size, batch, sets in grid:  # every config is checked before anything is measured
            values = {k: v for k, v in {"method": method, "arch": arch, "image_size": size, "batch_size": batch,
                                        "dataset": args.dataset, "device": args.device}.items() if v is not None}
            values["data"] = data or (tmp if on_disk else "")
            overrides = [*args.set, *sets]
            if not args.recipe and not any(s.replace("-", "_").startswith("queue_size=") for s in overrides):
                per_batch = batch or Config.batch_size
                values["queue_size"] = max(1, 16384 // per_batch) * per_batch  # a queue that fits the batch
            configs.append(build_config(args.recipe, values, overrides))
        if on_disk and not data:
            largest = max(c.batch_size for c in configs)
            jpeg_folder(Path(tmp), max(args.synthetic_images, 2 * largest))
        rows = []
        print(f"{'method':10s} {'arch':9s} {'size':>4s} {'batch':>5s} {'precision':9s} {'pipeline':8s} "
              f"{'compile':8s} {'mode':7s} {'images/s':>9s} {'TFLOP/s':>8s} {'MFU':>6s}")
        for index, cfg in enumerate(configs):
            table = (Path(args.profile) / f"{index:02d}-{cfg.method}-{cfg.arch}-{cfg.image_size or 'native'}-"
                     f"{cfg.batch_size}.txt") if args.profile else None
            result = bench(cfg, tuple(args.modes), args.steps, args.warmup, table)
            rows.append(result)
            precision = result["precision"] + ("+cl" if result["channels_last"] else "")  # channels_last
            for row in result["rows"]:
                mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "–"
                tflops = f"{row['tflops']:.2f}" if "tflops" in row else "–"
                print(f"{cfg.method:10s} {cfg.arch:9s} {result['image_size']:4d} {cfg.batch_size:5d} "
                      f"{precision:9s} {result['pipeline']:8s} {cfg.compile:8s} {row['mode']:7s} "
                      f"{row['images_per_s']:9.1f} {tflops:>8s} {mfu:>6s}", flush=True)
            if cfg.compile != "off":
                print(f"  first step (compiling): {result['first_step_seconds']:.1f} s", flush=True)
            if "profile" in result:
                prof = result["profile"]
                gpu = (f", {prof['kernels_per_step']:.0f} kernels a step, the GPU busy "
                       f"{prof['kernel_time_over_wall']:.0%} of the time" if "kernels_per_step" in prof else "")
                print(f"  profile: {prof['wall_ms_per_step']:.1f} ms a step{gpu}; table in {prof['file']}", flush=True)
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    shortest = min((r["seconds"] for result in rows for r in result["rows"]), default=STEADY_CPU_SECONDS)
    if device.type == "cpu" and shortest < STEADY_CPU_SECONDS:
        print(f"note: a mode was timed for only {shortest:.1f} s; on a CPU, runs under {STEADY_CPU_SECONDS} s can "
              f"read well above the steady state (raise --steps, e.g. --steps 100 --warmup 10)")
    if args.out:
        Path(args.out).write_text(json.dumps({**provenance(device), "results": rows}, indent=1))
        print(f"wrote {args.out}")
    return 0
