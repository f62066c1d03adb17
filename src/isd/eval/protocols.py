"""The evaluation of a checkpoint file on a data folder: kNN and the linear probe, with their settings, the checks
of those settings, cached features and the JSON reports (what `isd knn|linear` and `eval_knn.py|eval_linear.py`
run), and the export of a backbone."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from isd.checkpoint import atomic_save, load_backbone
from isd.config import ARCHS, DATASETS, RANGES, Range, check_range
from isd.data.sources import Source, load_source
from isd.data.splits import every_image_readable
from isd.errors import CheckpointWriteError, SettingError, UsageError
from isd.eval.features import Encoded, extract_features
from isd.eval.knn import knn_of
from isd.eval.probe import FeatureBatches, ImageBatches, balanced_label_subset, train_probe
from isd.runtime import path_problem, resolve_device

CACHE_VERSION = 1
ENCODERS = ("student", "teacher")
# beside the ranges shared with training (config.RANGES: epochs, lr, seed, num_workers, image_size)
EVAL_RANGES = {"batch_size": Range(1, 65536), "temperature": Range(1e-3, note="0.07 (InstDisc) or 0.1"),
               "k": Range(1, 2**31, open_high=True, note="e.g. 1 20"),
               "epochs": Range(1, 2**31, open_high=True), "label_fraction": Range(0, 1, open_low=True),
               "lr_schedule": Range(1, 2**31, open_high=True, note="comma-separated epochs, e.g. 15,30,40")}


@dataclass
class Evaluation:
    """The settings of one evaluation; `k`, `weighted`, `backend` are kNN's, the rest after them the probe's."""

    ckpt: str
    data: str = ""
    dataset: str = "folder"
    encoder: str = "student"
    arch: str | None = None
    batch_size: int = 256
    num_workers: int = 4
    device: str = "auto"
    image_size: int | None = None
    out: str | None = None
    trust_checkpoint_code: bool = False
    download: bool = False
    k: tuple[int, ...] = (1, 20)
    weighted: bool = False
    temperature: float = 0.07
    backend: str = "torch"
    epochs: int = 40
    lr: float = 0.01
    lr_schedule: str = "15,30,40"
    fast: bool = False
    label_fraction: float | None = None
    seed: int = 0

    def milestones(self) -> tuple[int, ...]:
        try:
            return tuple(int(v) for v in self.lr_schedule.replace(" ", "").split(",") if v)
        except ValueError:
            raise SettingError("bad {lr_schedule} {got!r}: expected comma-separated epochs >= 1, e.g. 15,30,40",
                               got=self.lr_schedule) from None


def validate(ev: Evaluation, probe: bool = False) -> None:
    """Every check of the values themselves, before the checkpoint or any image is read."""
    ranges = {**RANGES, **EVAL_RANGES}
    for key in ("batch_size", "num_workers", "image_size", "k", "temperature"):
        check_range(key, getattr(ev, key), ranges[key])
    if probe:
        for key in ("epochs", "lr", "label_fraction", "seed"):
            check_range(key, getattr(ev, key), ranges[key])
        check_range("lr_schedule", ev.milestones(), ranges["lr_schedule"])
    if ev.arch is not None and ev.arch not in ARCHS:
        raise SettingError("unknown arch {got!r} ({arch}); choose from {names}", got=ev.arch, names=", ".join(ARCHS))
    if ev.dataset not in DATASETS:
        raise SettingError("unknown dataset {got!r} ({dataset}); choose from {names}", got=ev.dataset,
                           names=", ".join(DATASETS))
    for key in ("ckpt", "data", "out"):
        problem = path_problem(getattr(ev, key)) if getattr(ev, key) else None
        if problem is not None:
            raise SettingError("{%s} {path}: {problem}; pass a usable path" % key, path=getattr(ev, key),
                               problem=problem)


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


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def output_folder(ev: Evaluation) -> Path:
    out = Path(ev.out) if ev.out else Path(ev.ckpt).resolve().parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SettingError("output folder {path} cannot be created ({why}); pass a writable {out}", path=out,
                           why=err.strerror) from None
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


def prepare(ev: Evaluation) -> EvalContext:
    """Every check that needs no features (after `validate`): checkpoint, data splits, output folder."""
    if ev.dataset in ("folder", "imagenet", "imagenet100") and not ev.data:
        raise SettingError("no data folder given: pass {data} (a folder with train/ and val/ inside)")
    device = resolve_device(ev.device)
    net, info = load_backbone(ev.ckpt, ev.encoder, ev.arch, ev.trust_checkpoint_code)
    train = every_image_readable(load_source(ev.dataset, ev.data, "train", download=ev.download))
    val = every_image_readable(load_source(ev.dataset, ev.data, "val", download=ev.download))
    check_splits(train, val)
    if train.channels != info["in_channels"]:
        raise SettingError("checkpoint {path} expects {need}-channel images, but {name} has {has} channels; evaluate "
                           "it on the data it was trained for", path=ev.ckpt, need=info["in_channels"],
                           name=train.name, has=train.channels)
    size = ev.image_size or info.get("image_size") or train.native_size or 224
    return EvalContext(net.to(device), info, train, val, int(size), device, output_folder(ev))


def cached_features(ctx: EvalContext, source: Source, split: str, ev: Evaluation) -> tuple[Tensor, Tensor, bool, float]:
    """(features, labels, from cache?, seconds); the cache is valid for this checkpoint file, data and size."""
    stat = Path(ev.ckpt).stat()
    key = {"version": CACHE_VERSION, "checkpoint": str(Path(ev.ckpt).resolve()), "mtime_ns": stat.st_mtime_ns,
           "bytes": stat.st_size, "encoder": ev.encoder, "split": split, "data": source.name,
           "images": len(source), "classes": len(source.classes), "image_size": ctx.size}
    path = ctx.out / f"features_{ev.encoder}_{split}.pt"
    start = time.perf_counter()
    if path.is_file():
        try:
            cache = torch.load(path, map_location="cpu", weights_only=True)
            if cache.get("key") == key:
                return cache["features"].to(ctx.device), cache["labels"].to(ctx.device), True, 0.0
        except Exception as err:  # a truncated or foreign file: recompute and overwrite it
            warn(f"ignoring unreadable feature cache {path} ({type(err).__name__})")
    with tqdm(total=len(source), desc=f"{ev.encoder} features {split}", unit="img", disable=None) as bar:
        feats, labels = extract_features(ctx.net, source, ctx.size, ctx.device, ev.batch_size, ev.num_workers,
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


def common_report(ev: Evaluation, ctx: EvalContext) -> dict[str, Any]:
    return {"checkpoint": str(Path(ev.ckpt).resolve()), "encoder": ev.encoder, "data": ev.data,
            "dataset": ev.dataset, "image_size": ctx.size, "backbone": backbone_summary(ctx.info)}


# ----------------------------------------------------------------------------------------------- knn


def knn_report(ev: Evaluation, on_result: Callable[[dict], None] | None = None) -> dict:
    """kNN accuracy of the checkpoint's backbone; writes OUT/knn.json and prints the table. `on_result` gets the
    report once it is written."""
    start = time.perf_counter()
    validate(ev)
    if ev.backend == "faiss":
        try:
            import faiss  # noqa: F401  (optional)
        except ImportError:
            raise SettingError("{backend} faiss needs the faiss package (pip install faiss-cpu); or use {backend} "
                               "torch (same result)") from None
    ctx = prepare(ev)
    train_x, train_y, train_hit, train_s = cached_features(ctx, ctx.train, "train", ev)
    val_x, val_y, val_hit, val_s = cached_features(ctx, ctx.val, "val", ev)
    n = len(train_y)
    if max(ev.k) > n:
        warn(f"k > {n} train images: clamped to {n}")
    result = knn_of(Encoded(train_x, train_y, val_x, val_y), len(ctx.train.classes), ks=tuple(ev.k),
                    weighted_k=200 if ev.weighted else None, temperature=ev.temperature,
                    backend=ev.backend)
    report = {
        **common_report(ev, ctx), "top1": result["top1"],
        "per_class": {k: dict(zip(ctx.val.classes, accs)) for k, accs in result["per_class"].items()},
        "weighted": result.get("weighted"),
        "counts": {"train": n, "val": len(val_y), "classes": len(ctx.train.classes),
                   "train_per_class": class_counts(ctx.train), "val_per_class": class_counts(ctx.val)},
        "timing": {"features_train_s": train_s, "features_val_s": val_s, "search_s": result["search_seconds"],
                   "total_s": time.perf_counter() - start},
        "features_from_cache": {"train": train_hit, "val": val_hit},
    }
    write_json(ctx.out / "knn.json", report)
    print(f"kNN  {ev.encoder}  {ctx.info['arch']}  {n} train / {len(val_y)} val images, "
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
    return report


# ----------------------------------------------------------------------------------------------- linear


def linear_report(ev: Evaluation, on_epoch: Callable[[dict], None] | None = None) -> dict:
    """The linear probe; writes OUT/linear.json and OUT/linear_best.pth. `on_epoch` gets each epoch's row of the
    history (epoch, lr, loss, top1, top5) as soon as it is measured."""
    start = time.perf_counter()
    validate(ev, probe=True)
    milestones = ev.milestones()
    ctx = prepare(ev)
    train_x, train_y, _, train_s = cached_features(ctx, ctx.train, "train", ev)
    val_x, val_y, _, val_s = cached_features(ctx, ctx.val, "val", ev)
    train_source = ctx.train
    if ev.label_fraction is not None:
        picked = balanced_label_subset(train_y.cpu(), ev.label_fraction, ev.seed)
        write_json(ctx.out / f"label_indices_{ev.label_fraction:g}.json",
                   {"fraction": ev.label_fraction, "seed": ev.seed, "count": len(picked), "indices": picked.tolist()})
        train_x, train_y = train_x[picked.to(train_x.device)], train_y[picked.to(train_y.device)]
        train_source = ctx.train.take(picked)
    batches: FeatureBatches | ImageBatches = (
        FeatureBatches(train_x, train_y, ev.batch_size) if ev.fast else
        ImageBatches(ctx.net, train_source, ctx.size, ev.batch_size, ctx.device, ev.num_workers, ev.seed))
    result = train_probe(batches, train_x, val_x, val_y, len(ctx.train.classes), epochs=ev.epochs, lr=ev.lr,
                         milestones=milestones, seed=ev.seed, log=print, on_epoch=on_epoch)
    atomic_save({"state_dict": result.pop("state_dict"), "epoch": result["best_epoch"], "top1": result["best_top1"],
                 "classes": ctx.train.classes, "feature_dim": ctx.info["feature_dim"],
                 "checkpoint": str(Path(ev.ckpt).resolve()), "encoder": ev.encoder}, ctx.out / "linear_best.pth")
    report = {
        **common_report(ev, ctx),
        "protocol": "fast (cached unaugmented features)" if ev.fast else "paper (RandomResizedCrop + flip)",
        "epochs": ev.epochs, "lr": ev.lr, "lr_schedule": list(milestones), "batch_size": ev.batch_size,
        "seed": ev.seed, "label_fraction": ev.label_fraction, "num_train": len(train_y), "num_val": len(val_y),
        "top1": result["best_top1"], "top5": result["best_top5"], "best_epoch": result["best_epoch"],
        "history": result["history"],
        "timing": {"features_s": train_s + val_s, "total_s": time.perf_counter() - start},
    }
    write_json(ctx.out / "linear.json", report)
    print(f"linear probe  {ev.encoder}  {ctx.info['arch']}: top-1 {result['best_top1']:.2f}  "
          f"top-5 {result['best_top5']:.2f}  (best epoch {result['best_epoch']}/{ev.epochs}, "
          f"{len(train_y)} train images)")
    print(f"wrote {ctx.out / 'linear.json'} and {ctx.out / 'linear_best.pth'}")
    return report


# ----------------------------------------------------------------------------------------------- export


def export_backbone(ckpt: str, encoder: str = "student", arch: str | None = None, output: str | None = None,
                    trust_checkpoint_code: bool = False) -> Path:
    """The backbone as a plain state_dict file (and its metadata as .json beside it); returns the file."""
    for value, key in ((ckpt, "ckpt"), (output, "output")):
        problem = path_problem(value) if value else None
        if problem:
            raise SettingError("{%s} {path}: {problem}; pass a usable path" % key, path=value, problem=problem)
    out = Path(output) if output else Path(ckpt).resolve().parent / f"backbone_{encoder}.pth"
    if out.is_dir():
        raise SettingError("{output} {path} is a folder: pass a file name, e.g. {output} {example}", path=out,
                           example=out / f"backbone_{encoder}.pth")
    if out.suffix == ".json":
        raise SettingError("{output} {path}: the metadata goes to a .json beside the weights; give the weights "
                           "another suffix, e.g. {output} {example}", path=out, example=out.with_suffix(".pth"))
    net, info = load_backbone(ckpt, encoder, arch, trust_checkpoint_code)
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    try:
        atomic_save(state, out)
    except (OSError, CheckpointWriteError) as err:
        reason = getattr(err, "strerror", None) or getattr(err.__context__, "strerror", None) or str(err)
        raise SettingError("cannot write {path} ({why}); pass a writable {output}", path=out, why=reason) from None
    meta = {**backbone_summary(info), "encoder": encoder, "checkpoint": str(Path(ckpt).resolve()),
            "torchvision_compatible": info["torchvision_compatible"], "image_size": info.get("image_size"),
            "build": f"isd.nets.build_backbone('{info['arch']}', stem='{info['stem']}', width={info['width']}, "
                     f"in_channels={info['in_channels']})"}
    write_json(out.with_suffix(".json"), meta)
    print(f"wrote {out} ({info['arch']}, {encoder}) and {out.with_suffix('.json')}")
    if info["torchvision_compatible"]:
        print(f"load: m = torchvision.models.{info['arch']}(); m.fc = torch.nn.Identity(); "
              f"m.load_state_dict(torch.load('{out}'))")
    else:
        print(f"note: not a plain torchvision {info['arch']} (stem {info['stem']}, width {info['width']}, "
              f"{info['in_channels']} input channels); build it with {meta['build']} before loading")
    return out
