"""Shared helpers for the method, training and CLI-error tests: tiny image folders and tiny configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# the smallest model the engine builds: narrow ResNet-18 with a 3x3 stem on 32 px crops; the tiny folders stay
# files (in_memory off) so that these tests drive the file pipelines, as ImageNet-sized folders do
TINY = {"width": 8, "stem": "small", "image_size": 32, "batch_size": 4, "queue_size": 8, "num_workers": 0,
        "device": "cpu", "print_freq": 1, "in_memory": "off"}


@pytest.fixture(autouse=True, scope="session")
def decoded_image_cache(tmp_path_factory):
    """Folders decoded into memory are cached in a folder of the test session's, not in ~/.cache."""
    import os

    before = os.environ.get("ISD_CACHE_DIR")
    os.environ["ISD_CACHE_DIR"] = str(tmp_path_factory.mktemp("isd_cache"))
    yield
    if before is None:
        os.environ.pop("ISD_CACHE_DIR", None)
    else:
        os.environ["ISD_CACHE_DIR"] = before


def write_image_folder(split: Path, classes: int = 2, per_class: int = 4, size: int = 40, ext: str = "png",
                       seed: int = 0) -> list[Path]:
    """`split/<class>/<i>.<ext>`: small RGB images with one brighter channel per class."""
    rng = np.random.default_rng(seed)
    paths = []
    for c in range(classes):
        folder = split / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
            img[..., c % 3] += np.uint8(100)
            path = folder / f"{i}.{ext}"
            Image.fromarray(img).save(path)
            paths.append(path)
    return paths


@pytest.fixture(scope="session")
def image_root(tmp_path_factory) -> Path:
    """DATA with DATA/train/<class>/<image>: 2 classes x 4 PNG images (2 steps of batch 4). Read-only."""
    root = tmp_path_factory.mktemp("images")
    write_image_folder(root / "train", classes=2, per_class=4, size=40, ext="png")
    return root


@pytest.fixture(scope="session")
def jpeg_root(tmp_path_factory) -> Path:
    """3 classes x 3 small JPEGs of 32 px (2 steps of batch 4 for the original scripts). Read-only."""
    root = tmp_path_factory.mktemp("jpegs")
    write_image_folder(root / "train", classes=3, per_class=3, size=32, ext="jpg", seed=1)
    return root


def tiny_values(data: Path, run_dir: Path, **extra) -> dict:
    return {**TINY, "data": str(data), "run_dir": str(run_dir), **extra}


@pytest.fixture(scope="session")
def isd_run(image_root, tmp_path_factory) -> Path:
    """A run folder with one finished epoch of tiny ISD (ckpt_last.pth, ckpt_epoch_1.pth). Read-only."""
    from isd.config import build_config
    from isd.train.loop import train

    run_dir = tmp_path_factory.mktemp("isd_run")
    with single_thread():
        train(build_config(None, tiny_values(image_root, run_dir, epochs=1)), log=lambda _: None)
    return run_dir


class single_thread:
    """Tiny convolutions on a shared 2-core machine: OpenMP barriers cost more than the work."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


@pytest.fixture()
def torch_one_thread():
    with single_thread():
        yield
