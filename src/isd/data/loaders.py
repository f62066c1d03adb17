"""Batches of two views, on the training device.

Randomness is a function of (seed, epoch, sample or step), never of a running RNG: the data order and
every augmentation are the same after a resume and for any number of workers or processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from isd.data.batch_aug import BatchAugment
from isd.data.decode import open_rgb
from isd.data.sources import Source
from isd.data.views import eval_transform, train_transform
from isd.errors import UsageError
from isd.runtime import ignore_stop_signals


MAX_REPLACEMENT_TRIES = 64


def mix_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))


@dataclass
class Batch:
    key: Tensor
    query: Tensor
    labels: Tensor
    bad: list[int]  # indices of unreadable images replaced in this batch


class RankBatches(Sampler):
    """This rank's share of each global batch of the epoch's permutation (drop_last, like the original)."""

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.global_batch, self.seed, self.rank, self.world = n, global_batch, seed, rank, world
        self.local = global_batch // world
        self.epoch, self.start_step = 1, 0

    def __len__(self) -> int:
        return self.n // self.global_batch - self.start_step

    def __iter__(self):
        order = epoch_order(self.n, self.seed, self.epoch)
        for step in range(self.start_step, self.n // self.global_batch):
            first = step * self.global_batch + self.rank * self.local
            yield [(int(i), self.epoch) for i in order[first:first + self.local]]


class TwoViewFiles(Dataset):
    def __init__(self, source: Source, key_t, query_t, seed: int) -> None:
        self.files, self.targets = source.files, source.targets
        self.key_t, self.query_t, self.seed = key_t, query_t, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]):
        index, epoch = item
        bad, img = -1, None
        for attempt in range(min(len(self.files), MAX_REPLACEMENT_TRIES)):
            candidate = (index + attempt) % len(self.files)
            try:
                img = open_rgb(self.files[candidate])
                break
            except Exception:  # unreadable, truncated, not an image: replaced, counted and reported
                bad = candidate if bad < 0 else bad
        if img is None:
            raise RuntimeError(f"{MAX_REPLACEMENT_TRIES} images in a row from {self.files[index]} are unreadable")
        torch.manual_seed(mix_seed(self.seed, epoch, index))
        return self.key_t(img), self.query_t(img), int(self.targets[candidate]), bad


def _collate(samples) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    keys, queries, labels, bad = zip(*samples)
    return torch.stack(keys), torch.stack(queries), torch.tensor(labels), [b for b in bad if b >= 0]


class FileLoader:
    """Decodes and augments image files in DataLoader workers (ImageNet-style folders)."""

    def __init__(self, source: Source, cfg, size: int, device: torch.device, rank: int = 0, world: int = 1):
        key_t = train_transform(cfg.key_aug, size, source.mean, source.std, cfg.crop_scale, cfg.blur_prob)
        query_t = train_transform(cfg.query_aug, size, source.mean, source.std, cfg.crop_scale, cfg.blur_prob)
        self.source, self.device = source, device
        self.sampler = RankBatches(len(source), cfg.batch_size, cfg.seed, rank, world)
        self.loader = DataLoader(TwoViewFiles(source, key_t, query_t, cfg.seed), batch_sampler=self.sampler,
                                 num_workers=cfg.num_workers, collate_fn=_collate, worker_init_fn=ignore_stop_signals,
                                 pin_memory=device.type == "cuda", persistent_workers=False,
                                 prefetch_factor=4 if cfg.num_workers > 0 else None)

    def steps_per_epoch(self) -> int:
        return len(self.source) // self.sampler.global_batch

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        self.sampler.epoch, self.sampler.start_step = epoch, start_step
        for key, query, labels, bad in self.loader:
            yield Batch(key.to(self.device, non_blocking=True), query.to(self.device, non_blocking=True),
                        labels.to(self.device, non_blocking=True), [self.source.files[i] for i in bad])


class TensorLoader:
    """Whole-batch augmentation of an in-memory uint8 set, on the training device (no per-image PIL)."""

    def __init__(self, source: Source, cfg, size: int, device: torch.device, rank: int = 0, world: int = 1):
        self.images = source.images.to(device)
        self.targets = source.targets.to(device)
        self.key_aug = BatchAugment(cfg.key_aug, size, source.mean, source.std, tuple(cfg.crop_scale),
                                    blur_prob=cfg.blur_prob)
        self.query_aug = BatchAugment(cfg.query_aug, size, source.mean, source.std, tuple(cfg.crop_scale),
                                      blur_prob=cfg.blur_prob)
        self.sampler = RankBatches(len(source), cfg.batch_size, cfg.seed, rank, world)
        self.device = device

    def steps_per_epoch(self) -> int:
        return len(self.targets) // self.sampler.global_batch

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        s = self.sampler
        order = epoch_order(len(self.targets), s.seed, epoch).to(self.device)
        gen = torch.Generator(device=self.device)
        for step in range(start_step, self.steps_per_epoch()):
            batch = order[step * s.global_batch:(step + 1) * s.global_batch]
            # views of the whole global batch from one seeded generator, then this rank's slice: identical
            # data for any number of processes (augmenting a 28 px batch is cheap next to the network)
            gen.manual_seed(mix_seed(s.seed, epoch, step))
            images = self.images[batch]
            key = self.key_aug(images, generator=gen)
            query = self.query_aug(images, generator=gen)
            mine = slice(s.rank * s.local, (s.rank + 1) * s.local)
            yield Batch(key[mine], query[mine], self.targets[batch][mine], [])


def build_loader(source: Source, cfg, size: int, device: torch.device, rank: int = 0, world: int = 1):
    cls = TensorLoader if source.in_memory else FileLoader
    return cls(source, cfg, size, device, rank, world)


class ImageFiles(Dataset):
    """(transform(image), label) for each file of a source; eval views and the linear probe's views."""

    def __init__(self, source: Source, transform) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        try:
            return self.transform(open_rgb(self.source.files[index])), int(self.source.targets[index])
        except Exception:  # reported by the main process as one line naming the file (see unreadable_check)
            return self.transform(Image.new("RGB", (32, 32), (128, 128, 128))), -1 - index


def unreadable_check(labels: Tensor, source: Source) -> Tensor:
    """Evaluation needs every image: the first unreadable one (label -1 - index) stops it with one line."""
    bad = labels < 0
    if bool(bad.any()):
        path = source.files[-1 - int(labels[bad][0])]
        raise UsageError(f"image {path} cannot be read (corrupt, truncated, not an image or not readable); "
                         f"evaluation uses every image of the split: fix or remove it")
    return labels


def eval_batches(source: Source, size: int, batch_size: int, device: torch.device,
                 num_workers: int = 4) -> Iterator[tuple[Tensor, Tensor]]:
    """Unaugmented images in dataset order (Resize -> CenterCrop for files, native size in memory)."""
    if source.in_memory:
        plain = BatchAugment("none", size, source.mean, source.std)
        for start in range(0, len(source), batch_size):
            images = source.images[start:start + batch_size].to(device)
            yield plain(images), source.targets[start:start + batch_size].to(device)
        return
    loader = DataLoader(ImageFiles(source, eval_transform(size, source.mean, source.std)), batch_size=batch_size,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    for images, labels in loader:
        yield images.to(device, non_blocking=True), unreadable_check(labels, source).to(device, non_blocking=True)
