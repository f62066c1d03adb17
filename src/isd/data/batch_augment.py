"""Vectorised augmentation of whole batches of uint8 images (the original's recipes,
docs/faithfulness.md).

Every op works on a float batch ``[B, C, H, W]`` in ``[0, 1]`` with per-sample random parameters and no
Python loop over samples, so small in-memory datasets (Fashion-MNIST, CIFAR) can be augmented on the
GPU without per-image PIL work. Formulas follow ``torchvision.transforms.v2.functional`` on float images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

RECIPES = ("strong", "weak", "none")
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's ITU-R 601-2 luma weights


CROP_TRIES = 10  # candidates per sample, as torchvision's RandomResizedCrop


class Uniforms:
    """The uniform numbers of one torch.rand draw, handed out in order. A view draws all its numbers at once
    (one call instead of ~20, and the work after it is a pure function that torch.compile can fuse); on a CPU
    generator one draw of n + m numbers is the same as draws of n then m, so the views are those of
    separate draws to the bit.

    `views` > 1: the draw holds that many views' numbers, one view's after the other, for a batch made of the
    views' samples one view after the other; each `take` hands out every view's next numbers, in sample order."""

    def __init__(self, numbers: Tensor, views: int = 1) -> None:
        self.numbers, self.views, self.used = numbers, views, 0
        self.rows = numbers.view(views, -1)  # one row per view

    @classmethod
    def drawn(cls, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None,
              views: int = 1):
        """`n` numbers in all (`views` views' worth)."""
        return cls(torch.rand(n, generator=generator, device=device), views)

    def take(self, *shape: int) -> Tensor:
        """`shape` is the whole batch's (its first dimension counts the samples of every view)."""
        if shape[0] % self.views:
            raise ValueError(f"{shape[0]} samples do not split into {self.views} views")
        n = math.prod(shape) // self.views
        if self.used + n > self.rows.shape[1]:
            raise ValueError(f"{self.rows.shape[1]} uniform numbers drawn per view, {self.used + n} asked for")
        out = self.rows[:, self.used:self.used + n].reshape(shape)  # a view when there is one row
        self.used += n
        return out

    def all_used(self) -> bool:
        return self.used == self.rows.shape[1]

    def uniform(self, low: float, high: float, n: int) -> Tensor:
        return low + (high - low) * self.take(n)


def _draws_for(x: Tensor, n: int, generator: torch.Generator | None) -> Uniforms:
    return Uniforms.drawn(n, generator, x.device)


def _per_sample(factor: Tensor | float, x: Tensor) -> Tensor:
    """A scalar or a [B] tensor of factors, shaped to broadcast against [B, C, H, W]."""
    return torch.as_tensor(factor, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)


# ---------------------------------------------------------------- RandomResizedCrop + flip


def sample_crop_boxes(
    n: int,
    height: int | Tensor,
    width: int | Tensor,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    views: int = 1,
) -> Tensor:
    """Boxes ``[n, 4]`` = (top, left, h, w) in integer pixels, sampled like torchvision's RandomResizedCrop.

    ``height`` and ``width`` are one size for the whole batch or ``[n]`` tensors, one size per sample (image
    files). All ``CROP_TRIES`` candidates are drawn at once; each sample keeps its first candidate that fits and
    falls back to torchvision's central crop when none does. ``views`` > 1: the n samples are that many views
    of n / views images, with the boxes of as many draws one after the other.
    """
    return crop_boxes(Uniforms.drawn(crop_draws(n), generator, device, views), n, height, width, scale, ratio)


def crop_draws(n: int) -> int:
    return n * (2 * CROP_TRIES + 2)


def crop_boxes(draws: Uniforms, n: int, height: int | Tensor, width: int | Tensor,
               scale: tuple[float, float], ratio: tuple[float, float]) -> Tensor:
    """`sample_crop_boxes` from numbers already drawn."""
    height, width = _per_sample_size(height, n, draws.numbers.device), _per_sample_size(width, n, draws.numbers.device)
    area = (height * width).unsqueeze(1)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * draws.take(n, CROP_TRIES))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draws.take(n, CROP_TRIES))
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width.unsqueeze(1)) & (h > 0) & (h <= height.unsqueeze(1))
    first = fits.int().argmax(dim=1, keepdim=True)  # argmax returns the first maximal index
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)

    fallback_h, fallback_w = _central_crop_size(height, width, ratio)
    found = fits.any(dim=1)
    h = torch.where(found, h, fallback_h)
    w = torch.where(found, w, fallback_w)
    top = torch.floor(draws.take(n) * (height - h + 1))
    left = torch.floor(draws.take(n) * (width - w + 1))
    top = torch.where(found, top, torch.div(height - fallback_h, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(width - fallback_w, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], dim=1)


def _per_sample_size(size: int | Tensor, n: int, device: torch.device) -> Tensor:
    """[n] float sizes on the device; a Python number is filled there (a tensor made from it would be copied
    from the host, and a blocking copy waits for the GPU)."""
    if isinstance(size, Tensor):
        return size.to(device=device, dtype=torch.get_default_dtype()).expand(n)
    return torch.full((n,), float(size), device=device)


def _central_crop_size(height: Tensor, width: Tensor, ratio: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """torchvision's fallback: the whole image, cut to the nearest allowed aspect ratio (per sample)."""
    in_ratio = width / height
    too_tall, too_wide = in_ratio < min(ratio), in_ratio > max(ratio)
    h = torch.where(too_tall, torch.round(width / min(ratio)), height)
    w = torch.where(too_wide, torch.round(height * max(ratio)), width)
    return h, w


def resized_crop(x: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop each sample to its box (top, left, h, w), resize to ``size`` x ``size`` (bilinear) and
    mirror the samples where ``flip`` is True, all in one ``affine_grid`` + ``grid_sample``.

    Equals torchvision's ``resized_crop(..., antialias=False)``; when upsampling (always the case for
    28/32 px inputs) that is the same as antialias=True.
    """
    b, c, height, width = x.shape
    top, left, h, w = boxes.to(x.dtype).unbind(dim=1)
    scale_x, scale_y = w / width, h / height
    if flip is not None:
        scale_x = torch.where(flip, -scale_x, scale_x)
    shift_x, shift_y = (2 * left + w) / width - 1, (2 * top + h) / height - 1
    zero = torch.zeros_like(scale_x)
    theta = torch.stack([scale_x, zero, shift_x, zero, scale_y, shift_y], dim=1).view(b, 2, 3)
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    # Clamp to the centres of the crop's edge pixels, as F.interpolate does on the cropped image when
    # upsampling; otherwise the edge rows would blend in pixels from outside the crop.
    low = torch.stack([(2 * left + 1) / width, (2 * top + 1) / height], dim=1) - 1
    high = torch.stack([(2 * (left + w) - 1) / width, (2 * (top + h) - 1) / height], dim=1) - 1
    grid = torch.maximum(torch.minimum(grid, high.view(b, 1, 1, 2)), low.view(b, 1, 1, 2))
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resized_crop_each(images: Sequence[Tensor], boxes: Tensor, size: int) -> Tensor:
    """Images of any sizes (``[C, H_i, W_i]``, uint8 or float, on one device): crop each to its box (top, left,
    h, w; a host tensor, so the slicing needs no device sync) and resize it to ``size`` x ``size`` with
    antialiased bilinear interpolation, as torchvision's ``resized_crop(..., antialias=True)`` on a tensor.
    Returns float ``[n, C, size, size]`` on the images' own scale (0..255 for uint8)."""
    out = []
    for image, (top, left, h, w) in zip(images, boxes.int().tolist()):
        crop = image[:, top:top + h, left:left + w].unsqueeze(0).to(torch.get_default_dtype())
        out.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(out)


# ---------------------------------------------------------------- colour


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """``[B, 3, H, W] -> [B, 1, H, W]``; a 1-channel batch is returned as is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return (r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1] + b * GRAY_WEIGHTS[2]).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, factor: Tensor | float) -> Tensor:
    f = _per_sample(factor, x)
    return (f * x + (1 - f) * other).clamp(0, 1)


def adjust_brightness(x: Tensor, factor: Tensor | float) -> Tensor:
    return (x * _per_sample(factor, x)).clamp(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor | float) -> Tensor:
    return _blend(x, rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: Tensor | float) -> Tensor:
    return _blend(x, rgb_to_grayscale(x), factor)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    delta = maxc - minc
    s = delta / torch.where(maxc > 0, maxc, 1.0)
    d = torch.where(delta > 0, delta, 1.0)
    h = torch.where(maxc == r, (g - b) / d, torch.where(maxc == g, 2 + (b - r) / d, 4 + (r - g) / d))
    return torch.stack([torch.remainder(h / 6, 1.0), s, maxc], dim=1)


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    h, s, v = hsv.unsqueeze(2).unbind(dim=1)  # each [B, 1, H, W]
    # Closed form of the six-sector formula: channel n in (R, G, B) uses k = (n + 6h) mod 6, n = 5, 3, 1.
    n = torch.arange(5.0, 0.0, -2.0, dtype=hsv.dtype, device=hsv.device)  # (5, 3, 1), made on the device
    k = torch.remainder(n.view(1, 3, 1, 1) + 6 * h, 6)
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


def adjust_hue(x: Tensor, factor: Tensor | float) -> Tensor:
    """Rotate the hue by ``factor`` (in turns, [-0.5, 0.5]); 1-channel images are returned as is."""
    if x.shape[1] == 1:
        return x
    h, s, v = _rgb_to_hsv(x).unbind(dim=1)
    h = torch.remainder(h + _per_sample(factor, x).squeeze(1), 1.0)
    return _hsv_to_rgb(torch.stack([h, s, v], dim=1))


BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # ColorJitter's ops, in the order of its factors
Jitter = tuple[Tensor, Tensor, Tensor]  # which samples [B] (bool), their factors [B, 4], their op order [B, 4]
Blur = tuple[Tensor, Tensor]  # which samples [B] (bool), their sigmas [B]


def _blend_positions(x: Tensor, ops: Tensor, factors: Tensor, active: Tensor) -> Tensor:
    """Positions ``ops[:, 0], ops[:, 1], ...`` of every sample's op order, in turn, where `active`: brightness,
    contrast or saturation, per sample. All three are the blend f·x + (1 − f)·other, with other = 0, the mean grey
    level or the grey image, so one evaluation per position serves the batch; for each sample it is the very
    arithmetic of adjust_brightness / _contrast / _saturation (adding (1 − f)·0 changes no bit). The per-position
    choices are made for all positions at once (a few operations, not a few per position)."""
    f, is_contrast = factors.gather(1, ops), (ops == CONTRAST)
    is_saturation = ops == SATURATION if x.shape[1] == 3 else None  # a no-op on 1 channel: never blended
    for position in range(ops.shape[1]):
        gray = rgb_to_grayscale(x)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        other = torch.where(is_contrast[:, position].view(-1, 1, 1, 1), mean, 0.0)
        if is_saturation is not None:
            other = torch.where(is_saturation[:, position].view(-1, 1, 1, 1), gray, other)
        blended = _blend(x, other, f[:, position])
        x = torch.where(active[:, position].view(-1, 1, 1, 1), blended, x)
    return x


JITTER_DRAWS = 9  # per sample: whether, four factors, four numbers whose ranks are the op order


def jitter_draws(draws: Uniforms, b: int, p: float = 0.8,
                 strength: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)) -> Jitter:
    """ColorJitter's random choices for a batch: which samples, their four factors and their op order."""
    applied = draws.take(b) < p
    bri, con, sat, hue = strength
    factors = torch.stack([
        draws.uniform(max(0.0, 1 - bri), 1 + bri, b),
        draws.uniform(max(0.0, 1 - con), 1 + con, b),
        draws.uniform(max(0.0, 1 - sat), 1 + sat, b),
        draws.uniform(-hue, hue, b),
    ], dim=1)
    order = draws.take(b, 4).argsort(dim=1)  # order[:, position] = op
    return applied, factors, order


def apply_jitter(x: Tensor, draws: Jitter) -> Tensor:
    """The jitter of `draws`, each chosen sample with its own factors and op order.

    The costly op, hue, runs once on the batch: each sample's brightness/contrast/saturation before its hue take
    three blend positions, those after it three more. 1-channel images have no saturation or hue (identities, as
    in torchvision and PIL): four positions of brightness and contrast."""
    applied, factors, order = draws
    if x.shape[1] == 1:
        return _blend_positions(x, order, factors, applied.unsqueeze(1) & (order <= CONTRAST))
    hue_at = (order == HUE).int().argmax(dim=1, keepdim=True)
    positions = torch.arange(4, device=order.device)
    before = applied.unsqueeze(1) & (positions[:3] < hue_at)  # the ops before each sample's hue
    x = _blend_positions(x, order[:, :3], factors, before)
    x = torch.where(applied.view(-1, 1, 1, 1), adjust_hue(x, factors[:, HUE]), x)
    after = hue_at + positions[1:]  # and those after it
    return _blend_positions(x, order.gather(1, after.clamp(max=3)), factors, applied.unsqueeze(1) & (after <= 3))


def color_jitter(x: Tensor, p: float = 0.8, strength: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
                 generator: torch.Generator | None = None) -> Tensor:
    """RandomApply(ColorJitter(*strength), p) on a batch."""
    b = x.shape[0]
    return apply_jitter(x, jitter_draws(_draws_for(x, JITTER_DRAWS * b, generator), b, p, strength))


def grayscale_draws(draws: Uniforms, b: int, channels: int, p: float = 0.2) -> Tensor | None:
    """Which samples RandomGrayscale turns grey; None (and nothing drawn) for 1-channel images."""
    return None if channels == 1 else draws.take(b) < p


def apply_grayscale(x: Tensor, chosen: Tensor | None) -> Tensor:
    if chosen is None:
        return x
    return torch.where(chosen.view(-1, 1, 1, 1), rgb_to_grayscale(x).expand_as(x), x)


def random_grayscale(x: Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> Tensor:
    b, c = x.shape[:2]
    return apply_grayscale(x, grayscale_draws(_draws_for(x, b if c == 3 else 0, generator), b, c, p))


# ---------------------------------------------------------------- blur


def gaussian_kernels(sigma: Tensor, radius: int) -> Tensor:
    """Normalised 1-D Gaussian kernels ``[B, 2 * radius + 1]``, one per sigma (torchvision's formula)."""
    offsets = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    kernels = torch.exp(-(offsets**2) / (2 * sigma.view(-1, 1) ** 2))
    return kernels / kernels.sum(dim=1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, radius: int) -> Tensor:
    """Blur sample i with ``sigma[i]``: separable grouped convolution, reflect padding."""
    b, c, h, w = x.shape
    kernels = gaussian_kernels(sigma.to(x.dtype), radius).repeat_interleave(c, dim=0)  # [B * C, K]
    size = kernels.shape[1]
    y = F.pad(x.reshape(1, b * c, h, w), (radius,) * 4, mode="reflect")
    y = F.conv2d(y, kernels.view(b * c, 1, 1, size), groups=b * c)
    y = F.conv2d(y, kernels.view(b * c, 1, size, 1), groups=b * c)
    return y.view(b, c, h, w)


def blur_draws(draws: Uniforms, b: int, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0)) -> Blur | None:
    """Which samples are blurred and their sigmas; None (and nothing drawn) when p is 0."""
    if p <= 0:
        return None
    chosen = draws.take(b) < p
    return chosen, draws.uniform(sigma[0], sigma[1], b)


def apply_blur(x: Tensor, draws: Blur | None, max_sigma: float = 2.0) -> Tensor:
    if draws is None:
        return x
    chosen, sigmas = draws
    radius = min(math.ceil(3 * max_sigma), min(x.shape[-2:]) - 1)  # reflect padding must be < image size
    return torch.where(chosen.view(-1, 1, 1, 1), gaussian_blur(x, sigmas, radius), x)


def random_gaussian_blur(
    x: Tensor,
    p: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    b = x.shape[0]
    return apply_blur(x, blur_draws(_draws_for(x, 2 * b if p > 0 else 0, generator), b, p, sigma), sigma[1])


# ---------------------------------------------------------------- recipes


class BatchAugment(torch.nn.Module):
    """One of the original's augmentation recipes applied to a whole uint8 batch at once.

    ``strong``: RandomResizedCrop, ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, RandomGrayscale p=0.2,
    Gaussian blur sigma ~ U[0.1, 2] p=0.5, horizontal flip p=0.5, Normalize. ``weak``: RandomResizedCrop,
    flip, Normalize. ``none``: bilinear resize to ``size`` (only if needed), Normalize.
    The flip is folded into the crop; it commutes with the pixel-wise colour ops and the symmetric blur.
    """

    def __init__(
        self,
        recipe: str,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        blur_prob: float = 0.5,
    ) -> None:
        super().__init__()
        if recipe not in RECIPES:
            raise ValueError(f"unknown augmentation recipe {recipe!r}; expected one of {RECIPES}")
        self.recipe, self.size = recipe, size
        self.scale, self.ratio = (scale[0], scale[1]), (ratio[0], ratio[1])
        self.blur_prob = blur_prob
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self._view = self._view_work

    def extra_repr(self) -> str:
        return f"recipe={self.recipe!r}, size={self.size}, scale={self.scale}, ratio={self.ratio}"

    def forward(self, images: Tensor | Sequence[Tensor], generator: torch.Generator | None = None,
                crop_generator: torch.Generator | None = None, views: int = 1) -> Tensor:
        """uint8 ``[B, C, H, W]`` (C = 1 or 3), or a list of uint8 ``[C, H_i, W_i]`` images of any sizes (decoded
        image files) -> normalised float32 ``[B, C, size, size]``. A list's crops are drawn on the host from
        ``crop_generator`` (a CPU generator) and made image by image; every other random number comes from
        ``generator``, in one draw per view, and the rest of the view is one function of the images and that draw.

        ``views`` > 1: that many views of the images as one batch ``[views * B, C, size, size]`` (view v in rows
        v·B to (v+1)·B), the same pixels as that many calls one after the other, with a fraction of the
        operations (`two_views`)."""
        if isinstance(images, Tensor):
            x, cropped, b = images, False, images.shape[0]
        else:
            x, cropped, b = self._crop_each(images, crop_generator, views), True, len(images)
        n = views * self.draws_per_view(b, x.shape[1], cropped)
        numbers = torch.rand(n, generator=generator, device=x.device) if n else x.new_empty(0, dtype=torch.float)
        return self._view(x, numbers, cropped, views)

    def draws_per_view(self, b: int, channels: int, cropped: bool = False) -> int:
        """How many uniform numbers one view of `b` images takes (crop boxes unless `cropped`, flip, jitter,
        grayscale, blur), in the order the per-op functions take them."""
        if self.recipe == "none":
            return 0
        n = (0 if cropped else crop_draws(b)) + b
        if self.recipe == "strong":
            n += JITTER_DRAWS * b + (b if channels == 3 else 0) + (2 * b if self.blur_prob > 0 else 0)
        return n

    def compile_pixels(self, backend: str = "inductor") -> None:
        """torch.compile the view's work after its one random draw (crop, colour, blur, normalisation: a few
        fused kernels instead of a few hundred ops). Always torch's default mode: the views are held while the
        networks' CUDA graphs replay."""
        self._view = torch.compile(self._view_work, backend=backend, dynamic=False)

    def _view_work(self, x: Tensor, numbers: Tensor, cropped: bool, views: int = 1) -> Tensor:
        """uint8 images (or, when `cropped`, a float batch already cropped and resized, every view's) -> the
        views."""
        if views > 1 and not cropped:
            x = x.repeat(views, 1, 1, 1)
        x = x.to(torch.get_default_dtype()) / 255 if x.dtype == torch.uint8 else x.to(torch.get_default_dtype())
        b, c, h, w = x.shape
        draws = Uniforms(numbers, views)
        if self.recipe == "none":
            if (h, w) != (self.size, self.size):
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                  antialias=True)
        elif cropped:
            flip = draws.take(b) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        else:
            boxes = crop_boxes(draws, b, h, w, self.scale, self.ratio)
            x = resized_crop(x, boxes, self.size, draws.take(b) < 0.5)
        if self.recipe == "strong":
            x = apply_jitter(x, jitter_draws(draws, b))
            x = apply_grayscale(x, grayscale_draws(draws, b, c))
            x = apply_blur(x, blur_draws(draws, b, self.blur_prob))
        if not draws.all_used():
            raise AssertionError(f"a view drew {numbers.numel() // views} numbers and used {draws.used}")
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def _crop_each(self, images: Sequence[Tensor], crop_generator: torch.Generator | None, views: int = 1) -> Tensor:
        """Each image cropped at its own box (`views` boxes each) and resized: float ``[views * n, C, size, size]``
        in [0, 1]. With several views each image is converted to float once, not once per view (the same
        numbers: the conversion is exact)."""
        scale = 255 if images[0].dtype == torch.uint8 else 1
        images = [image.to(torch.get_default_dtype()) for image in images] * views if views > 1 else list(images)
        heights = torch.tensor([float(image.shape[-2]) for image in images])
        widths = torch.tensor([float(image.shape[-1]) for image in images])
        if self.recipe == "none":
            boxes = torch.stack([torch.zeros_like(heights), torch.zeros_like(widths), heights, widths], dim=1)
        else:
            boxes = sample_crop_boxes(len(images), heights, widths, self.scale, self.ratio, crop_generator,
                                      views=views)
        x = resized_crop_each(images, boxes, self.size)
        return x / scale if scale != 1 else x


def two_views(
    images: Tensor | Sequence[Tensor],
    key_aug: BatchAugment | None,
    query_aug: BatchAugment,
    generator: torch.Generator | None = None,
    crop_generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """(key_view, query_view): two independent augmentations of the same batch, the key's drawn first. When both
    views follow one recipe (one `BatchAugment` for both), as one batch of twice the size: half the operations
    (a small-image step on a GPU is bound by their launches), and on a CPU the same pixels to the bit. Without a
    key recipe (None: augmentation `same/...`), one view, which is both."""
    if key_aug is None:
        view = query_aug(images, generator, crop_generator)
        return view, view
    if key_aug is query_aug:
        both = key_aug(images, generator, crop_generator, views=2)
        key, query = both.chunk(2)
        return key, query
    return key_aug(images, generator, crop_generator), query_aug(images, generator, crop_generator)
