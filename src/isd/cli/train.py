"""`isd train` and `isd recipes`."""

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


def register(sub) -> None:
    p = sub.add_parser("train", help="train an encoder (ISD, ISD+, BYOL-asym, MoCo-v2)",
                       description="Train a self-supervised encoder. Values come from the defaults, then --recipe, "
                       "then the flags below, then --set key=value (any config key; see `isd recipes`).",
                       epilog="examples:\n  isd train --recipe isd-r18-imagenet /datasets/imagenet --run-dir runs/isd\n"
                       "  isd train --recipe isd-fmnist-demo --set epochs=5\n"
                       "  torchrun --nproc_per_node 8 -m isd train --recipe isd-plus-r50-imagenet /datasets/imagenet",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", metavar="DATA", nargs="?", default=None, help="folder with train/<class>/<image> (ImageNet "
                   "layout), or the folder holding a built-in set's files (optional for --dataset fashion-mnist)")
    p.add_argument("--recipe", help=f"named recipe: {', '.join(recipe_names())}")
    p.add_argument("--method", choices=METHODS, help="training method")
    p.add_argument("--arch", choices=ARCHS, help="backbone")
    p.add_argument("--dataset", choices=DATASETS, help="data source (default: folder)")
    p.add_argument("--subset-file", help="train only on the classes or class/image paths listed in FILE")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--batch-size", type=int, help="global batch size (split across processes)")
    p.add_argument("--lr", type=float, help="base learning rate")
    p.add_argument("--queue-size", type=int, help="memory queue size K (multiple of the batch)")
    p.add_argument("--augmentation", help="KEY/QUERY recipes, e.g. weak/strong")
    p.add_argument("--run-dir", help="run folder for checkpoints, logs and config (default runs/isd)")
    p.add_argument("--resume", help="checkpoint path (of `isd train`, the train_*.py scripts or the original code), "
                   "or 'auto' for the newest one in the run folder")
    add_trust_flag(p, "the --resume file")
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
    p.set_defaults(handler=run_train, flags=Flags(p, otherwise=set_flag, ignored=("recipe", "set",
                                                                               "trust_checkpoint_code")))

    r = sub.add_parser("recipes", help="list the named recipes", description="List the recipes shipped with isd.")
    r.add_argument("name", nargs="?", help="show one recipe's values")
    r.set_defaults(handler=run_recipes, flags=Flags(r))


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


def run_recipes(args: argparse.Namespace) -> int:
    if args.name:
        values = load_recipe(args.name)  # first: it names the available recipes when this one is unknown
        print(f"# {recipe_description(args.name)}")
        print(yaml.safe_dump(values, sort_keys=False).strip())
        return 0
    for name in recipe_names():
        print(f"{name:28s} {recipe_description(name)}")
    return 0
