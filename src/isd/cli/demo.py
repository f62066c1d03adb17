"""`isd demo`: train ISD on Fashion-MNIST and compare its kNN accuracy with two floors.

The floors are computed exactly like the encoder's score: raw pixels, and the same encoder at its
random initialisation. On a CPU the short recipe runs; on a GPU the full-length one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from isd.cli.common import Flags, set_flag
from isd.config import build_config
from isd.data.sources import find_idx_files, load_source
from isd.eval.features import Encoded, encode, raw_pixels
from isd.eval.knn import knn_of
from isd.eval.monitor import knn_monitor
from isd.experiments.provenance import provenance
from isd.experiments.report import claim_lines, headline, load_results, method_order
from isd.methods import method_from_config
from isd.train.loop import image_size_and_stem, train

CPU_RECIPE, GPU_RECIPE = "isd-fmnist-demo", "isd-r18-fmnist"
# the committed results of a clone (absent from an installed wheel): what a longer run reaches
EXPERIMENTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "experiments"
COMMITTED = EXPERIMENTS / "fmnist-balanced-gpu"
# how the CPU recipe's net was chosen: nets of equal cost on 2 CPU cores, three seeds (validation split)
CHOSEN_ON_CPU = EXPERIMENTS / "fmnist-cpu-stem-cpu"
# the paper's claims tested on 2 CPU cores with several seeds / draws (budgets cpu-seeds at 1/4 width and
# cpu-seeds-w8 at 1/8), and on the GPU
CLAIMS = [EXPERIMENTS / name for name in ("fmnist-balanced-cpu-seeds", "fmnist-unbalanced-cpu-seeds",
                                          "fmnist-balanced-cpu-seeds-w8", "fmnist-unbalanced-cpu-seeds-w8",
                                          "fmnist-balanced-gpu", "fmnist-unbalanced-gpu")]


def register(sub) -> None:
    p = sub.add_parser("demo", help="train ISD on Fashion-MNIST and compare kNN accuracy with two floors",
                       description="Train ISD on Fashion-MNIST on whatever device is here (a short recipe on CPU, "
                       "the full-length one on a GPU), print the kNN accuracy of the encoder after each epoch, then "
                       "its 1-NN / 20-NN test accuracy beside raw pixels and a randomly initialised encoder.")
    p.add_argument("data", metavar="DATA", nargs="?", default="", help="folder with the Fashion-MNIST idx .gz files "
                   "(default: the Debian package's folder, else torchvision's download)")
    p.add_argument("--recipe", help=f"recipe to run (default: {CPU_RECIPE} on CPU, {GPU_RECIPE} on a GPU)")
    p.add_argument("--run-dir", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(handler=run_demo, flags=Flags(p, otherwise=set_flag))


def knn_row(encoded: Encoded) -> dict[str, float]:
    at = knn_of(encoded, num_classes=10, ks=(1, 20))["at"]
    return {"1-NN": at[1], "20-NN": at[20]}


def encoder_score(net, train, test, size: int, device) -> dict[str, float]:
    return knn_row(encode(net, train, test, size, device))


def run_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    on_gpu = torch.cuda.is_available()
    recipe = args.recipe or (GPU_RECIPE if on_gpu else CPU_RECIPE)
    cfg = build_config(recipe, {"data": args.data, "run_dir": args.run_dir, "dataset": "fashion-mnist"}, args.set)
    where = find_idx_files("fashion-mnist", args.data)
    print(f"Fashion-MNIST from {where or 'torchvision download'}; recipe {recipe} on "
          f"{'GPU ' + torch.cuda.get_device_name() if on_gpu else f'CPU ({torch.get_num_threads()} threads)'}")
    train_set = load_source("fashion-mnist", args.data, "train")
    test_set = load_source("fashion-mnist", args.data, "val")
    device = torch.device("cuda" if on_gpu else "cpu")
    size, stem = image_size_and_stem(cfg, train_set)

    floors = {"raw pixels": knn_row(raw_pixels(train_set, test_set))}
    torch.manual_seed(cfg.seed)  # the same initial weights as the training run below
    random_net = method_from_config(cfg, in_channels=1, stem=stem).encoder_q.to(device)
    floors["random init encoder"] = encoder_score(random_net, train_set, test_set, size, device)
    for name, row in floors.items():
        print(f"floor  {name:22s} 1-NN {row['1-NN']:.2f}%  20-NN {row['20-NN']:.2f}%")

    setup = train(cfg, on_epoch_end=knn_monitor(cfg))
    trained = encoder_score(setup.model.encoder_q, train_set, test_set, size, device)
    minutes = (time.perf_counter() - started) / 60
    report = {"recipe": recipe, "device": str(device), "minutes": round(minutes, 2), "floors": floors,
              "isd": trained, "above_both_floors": all(trained[k] > max(f[k] for f in floors.values())
                                                       for k in ("1-NN", "20-NN")),
              "provenance": provenance(device), "config": cfg.to_dict()}
    Path(cfg.run_dir, "demo.json").write_text(json.dumps(report, indent=1))
    print_table(report)
    print_curve(Path(cfg.run_dir))
    print_committed(CHOSEN_ON_CPU, f"How {CPU_RECIPE}'s net was chosen, row w32-stem7-8ep (row demo: the 1/4-width "
                                   "net it had before)")
    print_committed(COMMITTED, "What longer runs reach")
    print_claims(CLAIMS)
    return 0


def print_curve(run_dir: Path) -> None:
    """The kNN accuracy after each epoch (the monitor's history), and where its chart is."""
    path = run_dir / "knn_history.json"
    if not path.is_file():
        return
    history = json.loads(path.read_text())
    print(f"\nkNN during training ({run_dir / 'curves.png'}; bank and queries capped as the recipe says):")
    print("epoch  " + "  ".join(f"{k.replace('_', ' '):>14s}" for k in history[0] if k.endswith("nn")))
    for row in history:
        print(f"{row['epoch']:5d}  " + "  ".join(f"{v:13.2f}%" for k, v in row.items() if k.endswith("nn")))


def print_committed(folder: Path, title: str) -> None:
    """The headline of a committed experiment (its trained rows and floors), with its budget and machine, beside
    what ran here."""
    if not folder.is_dir():
        return
    rows = load_results([str(folder)])
    first = rows[0]
    split = "held-out validation split" if first["queries"] == "holdout" else "full test set"
    methods = tuple(dict.fromkeys(r["method"] for r in sorted(rows, key=lambda r: method_order(r["method"]))))
    print(f"\n{title} (committed results in {folder.relative_to(folder.parents[3])}: budget "
          f"{first['budget']} = {first['budget_about']}; {first['provenance']['device']}; {split}):")
    for line in headline(rows, methods):
        print("  " + line)


def print_claims(folders: list[Path]) -> None:
    """The verdicts on the paper's orderings that the committed experiments support, one line each."""
    groups = [(folder, load_results([str(folder)])) for folder in folders if folder.is_dir()]
    groups = [(folder, rows) for folder, rows in groups if rows and claim_lines(rows)]
    if not groups:
        return
    print("\nThe paper's claims on the committed experiments (paired by seed or draw, 95% t interval):")
    for folder, rows in groups:
        devices = "; ".join(sorted({r["provenance"]["device"] for r in rows}))
        print(f"  {folder.name} (budget {rows[0]['budget']}; {devices}):")
        for line in claim_lines(rows, bold=False):
            print("    " + line)


def print_table(report: dict) -> None:
    print(f"\nFashion-MNIST test set, kNN on L2-normalised features (cosine), {report['minutes']:.1f} min in all")
    print(f"{'encoder':28s} {'1-NN':>7s} {'20-NN':>7s}")
    for name, row in {**report["floors"], f"ISD ({report['recipe']})": report["isd"]}.items():
        print(f"{name:28s} {row['1-NN']:6.2f}% {row['20-NN']:6.2f}%")
    if report["above_both_floors"]:
        print("ISD's encoder is above both floors.")
    else:
        print("ISD's encoder did NOT beat both floors in this budget. How this recipe compares on 2 CPU cores, and "
              "what longer runs reach on a GPU, is below (`isd train --recipe isd-r18-fmnist`, or `make demo` on a "
              "GPU, runs the full-length recipe).")
