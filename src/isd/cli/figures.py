"""`isd neighbors` and `isd clusters`: the paper's pictures from a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from isd import checkpoint
from isd.cli.common import Flags, add_trust_flag
from isd.config import DATASETS, Range, check_range, config_from_dict
from isd.data.sources import load_source
from isd.errors import SettingError, UsageError
from isd.eval.figures import cluster_rows, draw_clusters, draw_neighbours, neighbour_rows
from isd.methods import ISD, method_from_config
from isd.runtime import resolve_device
from isd.train.loop import image_size_and_stem


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint (neighbors: a training checkpoint of `isd train` with "
                   "method isd or isd-plus)")
    p.add_argument("data", metavar="DATA", nargs="?", default="", help="folder with train/<class>/<image>, or the "
                   "folder holding a built-in set's files")
    p.add_argument("--dataset", choices=DATASETS, help="data source (default: the checkpoint's, else folder)")
    p.add_argument("--split", choices=["train", "val"], default="train", help="images to draw from (default train)")
    p.add_argument("--seed", type=int, default=0, help="which images are drawn (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--num-workers", type=int, default=2, help="image decoding workers for folders (default 2)")
    p.add_argument("-o", "--output", help="PNG file (default: beside CKPT)")
    add_trust_flag(p)


def register(sub) -> None:
    n = sub.add_parser("neighbors", help="the paper's Figure 1: the teacher's soft targets over the memory bank",
                       description="For a few query images: the student's view, the teacher's view, and the "
                       "anchors of a memory bank that the teacher finds most similar, each with its target "
                       "probability (softmax at T_t) and the student's; beside it, the one-hot target MoCo would "
                       "use. The bank stands in for the queue: ANCHORS training images under the teacher's "
                       "augmentation, embedded by the teacher.",
                       epilog="example:\n  isd neighbors runs/isd_fmnist/ckpt_last.pth --dataset fashion-mnist",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(n)
    n.add_argument("--queries", type=int, default=4, help="rows (default 4)")
    n.add_argument("--anchors", type=int, default=4096, help="images in the bank (default 4096)")
    n.add_argument("--top", type=int, default=5, help="anchors shown per query (default 5)")
    n.set_defaults(handler=run_neighbors, flags=Flags(n))
    c = sub.add_parser("clusters", help="k-means clusters of the backbone features, drawn as rows of images",
                       description="Spherical k-means of the student backbone's features of up to --images images; "
                       "one row per cluster (largest first): its size, majority class and the images nearest its "
                       "centre.", epilog="example:\n  isd clusters runs/isd_fmnist/ckpt_last.pth --dataset "
                       "fashion-mnist --split val", formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(c)
    c.add_argument("-k", "--clusters", type=int, help="number of clusters (default: number of classes)")
    c.add_argument("--per-row", type=int, default=10, help="images per row (default 10)")
    c.add_argument("--images", type=int, default=5000, help="images clustered (default 5000)")
    c.set_defaults(handler=run_clusters, flags=Flags(c))


def _check(args: argparse.Namespace, limits: dict[str, tuple[int, int]]) -> None:
    for name, (low, high) in limits.items():
        check_range(name, getattr(args, name), Range(low, high))


def _source(args: argparse.Namespace, opt: dict):
    dataset = args.dataset or opt.get("dataset") or "folder"
    on_disk = dataset in ("folder", "imagenet", "imagenet100")
    data = args.data or ("" if on_disk else opt.get("data", ""))
    if on_disk and not data:
        raise SettingError("no data folder given: pass {data} (a folder with train/ inside) or {dataset} fashion-mnist")
    return load_source(dataset, data, args.split)


def _output(args: argparse.Namespace, name: str) -> Path:
    out = Path(args.output) if args.output else Path(args.ckpt).resolve().parent / name
    if out.suffix.lower() != ".png":
        raise SettingError("{output} {path} must be a .png file", path=out)
    if not out.parent.is_dir():
        raise SettingError("{output} {path}: folder {folder} does not exist", path=out, folder=out.parent)
    return out


def run_neighbors(args: argparse.Namespace) -> int:
    _check(args, {"queries": (1, 32), "anchors": (16, 1_000_000), "top": (1, 20), "seed": (0, 2**32 - 1)})
    out = _output(args, "neighbors.png")
    ckpt = checkpoint.read(args.ckpt, args.trust_checkpoint_code)
    opt = ckpt.get("opt")
    if not isinstance(opt, dict) or opt.get("method") not in ("isd", "isd-plus"):
        raise UsageError(f"checkpoint {args.ckpt} is not an ISD / ISD+ training checkpoint of `isd train` (it needs "
                         f"the teacher, the predictor and the run's config); for any backbone use `isd clusters`")
    cfg = config_from_dict(opt)
    source = _source(args, opt)
    size, stem = image_size_and_stem(cfg, source)
    model = method_from_config(cfg, in_channels=source.channels, stem=stem, num_classes=len(source.classes))
    assert isinstance(model, ISD)  # the method was checked above
    model.load_state_dict(ckpt["state_dict"])
    device = resolve_device(args.device)
    rows = neighbour_rows(model.to(device), cfg, source, size, device, args.queries, args.anchors, args.top, args.seed)
    title = (f"{cfg.method}, epoch {ckpt.get('epoch')}: the teacher's targets over a bank of {rows.bank_size} "
             f"images (T_t {rows.temp_teacher:g}; student's probability in brackets, T_s {rows.temp_student:g})")
    draw_neighbours(rows, source, out, title)
    print(f"wrote {out}")
    return 0


def run_clusters(args: argparse.Namespace) -> int:
    _check(args, {"num_workers": (0, 256), "clusters": (2, 256), "per_row": (1, 40), "images": (2, 10_000_000),
                  "seed": (0, 2**32 - 1)})
    out = _output(args, "clusters.png")
    ckpt = checkpoint.read(args.ckpt, args.trust_checkpoint_code)
    net, info = checkpoint.load_backbone(ckpt)
    opt = ckpt.get("opt")
    source = _source(args, opt if isinstance(opt, dict) else {})
    if source.channels != info["in_channels"]:
        raise UsageError(f"checkpoint {args.ckpt} expects {info['in_channels']}-channel images, {source.name} has "
                         f"{source.channels}")
    size = info.get("image_size") or source.native_size or 224
    device = resolve_device(args.device)
    k = args.clusters or len(source.classes)
    if args.images < k:
        raise SettingError("{images} {n} must be at least the number of clusters ({k})", n=args.images, k=k)
    rows = cluster_rows(net.to(device), source, int(size), device, k, args.per_row, args.images, args.seed,
                        args.num_workers)
    draw_clusters(rows, source, int(size), out, f"k-means, k={k}, of {min(args.images, len(source))} "
                  f"{args.split} images ({info['arch']} features, {Path(args.ckpt).name})")
    print(f"wrote {out} (purity {rows.purity:.1%})")
    return 0

