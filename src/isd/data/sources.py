"""Where images come from: ImageFolder trees (ImageNet, imagenet100, subset lists) and in-memory sets.

A source is either a list of files (decoded per image in DataLoader workers) or a uint8 tensor
held in memory (28-32 px sets, and folders of small images: `isd.data.memory`, augmented a whole batch at a time).
"""

from __future__ import annotations

import copy
import gzip
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100, MNIST, FashionMNIST
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from isd.data import memory
from isd.errors import SettingError, UsageError

log = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


@dataclass(frozen=True)
class IdxSet:
    """A 28 px grayscale set stored as the four idx .gz files (Fashion-MNIST, MNIST)."""
    title: str
    torchvision_class: type
    places: tuple[str, ...]  # where a system package puts the files
    install_hint: str
    classes: tuple[str, ...]


IDX_SETS = {
    "fashion-mnist": IdxSet("Fashion-MNIST", FashionMNIST, ("/usr/share/datasets/fashion-mnist",),
                            "as root run `apt-get install dataset-fashion-mnist`, or ",
                            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                             "Ankle boot")),
    "mnist": IdxSet("MNIST", MNIST, (), "", tuple(str(d) for d in range(10))),
}
SMALL_SETS = {  # name: (mean, std)
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass
class Source:
    name: str
    classes: list[str]
    targets: torch.Tensor  # long [N]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_size: int | None  # None: variable-size files
    files: list[str] = field(default_factory=list)  # file sources
    images: torch.Tensor | None = None  # uint8 [N, C, H, W] for in-memory sources
    bad_files: list[str] = field(default_factory=list)  # files left out of `images`: unreadable

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def channels(self) -> int:
        return self.images.shape[1] if self.images is not None else 3

    def take(self, indices: torch.Tensor) -> Source:
        """The same source restricted to `indices` (in that order)."""
        picked = copy.copy(self)
        picked.targets = self.targets[indices]
        if self.images is not None:
            picked.images = self.images[indices]
        else:
            picked.files = [self.files[int(i)] for i in indices]
        return picked


def load_source(dataset: str, data: str, split: str = "train", subset_file: str | None = None, *,
                in_memory: str = "auto", download: bool = False) -> Source:
    """`split` is train or val (val = a built-in set's test split; a folder's val/, else its test/). `in_memory`:
    whether a folder of small images is decoded into memory (`isd.data.memory`); `download`: fetch CIFAR with
    torchvision when DATA does not hold it."""
    if dataset in IDX_SETS:
        return idx_set(dataset, data, split)
    if dataset in ("cifar10", "cifar100"):
        return cifar(dataset, data, split, download)
    files = image_folder(split_folder(Path(data), split), imagenet100=dataset == "imagenet100",
                         subset_file=subset_file)
    return held_in_memory(files, in_memory)


def split_folder(data: Path, split: str) -> Path:
    """DATA/train, or DATA/val for evaluation (DATA/test where there is no val/: CIFAR's layout)."""
    if split == "val" and not (data / "val").is_dir() and (data / "test").is_dir():
        return data / "test"
    return data / split


def held_in_memory(source: Source, mode: str, mean: tuple[float, ...] | None = None,
                   std: tuple[float, ...] | None = None) -> Source:
    """A file source as one decoded uint8 tensor, when `mode` (in_memory) says so and its images allow it."""
    side = memory.worth_holding(source.files, mode)
    if side is None:
        return source
    root = Path(source.name)
    try:
        decoded = memory.decoded_folder(root, source.files, memory.decode_workers(), mode)
    except memory.OtherSize as err:  # `auto` only: this folder is for the file pipelines after all
        log.warning("%s is %dx%d, not %dx%d like the other images of %s: its images stay files (decoded per "
                    "image)", err.path, *err.size, *err.expected, root)
        return source
    kept = source.take(decoded.kept)
    kept.images, kept.files, kept.bad_files = decoded.images, [], decoded.bad_files
    kept.native_size = decoded.images.shape[-1]
    kept.mean, kept.std = mean or source.mean, std or source.std
    return kept


def image_folder(root: Path, imagenet100: bool = False, subset_file: str | None = None) -> Source:
    if not root.is_dir():
        hint = " (the original layout: DATA/train/<class>/<image>)" if root.name in ("train", "val") else ""
        raise UsageError(f"data folder {root} does not exist{hint}")
    try:
        classes, _ = find_classes(str(root))
    except FileNotFoundError:
        raise UsageError(f"data folder {root} has no class folders: put images in {root}/<class>/") from None
    if imagenet100:
        if len(classes) < 100:
            raise SettingError("{dataset} imagenet100 needs >= 100 class folders in {root}, found {n}", root=root,
                               n=len(classes))
        keep = np.random.RandomState(1234).permutation(len(classes))[:100]
        classes = sorted(classes[i] for i in keep)
    allowed = None
    if subset_file:
        classes, allowed = _read_subset(Path(subset_file), classes)
    class_to_idx = {c: i for i, c in enumerate(classes)}
    samples = _list_images(root, class_to_idx)
    empty = sorted(set(classes) - {classes[t] for _, t in samples})
    if empty:
        raise UsageError(f"{root}: no image files ({', '.join(IMG_EXTENSIONS)}) in the class folder(s) "
                         f"{', '.join(empty)}; remove the empty class folder or add images to it")
    if allowed is not None:
        samples = [(p, t) for p, t in samples if os.path.relpath(p, root) in allowed]
        if not samples:
            raise SettingError("{subset_file} {path}: none of its image paths exist under {root}", path=subset_file,
                               root=root)
    return Source(name=str(root), classes=classes, targets=torch.tensor([t for _, t in samples]),
                  mean=IMAGENET_MEAN, std=IMAGENET_STD, native_size=None, files=[p for p, _ in samples])


def _list_images(root: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """torchvision's make_dataset (same order, folder links followed) that enters each real folder once per class.

    make_dataset walks with followlinks=True, so a link to a parent folder repeats the class's images once per
    level until the kernel's limit of 40 links in a path, and two such links in a folder make that 2**40 paths.
    Here such a link is not entered. Folders that cannot be listed are logged and skipped; files are listed
    whatever their size or permissions: the loader counts the unreadable ones as bad and lists them in the
    run folder.
    """
    samples: list[tuple[str, int]] = []
    unlistable: list[OSError] = []
    root_id = _folder_id(str(root))
    for name, target in sorted(class_to_idx.items()):
        top = os.path.join(root, name)
        seen = {root_id}
        if not os.path.isdir(top) or not _first_visit(top, seen):  # a class folder linked to the root itself
            continue
        walked = []
        for folder, dirs, files in os.walk(top, followlinks=True, onerror=unlistable.append):
            dirs[:] = [d for d in sorted(dirs) if _first_visit(os.path.join(folder, d), seen)]
            walked.append((folder, files))
        for folder, files in sorted(walked):
            samples.extend((os.path.join(folder, f), target) for f in sorted(files)
                           if f.lower().endswith(IMG_EXTENSIONS))
    for err in unlistable:
        log.warning("cannot list %s (%s): its images are left out", err.filename, err.strerror)
    return samples


def _folder_id(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _first_visit(path: str, seen: set[tuple[int, int]]) -> bool:
    try:
        folder = _folder_id(path)
    except OSError:  # vanished, or a link loop that is no folder at all
        return False
    if folder in seen:
        return False
    seen.add(folder)
    return True


def _read_subset(path: Path, classes: list[str]) -> tuple[list[str], set[str] | None]:
    """Lines are class names or relative image paths (`class/file.JPEG`); returns kept classes and paths."""
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise SettingError("{subset_file} {path} is empty: list one class name or class/image path per line",
                           path=path)
    known = set(classes)
    if all("/" not in ln for ln in lines):
        missing = sorted(set(lines) - known)
        if missing:
            raise SettingError("{subset_file} {path}: unknown classes {missing}; class names are folder names",
                               path=path, missing=missing[:5])
        return sorted(set(lines)), None
    paths = {os.path.normpath(ln) for ln in lines}
    kept = sorted({p.split(os.sep)[0] for p in paths} & known)
    if not kept:
        raise SettingError("{subset_file} {path}: no line starts with a class folder of the data", path=path)
    return kept, paths


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_idx_files(dataset: str, data: str) -> Path | None:
    """The folder holding `dataset`'s idx files: DATA (or its raw/ or torchvision's <Class>/raw/), then the places
    a system package puts them."""
    spec = IDX_SETS[dataset]
    folders = [Path(data), Path(data) / "raw", Path(data) / spec.torchvision_class.__name__ / "raw"] if data else []
    for folder in folders + [Path(d) for d in spec.places]:
        if all((folder / n).is_file() for n in IDX_FILES["train"]):
            return folder
    return None


def idx_set(dataset: str, data: str, split: str) -> Source:
    folder = find_idx_files(dataset, data) or _download_idx_set(dataset, data)
    images_name, labels_name = IDX_FILES["train" if split == "train" else "test"]
    images = torch.from_numpy(_read_idx(folder / images_name).copy()).unsqueeze(1)
    targets = torch.from_numpy(_read_idx(folder / labels_name).astype(np.int64))
    mean, std = SMALL_SETS[dataset]
    return Source(dataset, list(IDX_SETS[dataset].classes), targets, mean, std, native_size=28, images=images)


def _download_idx_set(dataset: str, data: str) -> Path:
    spec = IDX_SETS[dataset]
    root = Path(data or Path.home() / ".cache" / "isd")
    try:
        spec.torchvision_class(str(root), train=True, download=True)
        spec.torchvision_class(str(root), train=False, download=True)
    except Exception as err:  # no network, proxy, disk...
        where = data or ", ".join(spec.places) or "DATA"
        raise UsageError(
            f"{spec.title} not found in {where} and the download failed ({type(err).__name__}); "
            f"{spec.install_hint}put the four idx .gz files ({', '.join(IDX_FILES['train'] + IDX_FILES['test'])}) "
            f"in a folder and pass it as DATA") from None
    return root / spec.torchvision_class.__name__ / "raw"


CIFAR_BATCHES = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
# torchvision's file names: (train files, test file, meta file, label key, class-name key)
CIFAR_FILES = {"cifar10": ([f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta", "labels",
                           "label_names"),
               "cifar100": (["train"], "test", "meta", "fine_labels", "fine_label_names")}


def cifar(name: str, data: str, split: str, download: bool = False) -> Source:
    """CIFAR-10/100 from torchvision's batch files (`DATA/cifar-10-batches-py`), or from a folder in CIFAR's
    layout (`DATA/train/<class>/<image>` and `DATA/test/` or `DATA/val/`, e.g. the PNG/JPEG exports), held in
    memory either way; `download` fetches torchvision's copy into DATA when it holds neither."""
    root = Path(data) if data else memory.cache_dir()
    if root.name == CIFAR_BATCHES[name]:  # DATA named the batch folder itself
        root = root.parent
    mean, std = SMALL_SETS[name]
    batches = root / CIFAR_BATCHES[name]
    if not batches.is_dir() and (root / "train").is_dir():
        files = image_folder(split_folder(root, split))
        source = held_in_memory(files, "on", mean, std)
        source.name = f"{name} ({split_folder(root, split)})"
        return source
    if download and not batches.is_dir():
        _download_cifar(name, root)
    if not batches.is_dir():
        raise UsageError(f"{name} not found in {root}: give DATA as the folder holding torchvision's "
                         f"{CIFAR_BATCHES[name]}, or a folder with train/<class>/<image> and test/<class>/<image>; "
                         f"or add --download to fetch it (needs internet)")
    images, targets, classes = read_cifar_batches(batches, name, split)
    return Source(name, classes, targets, mean, std, native_size=32, images=images)


class _ArraysOnly(pickle.Unpickler):
    """The batch files are pickles: only the numpy array and dtype rebuilders they need may be called (any other
    global, which a crafted file could use to run code, is refused)."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch file")
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            batch = _ArraysOnly(fh, encoding="latin1").load()
    except FileNotFoundError:
        raise UsageError(f"{path} is missing: torchvision's {path.parent.name} folder has "
                         f"{', '.join(sorted(p.name for p in path.parent.iterdir()))[:200]}; download it again "
                         f"(--download into an empty folder)") from None
    except Exception as err:  # truncated, not a pickle, a refused global
        raise UsageError(f"{path} is not a CIFAR batch file ({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict):
        raise UsageError(f"{path} is not a CIFAR batch file (a pickled {type(batch).__name__}, not a dict)")
    return batch


def read_cifar_batches(folder: Path, name: str, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(uint8 [N, 3, 32, 32], labels, class names) of torchvision's CIFAR batch files."""
    train_files, test_file, meta_file, label_key, names_key = CIFAR_FILES[name]
    images, labels = [], []
    for file in train_files if split == "train" else [test_file]:
        batch = _read_batch(folder / file)
        try:
            pixels = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            targets = np.asarray(batch[label_key], dtype=np.int64)
        except (KeyError, ValueError) as err:
            raise UsageError(f"{folder / file}: no {err} of 32x32 RGB images and labels in it") from None
        if len(pixels) != len(targets):
            raise UsageError(f"{folder / file}: {len(pixels)} images but {len(targets)} labels")
        images.append(pixels)
        labels.append(targets)
    classes = [str(c) for c in _read_batch(folder / meta_file).get(names_key, [])]
    found = np.concatenate(labels)
    if len(found) and not 0 <= found.min() <= found.max() < len(classes):
        raise UsageError(f"{folder}: labels run to {found.max()} but {meta_file} names {len(classes)} classes")
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(found), classes


def _download_cifar(name: str, root: Path) -> None:
    cls = CIFAR10 if name == "cifar10" else CIFAR100
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
    except Exception as err:  # no network, proxy, disk...
        raise UsageError(f"{name}: the download into {root} failed ({type(err).__name__}); without internet, put "
                         f"torchvision's {CIFAR_BATCHES[name]} folder (or train/ and test/ class folders) in {root} "
                         f"and pass it as DATA") from None
