"""The original's two augmentation recipes for image files (PIL, torchvision transforms; docs/faithfulness.md)."""

from __future__ import annotations

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T


class PILGaussianBlur:
    """Blur with sigma ~ U[0.1, 2.0] and PIL radius = sigma, as the original (MoCo-v2) code."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        sigma = float(torch.empty(()).uniform_(*self.sigma))  # torch RNG: seeded per sample by the loader
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self) -> str:
        return f"PILGaussianBlur(sigma={self.sigma})"


def train_transform(recipe: str, size: int, mean, std, scale=(0.2, 1.0), blur_prob: float = 0.5) -> T.Compose:
    crop = T.RandomResizedCrop(size, scale=tuple(scale))
    finish = [T.ToTensor(), T.Normalize(mean, std)]
    if recipe == "weak":
        return T.Compose([crop, T.RandomHorizontalFlip(), *finish])
    return T.Compose([
        crop,
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([PILGaussianBlur()], p=blur_prob),
        T.RandomHorizontalFlip(),
        *finish,
    ])


def eval_transform(size: int, mean, std) -> T.Compose:
    """Resize(256) -> CenterCrop(224) at the paper's size; the same ratio at other sizes."""
    return T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])
