"""Search the `make demo` CPU recipe: which ISD settings beat the kNN floors in few epochs?

Runs each candidate for a few epochs on whatever device is here (a GPU makes the search fast; the
maths and the step count are those of the CPU run) and records the student's and teacher's full
Fashion-MNIST test kNN after every epoch.

    PYTHONPATH=src python benchmarks/demo_recipe_sweep.py --epochs 6 --out sweep.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from isd.data.sources import load_source

from isd.config import build_config
from isd.cli.demo import encoder_score
from isd.nets import teacher_with_student_bn
from isd.train.loop import train

CANDIDATES = {
    "w16-b256-lr0.05": [],
    "w16-b128-lr0.05": ["batch_size=128"],
    "w16-b256-lr0.1": ["lr=0.1"],
    "w16-b256-scale0.5": ["crop_scale=0.5,1.0"],
    "w16-b256-weakstrong": ["augmentation=weak/strong"],
    "w16-b256-t0.05": ["temp=0.05"],
    "w8-b256-lr0.05": ["width=8"],
    "w8-b128-lr0.1": ["width=8", "batch_size=128", "lr=0.1"],
    "w16-b128-scale0.4-lr0.1": ["batch_size=128", "crop_scale=0.4,1.0", "lr=0.1"],
    "w32-b256-lr0.05": ["width=32"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--out", default="sweep.json")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--data", default="", help="folder with the Fashion-MNIST .gz files")
    args = ap.parse_args()
    results = {}
    for name, sets in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        cfg = build_config("isd-fmnist-demo", {"run_dir": f"/tmp/sweep/{name}", "data": args.data},
                           sets + [f"epochs={args.epochs}", "eval_every=0", "print_freq=1000"])
        history = []

        def hook(setup, epoch, runlog, history=history):
            test = load_source("fashion-mnist", args.data, "val")
            student = encoder_score(setup.model.encoder_q, setup.source, test, setup.size, setup.device)
            teacher = encoder_score(teacher_with_student_bn(setup.model.encoder_k, setup.model.encoder_q),
                                    setup.source, test, setup.size, setup.device)
            history.append({"epoch": epoch, "student": student, "teacher": teacher,
                            "seconds": round(time.perf_counter() - start, 1)})
            print(name, history[-1], flush=True)

        start = time.perf_counter()
        train(cfg, log=lambda m: None, on_epoch_end=hook)
        results[name] = history
        with open(args.out, "w") as fh:
            json.dump({"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                       "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
