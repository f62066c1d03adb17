"""The original scripts' flags (train_isd.py, train_isd_plus.py, train_byol.py) mapped onto the engine."""

from __future__ import annotations

import argparse
import sys

from isd.cli.common import Flags, OneLineParser, add_trust_flag, run_guarded
from isd.cli.launch import maybe_self_launch
from isd.config import build_config
from isd.train.loop import train

WORKER = "isd.cli.legacy_train"  # what each self-launched worker runs: this module, as `python -m`
# script -> (recipe, description)
SCRIPTS = {
    "train_isd.py": ("isd-r18-imagenet", "ISD (ResNet-18 recipe of the paper)"),
    "train_isd_plus.py": ("isd-plus-r50-imagenet", "ISD+ (ResNet-50 recipe of the paper)"),
    "train_byol.py": ("byol-r18-imagenet", "asymmetric BYOL (SGD, batch 256)"),
}


def legacy_parser(script: str) -> argparse.ArgumentParser:
    recipe, what = SCRIPTS[script]
    p = OneLineParser(prog=script, description=f"Train {what} with the original script's flags; runs the same "
                      f"engine as `isd train --recipe {recipe}`. Unset flags keep that recipe's values.")
    p.add_argument("data", help="dataset root holding train/<class>/<image> (ImageNet layout)")
    p.add_argument("--dataset", choices=["imagenet", "imagenet100"], help="full ImageNet or the 100-class subset")
    p.add_argument("--print_freq", type=int, help="log every N steps")
    p.add_argument("--save_freq", type=int, help="write ckpt_epoch_N.pth every N epochs")
    p.add_argument("--batch_size", type=int, help="global batch size (default 256)")
    p.add_argument("--num_workers", type=int, help="data loading workers")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--learning_rate", type=float, help="base learning rate")
    p.add_argument("--lr_decay_epochs", type=str, help="epochs where lr *= lr_decay_rate, e.g. '140,180'; given "
                   "without --cos, the schedule is step (as in the original), whatever the recipe's")
    p.add_argument("--lr_decay_rate", type=float, help="step decay factor (0.2); given without --cos, the schedule "
                   "is step")
    p.add_argument("--cos", action="store_true", default=None, help="cosine learning-rate schedule (with no "
                   "schedule flag given, the recipe's schedule)")
    p.add_argument("--weight_decay", type=float, help="SGD weight decay (1e-4)")
    p.add_argument("--sgd_momentum", type=float, help="SGD momentum (0.9)")
    p.add_argument("--arch", type=str, help="resnet18, resnet34 or resnet50")
    p.add_argument("--queue_size", type=int, help="memory bank size K (a multiple of the batch)")
    p.add_argument("--temp", type=float, help="ISD temperature (teacher and student)")
    p.add_argument("--temp_t", type=float, help="teacher temperature (ISD+)")
    p.add_argument("--temp_s", type=float, help="student temperature (ISD+)")
    p.add_argument("--momentum", type=float, help="teacher EMA momentum m")
    p.add_argument("--augmentation", type=str, help="KEY/QUERY augmentation: weak/strong, weak/weak, strong/weak, "
                   "strong/strong")
    p.add_argument("--weak_strong", action="store_true", default=None, help="same as --augmentation weak/strong")
    p.add_argument("--checkpoint_path", type=str, help="run folder: checkpoints, logs, config")
    p.add_argument("--resume", type=str, help="checkpoint to continue from (of these scripts, `isd train` or the "
                   "original code), or 'auto'")
    add_trust_flag(p, "the --resume file")
    p.add_argument("--gpu", type=int, help="accepted for compatibility; use CUDA_VISIBLE_DEVICES instead")
    p.add_argument("--debug", action="store_true", help="accepted for compatibility (no effect)")
    p.add_argument("--subset-file", dest="subset_file", help="train on the images/classes listed in FILE")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (default: GPU if visible)")
    p.add_argument("--seed", type=int, help="run seed (data order, augmentation, init)")
    p.add_argument("--data_pipeline", choices=["auto", "workers", "device"], help="decode and augment on the "
                   "training device in batches (device; auto on a GPU) or with PIL in the workers (workers, as the "
                   "original; auto on a CPU)")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], help="mixed precision: auto = bf16 on a GPU (default), "
                   "bf16 also on a CPU with native bf16, off = fp32")
    return p


def flags(parser: argparse.ArgumentParser) -> Flags:
    """The original flags as config keys, and back in the engine's errors (`--temp / --temp_s` for temp_student)."""
    return Flags(parser, keys={"learning_rate": "lr", "momentum": "ema", "checkpoint_path": "run_dir",
                               "temp": "temp_student", "temp_s": "temp_student", "temp_t": "temp_teacher"},
                 ignored=("gpu", "debug", "cos", "weak_strong", "temp", "trust_checkpoint_code"))


def legacy_values(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """Config values for the flags given on the command line (every flag defaults to None: not given)."""
    # the original reads image files and trains on 224 px crops of them, whatever their size: no folder is held in
    # memory at its native size for its commands
    values = {"in_memory": "off", **flags(parser).values(args)}
    if args.temp is not None:
        values.setdefault("temp_student", args.temp)  # --temp_s wins over --temp when both are given
    values.update(schedule_values(args))
    if args.weak_strong:
        values["augmentation"] = "weak/strong"
    if values.get("resume") == "":
        values.pop("resume")
    return values


def schedule_values(args: argparse.Namespace) -> dict:
    """The original's rule, flag by flag: --cos means cosine; without it the scripts decay in steps at
    --lr_decay_epochs. So a step flag given without --cos asks for steps, even where the recipe is cosine;
    with neither, the recipe's schedule stays (its cosine replaces the scripts' stale 90,120 default)."""
    if args.cos:
        return {"schedule": "cos"}
    if args.lr_decay_epochs is not None or args.lr_decay_rate is not None:
        return {"schedule": "step"}
    return {}


def main(script: str, argv: list[str] | None = None) -> int:
    parser = legacy_parser(script)

    def run() -> int:
        args = parser.parse_args(argv)
        cfg = build_config(SCRIPTS[script][0], legacy_values(args, parser))
        given = sys.argv[1:] if argv is None else list(argv)
        launched = maybe_self_launch(script, WORKER, [script, *given], cfg.device)
        if launched is not None:  # several GPUs, no launcher: one worker per GPU has run the job
            return launched
        train(cfg, trust_code=args.trust_checkpoint_code)
        return 0

    return run_guarded(run, script, flags(parser).name)


if __name__ == "__main__":  # a worker of the self-launch: the script's name, then its command line
    sys.exit(main(sys.argv[1], sys.argv[2:]))
