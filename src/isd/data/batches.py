"""Batches of images on a device, from a source held in memory or from image files: `batches_of(source)` is the
one place where the two part ways, and every consumer (training, features, the probe, figures, floors) asks the
object it returns.

Randomness is a function of (seed, epoch, sample or step), never of a running RNG: the data order and every
augmentation are the same after a resume and for any number of workers or processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from isd.config import SAME_VIEW, build_config
from isd.data.batch_augment import BatchAugment, two_views
from isd.data.decode import decode_all, encoded_or_rgb, jpeg_decoder_problem, open_rgb, rgb_tensor
from isd.data.pil_augment import eval_transform, train_transform
from isd.data.sources import IMAGENET_MEAN, IMAGENET_STD, Source
from isd.errors import ArgumentError, ArgumentTypeError, SettingError, UsageError
from isd.runtime import ignore_stop_signals

MAX_REPLACEMENT_TRIES = 64
PREFETCH = 4  # batches each DataLoader worker keeps ready
PROBE_CROP_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop default, as the original linear evaluation


def mix_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))


@dataclass
class Batch:
    key: Tensor
    query: Tensor
    labels: Tensor
    bad: list[str]  # unreadable files replaced in this batch
    indices: Tensor | None = None  # which images of the training set these are (a cached teacher looks them up)


class TwoViewLoader(Protocol):
    pipeline: str  # where the views are made: memory (in-memory set), workers (PIL per image) or device (files)
    ahead: int  # batches DataLoader workers make ahead of the consumer (0 without workers)

    def steps_per_epoch(self) -> int: ...

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]: ...


class Batches(Protocol):
    """What a source's images are asked for."""

    def two_views(self, cfg, size: int, device: torch.device, rank: int = 0, world: int = 1) -> TwoViewLoader:
        """Training batches: the (teacher, student) views of `cfg`'s augmentations, this rank's share."""
        ...

    def plain(self, size: int, batch_size: int, device: torch.device,
              num_workers: int = 4) -> Iterator[tuple[Tensor, Tensor]]:
        """Unaugmented images in source order (Resize -> CenterCrop for files, native size in memory)."""
        ...

    def augmented(self, size: int, batch_size: int, device: torch.device, num_workers: int, seed: int,
                  epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled epoch of the probe's RandomResizedCrop + flip views; the randomness is (seed, epoch)'s."""
        ...

    def uint8(self, indices: Tensor, size: int) -> Tensor:
        """uint8 [N, C, H, W] of the chosen images (files: shorter side resized to `size`, centre-cropped)."""
        ...

    def pixels(self) -> tuple[Tensor, Tensor]:
        """(raw pixels standardised per channel by the set's mean and std, flattened; labels): the raw-pixel
        floor (kNN then L2-normalises them, as it does features)."""
        ...


def view_augments(cfg, size: int, source: Source, device: torch.device | None = None,
                  training: bool = False) -> tuple[BatchAugment | None, BatchAugment]:
    """The (teacher, student) views of `cfg`'s recipes, for whole batches (in memory, or decoded files), with their
    constants on `device`; for training, with their pixel work compiled when `cfg.compile` asks (a training
    batch keeps one shape). One recipe for both, on a GPU: one object, twice, which `two_views` makes as one batch
    (`both_views_as_one_batch`). Key recipe `same` (distillation): None, the teacher sees the student's view."""
    def views(recipe: str) -> BatchAugment:
        aug = BatchAugment(recipe, size, source.mean, source.std, tuple(cfg.crop_scale), blur_prob=cfg.blur_prob)
        aug = aug.to(device) if device is not None else aug
        if training and cfg.compile != "off":
            aug.compile_pixels()
        return aug

    if cfg.key_aug == SAME_VIEW:
        return None, views(cfg.query_aug)
    key = views(cfg.key_aug)
    shared = cfg.query_aug == cfg.key_aug and device is not None and both_views_as_one_batch(device)
    return key, (key if shared else views(cfg.query_aug))


def both_views_as_one_batch(device: torch.device) -> bool:
    """Whether two views of one recipe are made as one batch of twice the size: on a GPU, where each of a view's
    ~150 small operations costs a kernel launch and one batch halves them. Not on a CPU, where an operation costs
    little beyond its arithmetic and a batch twice the size falls out of the cache (measured on 2 cores: level at
    28 px, about half the speed for ResNet-18's 224 px views of 32 images)."""
    return device.type == "cuda"


def batches_of(source: Source) -> Batches:
    return MemoryBatches(source) if source.images is not None else FileBatches(source)


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


# ----------------------------------------------------------------------------------------------- in memory


class MemoryBatches:
    """A uint8 tensor in memory (28-32 px sets), augmented a whole batch at a time on the device."""

    def __init__(self, source: Source) -> None:
        assert source.images is not None
        self.source, self.images = source, source.images

    def two_views(self, cfg, size: int, device: torch.device, rank: int = 0, world: int = 1) -> TwoViewLoader:
        return TensorLoader(self.source, cfg, size, device, rank, world)

    def plain(self, size: int, batch_size: int, device: torch.device,
              num_workers: int = 4) -> Iterator[tuple[Tensor, Tensor]]:
        plain = BatchAugment("none", size, self.source.mean, self.source.std).to(device)
        for start in range(0, len(self.source), batch_size):
            images = self.images[start:start + batch_size].to(device)
            yield plain(images), self.source.targets[start:start + batch_size].to(device)

    def augmented(self, size: int, batch_size: int, device: torch.device, num_workers: int, seed: int,
                  epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        epoch_seed = mix_seed(seed, epoch)
        aug = BatchAugment("weak", size, self.source.mean, self.source.std, PROBE_CROP_SCALE).to(device)
        order = torch.randperm(len(self.source), generator=torch.Generator().manual_seed(epoch_seed))
        gen = torch.Generator(device=device).manual_seed(epoch_seed)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            yield aug(self.images[batch].to(device), generator=gen), self.source.targets[batch].to(device)

    def uint8(self, indices: Tensor, size: int) -> Tensor:
        return self.images[indices]

    def pixels(self) -> tuple[Tensor, Tensor]:
        # standardised, not 0-1: centring the pixels makes cosine neighbours compare contrast rather than brightness
        # (CIFAR-10 20-NN 43.5 against 36.1; Fashion-MNIST 85.3 against 84.4), the stronger floor
        mean = torch.tensor(self.source.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.source.std).view(1, -1, 1, 1)
        return ((self.images.float() / 255.0 - mean) / std).flatten(1), self.source.targets


class TensorLoader:
    """Two views of each global batch of an in-memory uint8 set, on the training device (no per-image PIL)."""

    pipeline, ahead = "memory", 0

    def __init__(self, source: Source, cfg, size: int, device: torch.device, rank: int = 0, world: int = 1):
        assert source.images is not None
        self.images = source.images.to(device)
        self.targets = source.targets.to(device)
        self.key_aug, self.query_aug = view_augments(cfg, size, source, device, training=True)
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
            key, query = two_views(self.images[batch], self.key_aug, self.query_aug, gen)
            mine = slice(s.rank * s.local, (s.rank + 1) * s.local)
            yield Batch(key[mine], query[mine], self.targets[batch][mine], [], batch[mine])


def two_view_batches(images: Tensor, labels: Tensor | None = None, *, batch_size: int = 256, seed: int = 0,
                     augmentation: str = "strong/strong", crop_scale: tuple[float, float] = (0.2, 1.0),
                     blur_prob: float = 0.5, size: int | None = None, mean: tuple[float, ...] | None = None,
                     std: tuple[float, ...] | None = None, device: str | torch.device = "cpu") -> TensorLoader:
    """Training batches of an in-memory uint8 set ``[N, C, H, W]`` (C = 1 or 3), exactly as `isd train` makes
    them: `.epoch(e)` yields each step's `Batch` (key view, query view, labels) of epoch e (counted from 1), in
    an order and with views that are functions of (seed, epoch, step); `.steps_per_epoch()` = N // batch_size.
    `augmentation` is TEACHER/STUDENT with recipes weak and strong; `mean`/`std` default to ImageNet's (0.5 for
    one channel); `size` to the images' own."""
    usable = isinstance(images, Tensor) and images.dtype == torch.uint8 and images.dim() == 4
    if not usable or images.shape[1] not in (1, 3):
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ArgumentTypeError(f"images must be a uint8 tensor [N, C, H, W] with C = 1 or 3, got {got}")
    n, channels = images.shape[0], images.shape[1]
    labels = torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels, dtype=torch.long)
    if labels.shape != (n,):
        raise ArgumentError(f"labels must be one integer per image ({n}), got shape {tuple(labels.shape)}")
    values = {"data": "in-memory", "batch_size": batch_size, "seed": seed, "augmentation": augmentation,
              "crop_scale": list(crop_scale), "blur_prob": blur_prob, "image_size": size}
    try:
        cfg = build_config(None, values)
    except UsageError as err:
        raise ArgumentError(str(err)) from None
    if batch_size > n:
        raise ArgumentError(f"batch_size={batch_size} is larger than the {n} images")
    default_mean, default_std = ((0.5,), (0.5,)) if channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    source = Source("in-memory", [str(c) for c in range(int(labels.max()) + 1)], labels, tuple(mean or default_mean),
                    tuple(std or default_std), native_size=images.shape[-1], images=images)
    return TensorLoader(source, cfg, size or images.shape[-1], torch.device(device))


# ----------------------------------------------------------------------------------------------- image files


class FileBatches:
    """Image files, decoded (and augmented) per image in DataLoader workers."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def two_views(self, cfg, size: int, device: torch.device, rank: int = 0, world: int = 1) -> TwoViewLoader:
        loader = DeviceFileLoader if decode_on_device(cfg, device) else FileLoader
        return loader(self.source, cfg, size, device, rank, world)

    def plain(self, size: int, batch_size: int, device: torch.device,
              num_workers: int = 4) -> Iterator[tuple[Tensor, Tensor]]:
        transform = eval_transform(size, self.source.mean, self.source.std)
        loader = DataLoader(ImageFiles(self.source, transform), batch_size=batch_size, num_workers=num_workers,
                            pin_memory=device.type == "cuda")
        for images, labels in loader:
            yield images.to(device, non_blocking=True), self._checked(labels).to(device, non_blocking=True)

    def augmented(self, size: int, batch_size: int, device: torch.device, num_workers: int, seed: int,
                  epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        epoch_seed = mix_seed(seed, epoch)
        transform = train_transform("weak", size, self.source.mean, self.source.std, PROBE_CROP_SCALE)
        torch.manual_seed(epoch_seed)  # the transforms' RNG when num_workers == 0; workers are seeded by the loader
        loader = DataLoader(ImageFiles(self.source, transform), batch_size=batch_size, shuffle=True,
                            num_workers=num_workers, generator=torch.Generator().manual_seed(epoch_seed),
                            pin_memory=device.type == "cuda")
        for images, labels in loader:
            yield images.to(device, non_blocking=True), self._checked(labels).to(device, non_blocking=True)

    def uint8(self, indices: Tensor, size: int) -> Tensor:
        out = []
        for i in indices.tolist():
            img = open_rgb(self.source.files[i])
            scale = size / min(img.size)
            img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))),
                             Image.Resampling.BILINEAR)
            left, top = (img.width - size) // 2, (img.height - size) // 2
            out.append(rgb_tensor(img.crop((left, top, left + size, top + size))))
        return torch.stack(out)

    def pixels(self) -> tuple[Tensor, Tensor]:
        raise UsageError(f"the raw-pixels floor needs an in-memory set (images of one size), not the files of "
                         f"{self.source.name}")

    def _checked(self, labels: Tensor) -> Tensor:
        """Evaluation needs every image: the first unreadable one (label -1 - index) stops it with one line."""
        bad = labels < 0
        if bool(bad.any()):
            path = self.source.files[-1 - int(labels[bad][0])]
            raise UsageError(f"image {path} cannot be read (corrupt, truncated, not an image or not readable); "
                             f"evaluation uses every image of the split: fix or remove it")
        return labels


def decode_on_device(cfg, device: torch.device) -> bool:
    """`data_pipeline`: auto decodes and augments image files on a GPU (where its JPEG decoder works), in the
    workers on a CPU; `device` where the decoder does not work is an error, not a slow fallback."""
    if cfg.data_pipeline == "workers" or (cfg.data_pipeline == "auto" and device.type != "cuda"):
        return False
    problem = jpeg_decoder_problem(device)
    if problem is not None and cfg.data_pipeline == "device":
        raise SettingError("{data_pipeline}=device: JPEGs cannot be decoded on {where} here ({why}); use "
                           "{data_pipeline} workers", where=device, why=problem)
    return problem is None


def first_readable(files: list[str], index: int, read):
    """(read(file), the index read, the first unreadable index or -1): an unreadable file is replaced by the next
    one, counted and reported."""
    bad = -1
    for attempt in range(min(len(files), MAX_REPLACEMENT_TRIES)):
        candidate = (index + attempt) % len(files)
        try:
            return read(files[candidate]), candidate, bad
        except Exception:  # unreadable, truncated, not an image
            bad = candidate if bad < 0 else bad
    raise RuntimeError(f"{MAX_REPLACEMENT_TRIES} images in a row from {files[index]} are unreadable")


class TwoViewFiles(Dataset):
    def __init__(self, source: Source, key_t, query_t, seed: int) -> None:
        self.files, self.targets = source.files, source.targets
        self.key_t, self.query_t, self.seed = key_t, query_t, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]):
        index, epoch = item
        img, candidate, bad = first_readable(self.files, index, open_rgb)
        torch.manual_seed(mix_seed(self.seed, epoch, index))
        if self.key_t is None:  # one view, which the teacher sees too
            view = self.query_t(img)
            return view, view, int(self.targets[candidate]), bad, candidate
        return self.key_t(img), self.query_t(img), int(self.targets[candidate]), bad, candidate


def _collate(samples) -> tuple[Tensor, Tensor, Tensor, list[int], Tensor]:
    keys, queries, labels, bad, used = zip(*samples)
    return (torch.stack(keys), torch.stack(queries), torch.tensor(labels), [b for b in bad if b >= 0],
            torch.tensor(used))


class FileLoader:
    """Decodes and augments image files in DataLoader workers (ImageNet-style folders)."""

    pipeline = "workers"

    def __init__(self, source: Source, cfg, size: int, device: torch.device, rank: int = 0, world: int = 1):
        self.ahead = cfg.num_workers * PREFETCH
        query_t = train_transform(cfg.query_aug, size, source.mean, source.std, cfg.crop_scale, cfg.blur_prob)
        key_t = None if cfg.key_aug == SAME_VIEW else train_transform(cfg.key_aug, size, source.mean, source.std,
                                                                          cfg.crop_scale, cfg.blur_prob)
        self.source, self.device = source, device
        self.sampler = RankBatches(len(source), cfg.batch_size, cfg.seed, rank, world)
        self.loader = DataLoader(TwoViewFiles(source, key_t, query_t, cfg.seed), batch_sampler=self.sampler,
                                 num_workers=cfg.num_workers, collate_fn=_collate, worker_init_fn=ignore_stop_signals,
                                 pin_memory=device.type == "cuda", persistent_workers=False,
                                 prefetch_factor=PREFETCH if cfg.num_workers > 0 else None)

    def steps_per_epoch(self) -> int:
        return len(self.source) // self.sampler.global_batch

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        self.sampler.epoch, self.sampler.start_step = epoch, start_step
        for key, query, labels, bad, used in self.loader:
            yield Batch(key.to(self.device, non_blocking=True), query.to(self.device, non_blocking=True),
                        labels.to(self.device, non_blocking=True), [self.source.files[i] for i in bad],
                        used.to(self.device, non_blocking=True))


class EncodedFiles(Dataset):
    """Each file as `encoded_or_rgb` reads it: JPEG bytes to decode on the device, other images decoded."""

    def __init__(self, source: Source) -> None:
        self.files, self.targets = source.files, source.targets

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]):
        payload, candidate, bad = first_readable(self.files, item[0], encoded_or_rgb)
        # a stand-in that fails to decode is reported once, where it is read as itself
        own = candidate if candidate == item[0] else -1
        return payload, int(self.targets[candidate]), own, bad, candidate


def _collate_encoded(samples) -> tuple[list[Tensor], Tensor, list[int], list[int], Tensor]:
    payloads, labels, own, bad, used = zip(*samples)
    return list(payloads), torch.tensor(labels), list(own), [b for b in bad if b >= 0], torch.tensor(used)


class DeviceFileLoader:
    """Image files read in DataLoader workers (JPEGs left encoded), decoded on the training device in one batched
    call and augmented there a batch at a time (`data_pipeline: device`, the default on a GPU). The views follow
    the workers' recipes (RandomResizedCrop with antialiasing, jitter, grayscale, blur, flip) with every random
    choice drawn per sample from (seed, epoch, step, rank)."""

    pipeline = "device"

    def __init__(self, source: Source, cfg, size: int, device: torch.device, rank: int = 0, world: int = 1):
        self.source, self.device, self.ahead = source, device, cfg.num_workers * PREFETCH
        self.key_aug, self.query_aug = view_augments(cfg, size, source, device, training=True)
        self.sampler = RankBatches(len(source), cfg.batch_size, cfg.seed, rank, world)
        # pinned: a copy to the GPU from pageable memory blocks until the copy is done, so until the GPU has
        # run everything queued before it
        self.loader = DataLoader(EncodedFiles(source), batch_sampler=self.sampler, num_workers=cfg.num_workers,
                                 collate_fn=_collate_encoded, worker_init_fn=ignore_stop_signals,
                                 pin_memory=device.type == "cuda", persistent_workers=False,
                                 prefetch_factor=PREFETCH if cfg.num_workers > 0 else None)

    def steps_per_epoch(self) -> int:
        return len(self.source) // self.sampler.global_batch

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        s = self.sampler
        s.epoch, s.start_step = epoch, start_step
        gen, crops = torch.Generator(device=self.device), torch.Generator()
        for step, (payloads, labels, own, bad, used) in enumerate(self.loader, start=start_step):
            images = decode_all(payloads, self.device)
            unreadable = [i for i, image in enumerate(images) if image is None]
            if len(unreadable) == len(images):
                raise RuntimeError(f"no image of a batch could be decoded ({len(images)} images)")
            stand_in = next(i for i, image in enumerate(images) if image is not None)
            if unreadable:  # the workers could open these but not decode them: replaced
                labels[unreadable] = int(labels[stand_in])
                used[unreadable] = int(used[stand_in])
            substitute = images[stand_in]
            assert substitute is not None
            ready = [substitute if image is None else image for image in images]
            seed = mix_seed(s.seed, epoch, step, s.rank)
            gen.manual_seed(seed)
            crops.manual_seed(seed)
            key, query = two_views(ready, self.key_aug, self.query_aug, gen, crops)
            paths = [self.source.files[i] for i in bad] + [self.source.files[own[i]] for i in unreadable if own[i] >= 0]
            yield Batch(key, query, labels.to(self.device, non_blocking=True), paths,
                        used.to(self.device, non_blocking=True))


class ImageFiles(Dataset):
    """(transform(image), label) for each file of a source; eval views and the linear probe's views."""

    def __init__(self, source: Source, transform) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        try:
            return self.transform(open_rgb(self.source.files[index])), int(self.source.targets[index])
        except Exception:  # reported by the main process as one line naming the file (FileBatches._checked)
            return self.transform(Image.new("RGB", (32, 32), (128, 128, 128))), -1 - index
