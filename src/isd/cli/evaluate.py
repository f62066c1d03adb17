"""`isd knn`, `isd linear` and `isd export`: evaluate or export a trained (or foreign) checkpoint. The work is
isd.eval.protocols'; here are the flags."""

from __future__ import annotations

import argparse

from isd.checkpoint import ENCODERS
from isd.cli.common import Flags, add_trust_flag
from isd.config import ARCHS, DATASETS
from isd.eval.protocols import Evaluation, export_backbone, knn_report, linear_report

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
    p.add_argument("--download", action="store_true", default=None, help="CIFAR: fetch torchvision's copy into "
                   "DATA when DATA holds neither its batch files nor train/ and test/ class folders")
    add_trust_flag(p)


def add_knn_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("-k", "--k", type=int, nargs="+", default=[1, 20], help="neighbour counts (default 1 20)")
    p.add_argument("--weighted", action="store_true", help="also weighted kNN: k=200, each neighbour's vote "
                   "exp(similarity / T)")
    p.add_argument("--temperature", type=float, default=0.07, help="T of --weighted (default 0.07, InstDisc's; "
                   "the CIFAR-10 benchmarks of MoCo's and lightly's code use 0.1)")
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
    k.set_defaults(handler=run_knn, flags=Flags(k))
    lin = sub.add_parser("linear", help="linear probe on a frozen backbone (the paper's protocol)",
                         description="Linear probe: frozen backbone, L2-normalise -> standardise with train "
                         "statistics -> Linear; 40 epochs SGD lr 0.01, RandomResizedCrop + flip; keeps the best "
                         "epoch. --fast trains on cached features instead.")
    add_linear_args(lin)
    lin.set_defaults(handler=run_linear, flags=Flags(lin))
    e = sub.add_parser("export", help="write the backbone as a plain torchvision state_dict",
                       description="Write the student (or teacher) backbone as a state_dict that "
                       "torchvision.models.resnetXX() loads with strict=True after model.fc = nn.Identity(); "
                       "metadata goes to a .json file beside it.")
    e.add_argument("ckpt", metavar="CKPT")
    e.add_argument("--encoder", choices=ENCODERS, default="student")
    e.add_argument("--arch", choices=ARCHS, help="check that the checkpoint holds this architecture")
    e.add_argument("-o", "--output", help="output file (default: CKPT's folder/backbone_<encoder>.pth)")
    add_trust_flag(e)
    e.set_defaults(handler=run_export, flags=Flags(e))


def settings(args: argparse.Namespace) -> Evaluation:
    return Evaluation(**args.flags.values(args))


def run_knn(args: argparse.Namespace) -> int:
    knn_report(settings(args))
    return 0


def run_linear(args: argparse.Namespace) -> int:
    linear_report(settings(args))
    return 0


def run_export(args: argparse.Namespace) -> int:
    export_backbone(**args.flags.values(args))
    return 0
