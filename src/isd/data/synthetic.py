"""A synthetic ImageFolder of photo-sized JPEGs, for speed measurements where no real folder is at hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def jpeg_folder(root: Path, images: int, classes: int = 10, size: tuple[int, int] = (500, 375),
                seed: int = 0) -> Path:
    """root/train/<class>/<i>.JPEG: smooth random colour fields with noise, so they compress (and decode) like
    photos of ImageNet's typical size; returns root. Existing files are kept, so a second call is free."""
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(images):
        path = root / "train" / f"n{i % classes:08d}" / f"{i:06d}.JPEG"
        coarse = rng.integers(0, 255, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        noise = rng.integers(-12, 12, (h, w, 3))
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        Image.fromarray((smooth + noise).clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return root
