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
- multi-frame files (GIF, APNG, TIFF pages) give their first frame;
- the device pipeline (`data_pipeline: device`) decodes on the training device only 8-bit RGB or grayscale JPEGs
  that need no draft; every other file (PNG, CMYK JPEGs, 16-bit, huge JPEGs) is decoded here, by `open_rgb`, and so
  is a JPEG the device's decoder refuses (the first frame, composited and scaled as above either way).
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

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


def rgb_tensor(img: Image.Image) -> Tensor:
    """uint8 [3, H, W] of an RGB image."""
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def encoded_or_rgb(path: str | os.PathLike) -> Tensor:
    """What a worker of the device pipeline hands on: a JPEG the device can decode as the file's bytes (1-D
    uint8, not decoded), any other image decoded here (uint8 [3, H, W]); an exception for an unreadable file."""
    if not os.path.isfile(path):
        raise OSError(f"{path} is not a regular file")
    with Image.open(path) as img:  # the header only
        on_device = img.format == "JPEG" and img.mode in ("RGB", "L") and min(img.size) < 2 * DRAFT_SIDE
    if on_device:
        with open(path, "rb") as fh:
            return torch.frombuffer(bytearray(fh.read()), dtype=torch.uint8)
    return rgb_tensor(open_rgb(path))


def decode_all(payloads: list[Tensor], device: torch.device) -> list[Tensor | None]:
    """`encoded_or_rgb`'s outputs -> uint8 [3, H, W] images on `device` (the JPEGs decoded there, in one batched
    call), None for a file that no decoder can read."""
    images: list[Tensor | None] = [p.to(device, non_blocking=True) if p.ndim == 3 else None for p in payloads]
    jpegs = [i for i, p in enumerate(payloads) if p.ndim == 1]
    if jpegs:
        try:
            decoded: list[Tensor | None] = list(_decode_jpegs([payloads[i] for i in jpegs], device))
        except RuntimeError:  # one unreadable file fails the batched call: decode them one by one
            decoded = [_decode_one(payloads[i], device) for i in jpegs]
        for i, image in zip(jpegs, decoded):
            images[i] = image
    return images


_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}
_DECODER_PROBLEMS: dict[torch.device, str | None] = {}


def jpeg_decoder_problem(device: torch.device) -> str | None:
    """Why JPEGs cannot be decoded on `device` (e.g. a torchvision built without nvJPEG), or None; checked once
    per device on a tiny JPEG, so that the device pipeline never falls back to PIL image by image unnoticed."""
    if device not in _DECODER_PROBLEMS:
        try:
            tiny = encode_jpeg(torch.full((3, 8, 8), 128, dtype=torch.uint8))
            _decode_jpegs([tiny], device)
            _DECODER_PROBLEMS[device] = None
        except RuntimeError as err:
            _DECODER_PROBLEMS[device] = str(err).strip().splitlines()[0][:200]
    return _DECODER_PROBLEMS[device]


def _decode_jpegs(data: list[Tensor], device: torch.device) -> list[Tensor]:
    if device.type != "cuda":
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    # torchvision allocates the outputs on the current stream, then writes them from nvJPEG's own stream without
    # waiting for it: memory just freed on the training stream, still read by its queued kernels, could be
    # overwritten. On a stream of their own the outputs come from blocks the training stream does not hold.
    main = torch.cuda.current_stream(device)
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    side = _SIDE_STREAMS[device]
    with torch.cuda.stream(side):
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    main.wait_stream(side)
    for image in images:
        image.record_stream(main)  # freed only once the training stream is done with it
    return images


def _decode_one(data: Tensor, device: torch.device) -> Tensor | None:
    try:
        return _decode_jpegs([data], device)[0]
    except RuntimeError:
        pass
    try:  # PIL, as the workers' pipeline reads it (it accepts some files the device's decoder refuses)
        with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
            img.load()
            rgb = to_rgb(img)
    except Exception:
        return None
    return rgb_tensor(rgb).to(device)
