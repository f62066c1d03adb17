"""Folders of small images held in memory: decoded once, in parallel, into one uint8 tensor, and cached.

A 32 px image costs PIL more to open than to augment, so a folder like CIFAR-10's (60,000 files) trains far faster
as a tensor augmented a whole batch at a time (`isd.data.batches.MemoryBatches`) than as files decoded per image.
The decoded set is cached under `cache_dir()`, keyed by the folder's listing (relative paths, byte sizes and
modification times), so a second run reads one file instead of decoding 60,000.

`in_memory` (a config key):
- auto: a folder whose images are all one square size of at most AUTO_MAX_SIDE px, and whose decoded set fits
  AUTO_MAX_BYTES, is held in memory; any other folder keeps the file pipelines (ImageNet);
- on: held in memory whatever the size (the images must still share one square size);
- off: always files.

Unreadable files (corrupt, truncated, not an image...) are left out of the tensor and listed in
`Source.bad_files`: training counts them against `max_bad_fraction`, evaluation stops on the first one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from isd.data.decode import open_rgb
from isd.errors import SettingError
from isd.runtime import ignore_stop_signals, write_atomic

log = logging.getLogger(__name__)
CACHE_VERSION = 1
AUTO_MAX_SIDE = 64  # px: above it `auto` keeps the file pipelines (their crops of a larger image are the point)
AUTO_MAX_BYTES = 4 * 2**30  # the stated memory budget of `auto`: 4 GiB of decoded pixels
SAMPLED_HEADERS = 32  # files whose size `auto` reads before deciding (spread over the listing)
MODES = ("auto", "on", "off")


def cache_dir() -> Path:
    """$ISD_CACHE_DIR, else ~/.cache/isd (XDG_CACHE_HOME respected)."""
    if os.environ.get("ISD_CACHE_DIR"):
        return Path(os.environ["ISD_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "isd"


@dataclass
class Decoded:
    images: torch.Tensor  # uint8 [N, 3, S, S] of the readable files
    kept: torch.Tensor  # long [N]: which files of the listing they are
    bad_files: list[str]


class OtherSize(Exception):
    """A file of another size than the folder's first: the set cannot be one tensor."""

    def __init__(self, path: str, size: tuple[int, int], expected: tuple[int, int]) -> None:
        super().__init__(path)
        self.path, self.size, self.expected = path, size, expected


def header_size(path: str) -> tuple[int, int] | None:
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # unreadable: the decoding pass counts it
        return None


def common_square_side(files: list[str]) -> int | None:
    """The side of the sampled files' one square size, or None when they differ or are not square (unreadable
    files are left to the decoding pass, which counts them)."""
    step = max(1, len(files) // SAMPLED_HEADERS)
    sizes = {header_size(p) for p in files[::step][:SAMPLED_HEADERS]} - {None}
    if len(sizes) != 1:
        return None
    width, height = sizes.pop()  # type: ignore[misc]  # None was removed
    return width if width == height else None


def worth_holding(files: list[str], mode: str) -> int | None:
    """The side to decode the files at when `mode` says to hold them in memory, else None."""
    if mode == "off" or not files:
        return None
    side = common_square_side(files)
    if mode == "auto" and (side is None or side > AUTO_MAX_SIDE or len(files) * 3 * side * side > AUTO_MAX_BYTES):
        return None
    return side


class _Pixels(Dataset):
    def __init__(self, files: list[str]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        try:
            return index, np.asarray(open_rgb(self.files[index]))
        except Exception:  # corrupt, truncated, not an image, unreadable: listed by the caller
            return index, None


def _as_list(batch):
    return batch


def decode_files(files: list[str], workers: int, what: str) -> Decoded:
    """Every file decoded to RGB by `open_rgb` (the file pipelines' decoder), in DataLoader workers, with a
    progress bar. Raises OtherSize on the first readable file whose size differs from the first one's."""
    loader = DataLoader(_Pixels(files), batch_size=256, num_workers=workers if workers > 1 else 0,
                        collate_fn=_as_list, worker_init_fn=ignore_stop_signals)
    images: torch.Tensor | None = None
    readable = torch.zeros(len(files), dtype=torch.bool)
    bad: list[str] = []
    expected: tuple[int, int] | None = None
    with tqdm(total=len(files), desc=f"decoding {what}", unit="img", disable=None) as bar:
        for batch in loader:
            for index, pixels in batch:
                if pixels is None:
                    bad.append(files[index])
                    continue
                if expected is None:
                    expected = pixels.shape[:2]
                    images = torch.empty(len(files), 3, *expected, dtype=torch.uint8)
                if pixels.shape[:2] != expected:
                    raise OtherSize(files[index], pixels.shape[1::-1], expected[::-1])
                assert images is not None
                images[index] = torch.from_numpy(pixels).permute(2, 0, 1)
                readable[index] = True
            bar.update(len(batch))
    kept = readable.nonzero().squeeze(1)
    if images is None:
        return Decoded(torch.empty(0, 3, 1, 1, dtype=torch.uint8), kept, bad)
    return Decoded(images[kept] if len(kept) < len(files) else images, kept, bad)


def listing_key(root: Path, files: list[str]) -> str:
    """A digest of the listing: each file's path relative to the root, byte size and modification time."""
    digest = hashlib.sha256(f"isd-decoded/{CACHE_VERSION}\n{root.resolve()}\n".encode())
    for path in files:
        try:
            info = os.stat(path)
            stamp = f"{info.st_size} {info.st_mtime_ns}"
        except OSError:
            stamp = "unreadable"
        digest.update(f"{os.path.relpath(path, root)}\t{stamp}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def _read_cache(path: Path, key: str, root: Path) -> Decoded | None:
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") != key or saved.get("version") != CACHE_VERSION:
            return None
        return Decoded(saved["images"], saved["kept"], [str(root / p) for p in saved["bad"]])
    except Exception as err:  # truncated or foreign: decode again and overwrite it
        log.warning("ignoring unreadable decoded-image cache %s (%s)", path, type(err).__name__)
        return None


def _write_cache(path: Path, key: str, root: Path, decoded: Decoded) -> None:
    saved = {"version": CACHE_VERSION, "key": key, "images": decoded.images, "kept": decoded.kept,
             "bad": [os.path.relpath(p, root) for p in decoded.bad_files]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda fh: torch.save(saved, fh))
        (path.with_suffix(".json")).write_text(json.dumps({"root": str(root.resolve()), "images": len(decoded.kept),
                                                           "bad": len(decoded.bad_files)}))
    except OSError as err:
        log.warning("cannot cache the decoded images in %s (%s); set ISD_CACHE_DIR to a writable folder to start "
                    "faster next time", path.parent, err.strerror)


def decoded_folder(root: Path, files: list[str], workers: int, mode: str) -> Decoded:
    """The decoded files, from the cache when the listing is unchanged; OtherSize for `auto` to fall back on."""
    key = listing_key(root, files)
    path = cache_dir() / "decoded" / f"{key}.pt"
    cached = _read_cache(path, key, root)
    if cached is not None:
        return cached
    try:
        decoded = decode_files(files, workers, str(root))
    except OtherSize as err:
        if mode == "auto":
            raise
        raise SettingError("{in_memory}=on needs images of one size: {path} is {w}x{h}, the others {ew}x{eh}; "
                           "resize the folder or use {in_memory} off", path=err.path, w=err.size[0], h=err.size[1],
                           ew=err.expected[0], eh=err.expected[1]) from None
    _write_cache(path, key, root, decoded)
    return decoded


def decode_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
