"""Any image file a folder may hold -> a fully loaded 8-bit RGB image, or an exception (the caller counts it bad).

Policies:
- transparency (RGBA, LA, PA, palette or single-colour transparency) is composited over mid-grey BACKGROUND,
  so the colour hidden under transparent pixels never reaches the network;
- 16-bit grayscale is scaled 65535 -> 255 (PIL's own conversion clips it to white); 32-bit integer images
  are read as 16-bit values, clipped; float images as 0..1 when all values lie in it, else 0..255, clipped;
- JPEGs with both sides >= 2 * DRAFT_SIDE are decoded at the coarsest 1/2, 1/4 or 1/8 scale that keeps both
  sides >= DRAFT_SIDE (far above the 224 px crops; faster, and a fraction of the memory);
- PIL's decompression-bomb limit is kept: above 2 * Image.MAX_IMAGE_PIXELS (~179 M pixels) Image.open raises
  DecompressionBombError, so such a file is bad; between 1x and 2x PIL only warns and the image is decoded;
- multi-frame files (GIF, APNG, TIFF pages) give their first frame.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

BACKGROUND = (128, 128, 128)  # mid-grey: neither black nor white content, near the normalisation mean
DRAFT_SIDE = 2048


def open_rgb(path: str | os.PathLike) -> Image.Image:
    if not os.path.isfile(path):  # a FIFO named x.jpg would block the worker forever in open()
        raise OSError(f"{path} is not a regular file")
    with Image.open(path) as img:
        img.draft(None, (DRAFT_SIDE, DRAFT_SIDE))  # JPEG only; a no-op for other formats
        img.load()  # truncated or corrupt data raises here, while the file is open
        return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        img = _gray8(np.asarray(img, dtype=np.float64) / 257)
    elif img.mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64))
        img = _gray8(values * 255 if 0 <= values.min() and values.max() <= 1 else values)
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB")
    return img.convert("RGB")  # a new image even when the mode already is RGB: the file can be closed


def _gray8(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
