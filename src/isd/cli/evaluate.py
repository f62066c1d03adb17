"""`isd knn`, `isd linear` and `isd export`: evaluate or export a trained (or foreign) checkpoint."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from isd.cli.common import add_trust_flag
from isd.config import ARCHS, DATASETS
from isd.data.sources import Source, load_source
from isd.errors import CheckpointWriteError, UsageError
from isd.eval.checkpoints import ENCODERS, load_backbone
from isd.eval.features import extract_features
from isd.eval.knn import knn_evaluate
from isd.eval.linear import train_linear
from isd.eval.probe import balanced_label_subset, train_probe_on_features
from isd.runtime import path_problem, resolve_device
from isd.train.checkpoint import atomic_save

CACHE_VERSION = 1


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- parsers


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint of `isd train` / the original code, or a plain "
                   "ResNet state_dict (e.g. from `isd export`)")
    p.add_argument("data", metavar="DATA", nargs="?", default="", help="folder with train/ and val/ "
                   "(<class>/<image>), or the folder holding a built-in set's files")
    p.add_argument("--dataset", choices=DATASETS, default="folder", help="data source (default: folder)")
    p.add_argument("--encoder", choices=ENCODERS, default="student", help="student (default), or teacher "
                   "weights with the student's BatchNorm statistics")
    p.add_argument("--arch", choices=ARCHS, help="check that the checkpoint holds this architecture")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    p.add_argument("--num-workers", type=int, default=4, help="image decoding workers (default 4)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: GPU if visible")
    p.add_argument("--image-size", type=int, help="input size (default: the checkpoint's training size, else "
                   "224 for folders and the native size of built-in sets)")
    p.add_argument("--out", help="folder for results and cached features (default: the checkpoint's folder)")
    add_trust_flag(p)


def add_knn_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("-k", "--k", type=int, nargs="+", default=[1, 20], help="neighbour counts (default 1 20)")
    p.add_argument("--weighted", action="store_true", help="also weighted kNN (k=200, T=0.07)")
    p.add_argument("--backend", choices=["torch", "faiss"], default="torch", help="exact search backend")


def add_linear_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--epochs", type=int, default=40, help="default 40")
    p.add_argument("--lr", type=float, default=0.01, help="default 0.01")
    p.add_argument("--lr-schedule", default="15,30,40", help="epochs where lr *= 0.1 (default 15,30,40)")
    p.add_argument("--fast", action="store_true", help="train on cached unaugmented features (seconds) "
                   "instead of augmented images")
    p.add_argument("--label-fraction", type=float, help="use a class-balanced seeded fraction of the train "
                   "labels (e.g. 0.01); the indices are saved to OUT/label_indices_F.json")
    p.add_argument("--seed", type=int, default=0, help="probe init, data order, label subset (default 0)")


def register(sub) -> None:
    k = sub.add_parser("knn", help="k-nearest-neighbour accuracy of a checkpoint's backbone",
                       description="kNN accuracy: L2-normalised backbone features of DATA/train (the bank) and "
                       "DATA/val (the queries), Resize -> CenterCrop, exact cosine neighbours, majority vote. "
                       "Features are cached in OUT per checkpoint, encoder and split.")
    add_knn_args(k)
    k.set_defaults(handler=run_knn)
    lin = sub.add_parser("linear", help="linear probe on a frozen backbone (the paper's protocol)",
                         description="Linear probe: frozen backbone, L2-normalise -> standardise with train "
                         "statistics -> Linear; 40 epochs SGD lr 0.01, RandomResizedCrop + flip; keeps the best "
                         "epoch. --fast trains on cached features instead.")
    add_linear_args(lin)
    lin.set_defaults(handler=run_linear)
    e = sub.add_parser("export", help="write the backbone as a plain torchvision state_dict",
                       description="Write the student (or teacher) backbone as a state_dict that "
                       "torchvision.models.resnetXX() loads with strict=True after model.fc = nn.Identity(); "
                       "metadata goes to a .json file beside it.")
    e.add_argument("ckpt", metavar="CKPT")
    e.add_argument("--encoder", choices=ENCODERS, default="student")
    e.add_argument("--arch", choices=ARCHS, help="check that the checkpoint holds this architecture")
    e.add_argument("-o", "--output", help="output file (default: CKPT's folder/backbone_<encoder>.pth)")
    add_trust_flag(e)
    e.set_defaults(handler=run_export)


# ----------------------------------------------------------------------------------------------- common


@dataclass
class EvalContext:
    net: nn.Module
    info: dict[str, Any]
    train: Source
    val: Source
    size: int
    device: torch.device
    out: Path


def output_folder(args: argparse.Namespace) -> Path:
    out = Path(args.out) if args.out else Path(args.ckpt).resolve().parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"output folder {out} cannot be created ({err.strerror}); pass a writable --out") from None
    return out


def check_splits(train: Source, val: Source) -> None:
    for split in (train, val):
        if len(split) == 0:
            raise UsageError(f"{split.name} holds no images")
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:5]
        only_val = sorted(set(val.classes) - set(train.classes))[:5]
        raise UsageError(f"the val classes differ from the train classes ({train.name}: {len(train.classes)}, "
                         f"{val.name}: {len(val.classes)}; only in train: {only_train}, only in val: {only_val}); "
                         f"both splits need the same class folders")


def check_args(args: argparse.Namespace) -> None:
    """Every check of the values themselves, before the checkpoint or any image is read."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UsageError(message)

    need(1 <= args.batch_size <= 65536, f"--batch-size must be in [1, 65536], got {args.batch_size}")
    need(0 <= args.num_workers <= 256, f"--num-workers must be in [0, 256], got {args.num_workers}")
    need(args.image_size is None or 8 <= args.image_size <= 1024,
         f"--image-size must be in [8, 1024] (or left out), got {args.image_size}")
    if hasattr(args, "k"):
        need(all(1 <= k < 2**31 for k in args.k), f"-k values must be >= 1 (e.g. -k 1 20), got "
             f"{' '.join(map(str, args.k))}")
    if hasattr(args, "lr_schedule"):
        need(1 <= args.epochs < 2**31, f"--epochs must be >= 1, got {args.epochs}")
        need(math.isfinite(args.lr) and args.lr > 0, f"--lr must be a finite number > 0, got {args.lr}")
        fraction = args.label_fraction
        need(fraction is None or (math.isfinite(fraction) and 0 < fraction <= 1),
             f"--label-fraction must be in (0, 1], got {fraction}")
        need(0 <= args.seed < 2**32, f"--seed must be in [0, 2**32), got {args.seed}")
        parse_schedule(args.lr_schedule)
    for value, flag in ((args.ckpt, "CKPT"), (args.data, "DATA"), (args.out, "--out")):
        problem = path_problem(value) if value else None
        need(problem is None, f"{flag} {value}: {problem}; pass a usable path")


def prepare(args: argparse.Namespace) -> EvalContext:
    """Every check that needs no features (after check_args): checkpoint, data splits, output folder."""
    if args.dataset in ("folder", "imagenet", "imagenet100") and not args.data:
        raise UsageError("no data folder given: pass DATA (a folder with train/ and val/ inside)")
    device = resolve_device(args.device)
    net, info = load_backbone(args.ckpt, args.encoder, args.arch, args.trust_checkpoint_code)
    train = load_source(args.dataset, args.data, "train")
    val = load_source(args.dataset, args.data, "val")
    check_splits(train, val)
    if train.channels != info["in_channels"]:
        raise UsageError(f"checkpoint {args.ckpt} expects {info['in_channels']}-channel images, but {train.name} "
                         f"has {train.channels} channels; evaluate it on the data it was trained for")
    size = args.image_size or info.get("image_size") or train.native_size or 224
    return EvalContext(net.to(device), info, train, val, int(size), device, output_folder(args))


def cached_features(ctx: EvalContext, source: Source, split: str, args: argparse.Namespace,
                    ) -> tuple[Tensor, Tensor, bool, float]:
    """(features, labels, from cache?, seconds); the cache is valid for this checkpoint file, data and size."""
    stat = Path(args.ckpt).stat()
    key = {"version": CACHE_VERSION, "checkpoint": str(Path(args.ckpt).resolve()), "mtime_ns": stat.st_mtime_ns,
           "bytes": stat.st_size, "encoder": args.encoder, "split": split, "data": source.name,
           "images": len(source), "classes": len(source.classes), "image_size": ctx.size}
    path = ctx.out / f"features_{args.encoder}_{split}.pt"
    start = time.perf_counter()
    if path.is_file():
        try:
            cache = torch.load(path, map_location="cpu", weights_only=True)
            if cache.get("key") == key:
                return cache["features"].to(ctx.device), cache["labels"].to(ctx.device), True, 0.0
        except Exception as err:  # a truncated or foreign file: recompute and overwrite it
            warn(f"ignoring unreadable feature cache {path} ({type(err).__name__})")
    with tqdm(total=len(source), desc=f"{args.encoder} features {split}", unit="img", disable=None) as bar:
        feats, labels = extract_features(ctx.net, source, ctx.size, ctx.device, args.batch_size, args.num_workers,
                                         progress=bar)
    seconds = time.perf_counter() - start
    atomic_save({"key": key, "features": feats.cpu(), "labels": labels.cpu()}, path)
    return feats, labels, False, seconds


def write_json(path: Path, obj: dict) -> None:
    try:
        path.write_text(json.dumps(obj, indent=1))
    except OSError as err:
        raise UsageError(f"cannot write {path} ({err.strerror}); pass a writable output path") from None


def class_counts(source: Source) -> dict[str, int]:
    counts = torch.bincount(source.targets, minlength=len(source.classes)).tolist()
    return dict(zip(source.classes, counts))


def backbone_summary(info: dict[str, Any]) -> dict[str, Any]:
    keys = ("arch", "stem", "width", "in_channels", "feature_dim", "layout", "method", "epoch")
    return {k: info.get(k) for k in keys}


# ----------------------------------------------------------------------------------------------- knn


def run_knn(args: argparse.Namespace, on_result: Callable[[dict], None] | None = None) -> int:
    """`on_result` gets the report (what knn.json holds) once it is written."""
    start = time.perf_counter()
    check_args(args)
    if args.backend == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError:
            raise UsageError("--backend faiss needs the faiss package (pip install faiss-cpu); or use "
                             "--backend torch (same result)") from None
    ctx = prepare(args)
    train_x, train_y, train_hit, train_s = cached_features(ctx, ctx.train, "train", args)
    val_x, val_y, val_hit, val_s = cached_features(ctx, ctx.val, "val", args)
    n = len(train_y)
    ks = sorted({min(k, n) for k in args.k})
    if max(args.k) > n:
        warn(f"k > {n} train images: clamped to {n}")
    weighted_k = min(200, n) if args.weighted else None
    result = knn_evaluate(train_x, train_y, val_x, val_y, ks=tuple(ks), num_classes=len(ctx.train.classes),
                          weighted_k=weighted_k, backend=args.backend)
    report = {
        "checkpoint": str(Path(args.ckpt).resolve()), "encoder": args.encoder, "data": args.data,
        "dataset": args.dataset, "image_size": ctx.size, "backbone": backbone_summary(ctx.info),
        "top1": result["top1"],
        "per_class": {k: dict(zip(ctx.val.classes, accs)) for k, accs in result["per_class"].items()},
        "weighted": result.get("weighted"),
        "counts": {"train": n, "val": len(val_y), "classes": len(ctx.train.classes),
                   "train_per_class": class_counts(ctx.train), "val_per_class": class_counts(ctx.val)},
        "timing": {"features_train_s": train_s, "features_val_s": val_s, "search_s": result["search_seconds"],
                   "total_s": time.perf_counter() - start},
        "features_from_cache": {"train": train_hit, "val": val_hit},
    }
    write_json(ctx.out / "knn.json", report)
    print(f"kNN  {args.encoder}  {ctx.info['arch']}  {n} train / {len(val_y)} val images, "
          f"{len(ctx.train.classes)} classes, {ctx.size}px" + ("  (cached features)" if train_hit and val_hit else ""))
    print("    k   top-1 %")
    for k, acc in result["top1"].items():
        print(f"{k:>5}   {acc:7.2f}")
    if report["weighted"]:
        w = report["weighted"]
        print(f"weighted (k={w['k']}, T={w['T']}): {w['acc']:.2f}")
    print(f"wrote {ctx.out / 'knn.json'}")
    if on_result is not None:
        on_result(report)
    return 0


# ----------------------------------------------------------------------------------------------- linear


def parse_schedule(text: str) -> tuple[int, ...]:
    try:
        milestones = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        milestones = (0,)
    if not all(1 <= m < 2**31 for m in milestones):
        raise UsageError(f"bad --lr-schedule '{text}': expected comma-separated epochs >= 1, e.g. 15,30,40")
    return milestones


def run_linear(args: argparse.Namespace, on_epoch: Callable[[dict], None] | None = None) -> int:
    """`on_epoch` gets each epoch's row of the history (epoch, loss, top1, top5) as soon as it is measured."""
    start = time.perf_counter()
    check_args(args)
    milestones = parse_schedule(args.lr_schedule)
    fraction = args.label_fraction
    ctx = prepare(args)
    train_x, train_y, _, train_s = cached_features(ctx, ctx.train, "train", args)
    val_x, val_y, _, val_s = cached_features(ctx, ctx.val, "val", args)
    train_source = ctx.train
    if fraction is not None:
        picked = balanced_label_subset(train_y.cpu(), fraction, args.seed)
        write_json(ctx.out / f"label_indices_{fraction:g}.json",
                   {"fraction": fraction, "seed": args.seed, "count": len(picked), "indices": picked.tolist()})
        train_x, train_y = train_x[picked.to(train_x.device)], train_y[picked.to(train_y.device)]
        train_source = ctx.train.take(picked)
    num_classes = len(ctx.train.classes)
    common = dict(epochs=args.epochs, lr=args.lr, milestones=milestones, batch_size=args.batch_size, seed=args.seed,
                  on_epoch=on_epoch)
    if args.fast:
        result = train_probe_on_features(train_x, train_y, val_x, val_y, num_classes, progress=True, **common)
    else:
        result = train_linear(ctx.net, train_source, ctx.size, train_x, val_x, val_y, num_classes, ctx.device,
                              num_workers=args.num_workers, **common)
    atomic_save({"state_dict": result.pop("state_dict"), "epoch": result["best_epoch"], "top1": result["best_top1"],
                "classes": ctx.train.classes, "feature_dim": ctx.info["feature_dim"],
                "checkpoint": str(Path(args.ckpt).resolve()), "encoder": args.encoder}, ctx.out / "linear_best.pth")
    report = {
        "checkpoint": str(Path(args.ckpt).resolve()), "encoder": args.encoder, "data": args.data,
        "dataset": args.dataset, "image_size": ctx.size, "backbone": backbone_summary(ctx.info),
        "protocol": "fast (cached unaugmented features)" if args.fast else "paper (RandomResizedCrop + flip)",
        "epochs": args.epochs, "lr": args.lr, "lr_schedule": list(milestones), "batch_size": args.batch_size,
        "seed": args.seed, "label_fraction": fraction, "num_train": len(train_y), "num_val": len(val_y),
        "top1": result["best_top1"], "top5": result["best_top5"], "best_epoch": result["best_epoch"],
        "history": result["history"],
        "timing": {"features_s": train_s + val_s, "total_s": time.perf_counter() - start},
    }
    write_json(ctx.out / "linear.json", report)
    print(f"linear probe  {args.encoder}  {ctx.info['arch']}: top-1 {result['best_top1']:.2f}  "
          f"top-5 {result['best_top5']:.2f}  (best epoch {result['best_epoch']}/{args.epochs}, "
          f"{len(train_y)} train images)")
    print(f"wrote {ctx.out / 'linear.json'} and {ctx.out / 'linear_best.pth'}")
    return 0


# ----------------------------------------------------------------------------------------------- export


def run_export(args: argparse.Namespace) -> int:
    for value, flag in ((args.ckpt, "CKPT"), (args.output, "-o")):
        problem = path_problem(value) if value else None
        if problem:
            raise UsageError(f"{flag} {value}: {problem}; pass a usable path")
    out = Path(args.output) if args.output else Path(args.ckpt).resolve().parent / f"backbone_{args.encoder}.pth"
    if out.is_dir():
        raise UsageError(f"-o {out} is a folder: pass a file name, e.g. -o {out / f'backbone_{args.encoder}.pth'}")
    if out.suffix == ".json":
        raise UsageError(f"-o {out}: the metadata goes to a .json beside the weights; give the weights another "
                         f"suffix, e.g. -o {out.with_suffix('.pth')}")
    net, info = load_backbone(args.ckpt, args.encoder, args.arch, args.trust_checkpoint_code)
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    try:
        atomic_save(state, out)
    except (OSError, CheckpointWriteError) as err:
        reason = getattr(err, "strerror", None) or getattr(err.__context__, "strerror", None) or str(err)
        raise UsageError(f"cannot write {out} ({reason}); pass a writable -o") from None
    meta = {**backbone_summary(info), "encoder": args.encoder, "checkpoint": str(Path(args.ckpt).resolve()),
            "torchvision_compatible": info["torchvision_compatible"], "image_size": info.get("image_size"),
            "build": f"isd.nets.build_backbone('{info['arch']}', stem='{info['stem']}', width={info['width']}, "
                     f"in_channels={info['in_channels']})"}
    write_json(out.with_suffix(".json"), meta)
    print(f"wrote {out} ({info['arch']}, {args.encoder}) and {out.with_suffix('.json')}")
    if info["torchvision_compatible"]:
        print(f"load: m = torchvision.models.{info['arch']}(); m.fc = torch.nn.Identity(); "
              f"m.load_state_dict(torch.load('{out}'))")
    else:
        print(f"note: not a plain torchvision {info['arch']} (stem {info['stem']}, width {info['width']}, "
              f"{info['in_channels']} input channels); build it with {meta['build']} before loading")
    return 0
