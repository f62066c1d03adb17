"""`isd train`, `isd distill` and `isd recipes`."""

from __future__ import annotations

import argparse

import yaml

from isd.cli.common import Flags, add_trust_flag, set_flag
from isd.config import (
    ARCHS,
    COMPILE_MODES,
    DATASETS,
    METHODS,
    Config,
    build_config,
    load_recipe,
    recipe_description,
    recipe_names,
)
from isd.eval.monitor import knn_monitor
from isd.train.loop import train

DISTILL_RECIPE = "compress-r50-r18-imagenet"


def register(sub) -> None:
    p = sub.add_parser("train", help="train an encoder (ISD, ISD+, BYOL-asym, MoCo-v2)",
                       description="Train a self-supervised encoder. Values come from the defaults, then --recipe, "
                       "then the flags below, then --set key=value (any config key; see `isd recipes`).",
                       epilog="examples:\n  isd train --recipe isd-r18-imagenet /datasets/imagenet --run-dir runs/isd\n"
                       "  isd train --recipe isd-fmnist-demo --set epochs=5\n"
                       "  isd train .data/cifar10 --recipe isd-cifar10-cpu      # train/ and test/ class folders\n"
                       "  torchrun --nproc_per_node 8 -m isd train --recipe isd-plus-r50-imagenet /datasets/imagenet",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_flags(p, METHODS)
    p.set_defaults(handler=run_train, flags=Flags(p, otherwise=set_flag, ignored=("recipe", "set",
                                                                               "trust_checkpoint_code")))

    d = sub.add_parser("distill", help="compress a pretrained encoder into a small one without labels (CompRess)",
                       description="Distil a frozen, pretrained teacher into a student without labels (CompRess, "
                       "NeurIPS 2020, the same authors' method that ISD iterates): the student learns to match the "
                       "teacher's similarities to a queue of embeddings of other images. Everything else is `isd "
                       f"train`'s: run folder, resume, --eval-every, `isd knn/linear/export` on the student. Values "
                       f"come from --recipe (default {DISTILL_RECIPE}, the original's), the flags, then --set.",
                       epilog="examples:\n"
                       "  isd distill /datasets/imagenet --teacher isd_plus_r50.pth --arch resnet18\n"
                       "  isd distill /data/photos --teacher torchvision:resnet50:IMAGENET1K_V2 --arch resnet18 "
                       "--variant 1q\n"
                       "  isd distill .data/cifar10 --recipe compress-cifar10-cpu --teacher runs/big/ckpt_last.pth "
                       "--teacher-cache\nteachers: a checkpoint of `isd train` or of the original code (--teacher-"
                       "encoder student|teacher), a plain ResNet state_dict (`isd export`), or torchvision's weights "
                       "by name; read safely (docs/checkpoints.md). docs/distill.md: when to distil, 1q and 2q.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--teacher", required=True, help="the frozen teacher: a checkpoint or state_dict file, or "
                   "torchvision:ARCH[:WEIGHTS] (e.g. torchvision:resnet50:IMAGENET1K_V2; downloaded where there is "
                   "internet)")
    d.add_argument("--teacher-encoder", choices=["student", "teacher"], help="which encoder of a training "
                   "checkpoint teaches (default student)")
    d.add_argument("--variant", dest="distill_variant", choices=["1q", "2q"], help="2q (default): the student "
                   "compares with a queue of its own momentum key encoder; 1q: with the teacher's queue, through a "
                   "linear head")
    d.add_argument("--teacher-cache", action="store_true", default=None, help="one teacher pass over the "
                   "unaugmented images, reused every epoch (the teacher's forward leaves the step)")
    add_training_flags(d, None)
    d.set_defaults(handler=run_distill, flags=Flags(d, otherwise=set_flag, ignored=("recipe", "set",
                                                                                 "trust_checkpoint_code")))

    r = sub.add_parser("recipes", help="list the named recipes", description="List the recipes shipped with isd.")
    r.add_argument("name", nargs="?", help="show one recipe's values")
    r.set_defaults(handler=run_recipes, flags=Flags(r))


def add_training_flags(p: argparse.ArgumentParser, methods: tuple[str, ...] | None) -> None:
    """The flags `isd train` and `isd distill` share (every one sets the config key of its name)."""
    p.add_argument("data", metavar="DATA", nargs="?", default=None, help="folder with train/<class>/<image> (ImageNet "
                   "layout; CIFAR's train/ and test/), or the folder holding a built-in set's files (optional for "
                   "--dataset fashion-mnist)")
    p.add_argument("--recipe", help=f"named recipe: {', '.join(recipe_names())}")
    if methods:
        p.add_argument("--method", choices=methods, help="training method")
    p.add_argument("--arch", choices=ARCHS, help="backbone" if methods else "the student's backbone")
    p.add_argument("--dataset", choices=DATASETS, help="data source (default: folder)")
    p.add_argument("--download", action="store_true", default=None, help="CIFAR: fetch torchvision's copy into "
                   "DATA when it is not there (needs internet)")
    p.add_argument("--subset-file", help="train only on the classes or class/image paths listed in FILE")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--batch-size", type=int, help="global batch size (split across processes)")
    p.add_argument("--lr", type=float, help="base learning rate")
    p.add_argument("--queue-size", type=int, help="memory queue size K (multiple of the batch)")
    p.add_argument("--augmentation", help="KEY/QUERY recipes, e.g. weak/strong (KEY same: the teacher sees the "
                   "student's view)")
    p.add_argument("--run-dir", help="run folder for checkpoints, logs and config (default runs/isd)")
    p.add_argument("--resume", help="checkpoint path (of `isd train`, the train_*.py scripts or the original code), "
                   "or 'auto' for the newest one in the run folder")
    add_trust_flag(p, "the --resume and --teacher files")
    p.add_argument("--ckpt-every-steps", type=int, help="also checkpoint every N steps inside an epoch (resume "
                   "continues at that step); 0 = epoch ends only")
    p.add_argument("--keep-checkpoints", type=int, help="rolling checkpoints kept in the run folder (default 3)")
    p.add_argument("--on-nonfinite", choices=["stop", "skip"], help="a non-finite loss or gradient stops the run "
                   "(default) or skips that step")
    p.add_argument("--num-workers", type=int, help="data loading workers (image folders)")
    p.add_argument("--data-pipeline", choices=["auto", "workers", "device"], help="image folders: decode and augment "
                   "on the training device a batch at a time (device; auto on a GPU) or per image with PIL in the "
                   "workers (workers; auto on a CPU)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="training device (default: GPU if visible)")
    p.add_argument("--compile", choices=COMPILE_MODES, help="torch.compile the networks (default off); "
                   "reduce-overhead adds CUDA graphs, for small images on a GPU. The first steps compile")
    p.add_argument("--seed", type=int, help="run seed")
    p.add_argument("--eval-every", type=int, help="kNN of student and teacher on the labelled val split every N "
                   "epochs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key "
                   "(repeatable), e.g. --set ema=0.99 --set schedule=cos")


def config_from_args(args: argparse.Namespace) -> Config:
    # every flag is the config key of its name; --recipe and --set are applied by build_config itself
    return build_config(args.recipe, args.flags.values(args), args.set)


def run_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    hooks = None
    if cfg.eval_every:
        hooks = knn_monitor(cfg)
    train(cfg, on_epoch_end=hooks, trust_code=args.trust_checkpoint_code)
    return 0


def run_distill(args: argparse.Namespace) -> int:
    values = {**args.flags.values(args), "method": "distill"}
    cfg = build_config(args.recipe or DISTILL_RECIPE, values, args.set)
    train(cfg, on_epoch_end=knn_monitor(cfg) if cfg.eval_every else None, trust_code=args.trust_checkpoint_code)
    return 0


def run_recipes(args: argparse.Namespace) -> int:
    if args.name:
        values = load_recipe(args.name)  # first: it names the available recipes when this one is unknown
        print(f"# {recipe_description(args.name)}")
        print(yaml.safe_dump(values, sort_keys=False).strip())
        return 0
    for name in recipe_names():
        print(f"{name:28s} {recipe_description(name)}")
    return 0
