"""`isd demo`: train ISD on Fashion-MNIST (or CIFAR-10) and compare its kNN accuracy with two floors.

The floors are computed exactly like the encoder's score: raw pixels, and the same encoder at its
random initialisation. On a CPU the short recipe runs; on a GPU the full-length one. What follows the run fits
one screen: its table beside the floors, where its curves are, and one line per claim of the paper that the
committed experiments test; `--more` adds the committed studies behind the recipe and every verdict in full.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from isd.cli.common import Flags, set_flag
from isd.config import build_config
from isd.data.sources import find_idx_files
from isd.data.splits import source_of
from isd.eval.features import Encoded, encode, raw_pixels
from isd.eval.knn import knn_of
from isd.eval.monitor import knn_monitor
from isd.experiments.provenance import provenance
from isd.experiments.report import claim_lines, headline, load_results, method_order, short_claim_lines
from isd.methods import method_from_config
from isd.train.loop import image_size_and_stem, train

# the committed results of a clone (absent from an installed wheel): what a longer run reaches
EXPERIMENTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "experiments"
WEIGHTED_K, WEIGHTED_T = 200, 0.1  # the CIFAR-10 benchmarks' weighted kNN


@dataclass(frozen=True)
class DemoSet:
    title: str
    cpu_recipe: str
    gpu_recipe: str
    longer: str  # the committed experiment that shows what longer runs reach
    claims: tuple[str, ...]  # committed experiments whose verdicts on the paper's claims are summarised
    studies: tuple[tuple[str, str], ...]  # (experiment, title): how the CPU recipe was chosen (--more)


DEMOS = {
    "fashion-mnist": DemoSet(
        "Fashion-MNIST", "isd-fmnist-demo", "isd-r18-fmnist", "fmnist-balanced-gpu",
        # the paper's claims tested on 2 CPU cores with several seeds / draws (budgets cpu-seeds at 1/4 width and
        # cpu-seeds-w8 at 1/8), and on the GPU
        ("fmnist-balanced-cpu-seeds", "fmnist-unbalanced-cpu-seeds", "fmnist-balanced-cpu-seeds-w8",
         "fmnist-unbalanced-cpu-seeds-w8", "fmnist-balanced-gpu", "fmnist-unbalanced-gpu"),
        (("fmnist-cpu-stem-cpu", "How isd-fmnist-demo's net was chosen, row w32-stem7-8ep (row demo: the 1/4-width "
                                 "net it had before)"),)),
    "cifar10": DemoSet(
        "CIFAR-10", "isd-cifar10-cpu", "isd-r18-cifar10", "cifar10-balanced-cpu",
        ("cifar10-balanced-cpu", "cifar10-lt-cpu", "cifar10-balanced-gpu", "cifar10-lt-gpu"),
        (("cifar10-cpu-recipe-study-cpu", "How isd-cifar10-cpu was chosen"),)),
}


def register(sub) -> None:
    p = sub.add_parser("demo", help="train ISD on Fashion-MNIST (or CIFAR-10) and compare kNN accuracy with two "
                       "floors", description="Train ISD on whatever device is here (a short recipe on CPU, the "
                       "full-length one on a GPU), then print the encoder's 1-NN / 20-NN / weighted 200-NN test "
                       "accuracy beside raw pixels and the same encoder at its random initialisation, where its "
                       "curves are, and the committed experiments' verdicts on the paper's claims.",
                       epilog="examples:\n  isd demo                                  # Fashion-MNIST (installs "
                       "offline)\n  isd demo --dataset cifar10 .data/cifar10     # a folder with train/ and test/, or "
                       "torchvision's cifar-10-batches-py\n  isd demo --dataset cifar10 ~/data --download",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", metavar="DATA", nargs="?", default="", help="Fashion-MNIST: folder with the idx .gz files "
                   "(default: the Debian package's folder, else torchvision's download); CIFAR-10: folder with "
                   "train/<class>/<image> and test/, or torchvision's cifar-10-batches-py")
    p.add_argument("--dataset", choices=sorted(DEMOS), default="fashion-mnist", help="default fashion-mnist")
    p.add_argument("--download", action="store_true", default=None, help="CIFAR-10: fetch torchvision's copy into "
                   "DATA when it is not there (needs internet)")
    p.add_argument("--recipe", help="recipe to run (default: the set's CPU recipe on CPU, its full-length one on a "
                   "GPU; see `isd recipes`)")
    p.add_argument("--run-dir", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--more", action="store_true", help="after the run, also print the committed studies behind the "
                   "CPU recipe, what longer runs reach and every verdict in full")
    p.set_defaults(handler=run_demo, flags=Flags(p, otherwise=set_flag, ignored=("more",)))


def knn_row(encoded: Encoded, num_classes: int) -> dict[str, float]:
    result = knn_of(encoded, num_classes, ks=(1, 20), weighted_k=WEIGHTED_K, temperature=WEIGHTED_T)
    return {"1-NN": result["at"][1], "20-NN": result["at"][20], "weighted 200-NN": result["weighted"]["acc"]}


def encoder_score(net, train, test, size: int, device) -> dict[str, float]:
    return knn_row(encode(net, train, test, size, device), len(train.classes))


def run_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    demo = DEMOS[args.dataset]
    on_gpu = torch.cuda.is_available()
    recipe = args.recipe or (demo.gpu_recipe if on_gpu else demo.cpu_recipe)
    values = {"data": args.data, "run_dir": args.run_dir, "dataset": args.dataset, "download": args.download}
    cfg = build_config(recipe, {k: v for k, v in values.items() if v is not None}, args.set)
    train_set, test_set = source_of(cfg, "train"), source_of(cfg, "val")
    where = find_idx_files(args.dataset, args.data) if args.dataset == "fashion-mnist" else args.data
    print(f"{demo.title} from {where or 'torchvision download'}; recipe {recipe} on "
          f"{'GPU ' + torch.cuda.get_device_name() if on_gpu else f'CPU ({torch.get_num_threads()} threads)'}")
    device = torch.device("cuda" if on_gpu else "cpu")
    size, stem = image_size_and_stem(cfg, train_set)

    floors = {"raw pixels": knn_row(raw_pixels(train_set, test_set), len(train_set.classes))}
    torch.manual_seed(cfg.seed)  # the same initial weights as the training run below
    random_net = method_from_config(cfg, in_channels=train_set.channels, stem=stem).encoder_q.to(device)
    floors["random init encoder"] = encoder_score(random_net, train_set, test_set, size, device)
    for name, row in floors.items():
        print(f"floor  {name:22s} " + "  ".join(f"{k} {v:.2f}%" for k, v in row.items()))

    setup = train(cfg, on_epoch_end=knn_monitor(cfg))
    trained = encoder_score(setup.model.encoder_q, train_set, test_set, size, device)
    minutes = (time.perf_counter() - started) / 60
    report = {"dataset": args.dataset, "data": train_set.name, "recipe": recipe, "device": str(device),
              "minutes": round(minutes, 2), "floors": floors, "isd": trained,
              "above_both_floors": all(trained[k] > max(f[k] for f in floors.values()) for k in trained),
              "provenance": provenance(device), "config": cfg.to_dict()}
    Path(cfg.run_dir, "demo.json").write_text(json.dumps(report, indent=1))
    print_table(report, demo)
    print_curve_location(Path(cfg.run_dir))
    if args.more:
        print_curve(Path(cfg.run_dir))
        for name, title in demo.studies:
            print_committed(EXPERIMENTS / name, title)
        print_committed(EXPERIMENTS / demo.longer, "What longer runs reach")
        print_claims([EXPERIMENTS / name for name in demo.claims])
    else:
        print_claim_summary([EXPERIMENTS / name for name in demo.claims])
    return 0


def print_table(report: dict, demo: DemoSet) -> None:
    print(f"\n{demo.title} test set ({report['data']}), kNN on L2-normalised features (cosine; weighted: k=200, "
          f"T=0.1), {report['minutes']:.1f} min in all")
    columns = list(report["isd"])
    print(f"{'encoder':30s} " + " ".join(f"{c:>16s}" for c in columns))
    for name, row in {**report["floors"], f"ISD ({report['recipe']})": report["isd"]}.items():
        print(f"{name:30s} " + " ".join(f"{row[c]:15.2f}%" for c in columns))
    if report["above_both_floors"]:
        print("ISD's encoder is above both floors on every column.")
    else:
        print(f"ISD's encoder did NOT beat both floors on every column in this budget. What longer runs reach and how "
              f"this recipe was chosen: `isd demo --more`, docs/results.md (`isd train --recipe {demo.gpu_recipe}` "
              f"runs the full-length recipe).")


def print_curve_location(run_dir: Path) -> None:
    if (run_dir / "knn_history.json").is_file():
        print(f"kNN after each epoch: {run_dir / 'curves.png'} (values in {run_dir / 'knn_history.json'}; --more "
              f"prints them)")


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


def _claim_groups(folders: list[Path], lines) -> list[tuple[Path, list[dict], list[str]]]:
    groups = []
    for folder in folders:
        if folder.is_dir():
            rows = load_results([str(folder)])
            if found := lines(rows):
                groups.append((folder, rows, found))
    return groups


def print_claims(folders: list[Path]) -> None:
    """The verdicts on the paper's orderings that the committed experiments support, in full."""
    groups = _claim_groups(folders, lambda rows: claim_lines(rows, bold=False))
    if not groups:
        return
    print("\nThe paper's claims on the committed experiments (paired by seed or draw, 95% t interval):")
    for folder, rows, lines in groups:
        devices = "; ".join(sorted({r["provenance"]["device"] for r in rows}))
        print(f"  {folder.name} (budget {rows[0]['budget']}; {devices}):")
        for line in lines:
            print("    " + line)


def print_claim_summary(folders: list[Path]) -> None:
    """One line per claim and committed experiment: the verdict, the mean difference, its interval and n."""
    groups = _claim_groups(folders, short_claim_lines)
    if not groups:
        return
    print("\nThe paper's claims on the committed experiments (paired, 95% t interval; `--more` or docs/results.md "
          "for the tables):")
    for folder, _, lines in groups:
        for line in lines:
            print(f"  {folder.name}: {line}")
