"""Which images a run trains on and which it is evaluated on.

- `holdout N`: a validation split of N images carved from the train split. Training never sees them; tuning
  evaluates on them (bank = the rest of train), so the test split is only used for final numbers.
- `common_classes C` (+ `rare_per_class R`, `draw D`): the paper's unbalanced protocol. C classes keep every
  image, every other class keeps R of them; draw D picks which.
- `imbalance_ratio R` (+ `draw D`): a long tail (CIFAR-10-LT's profile): class c keeps
  floor(n_max * R ** (-c / (C - 1))) of its images, n_max the largest class's count, so the first class keeps
  all and the last 1/R of them; draw D picks which images. The head is the classes that keep at least
  n_max / sqrt(R) images, the tail the others.
- `max_train_images M`: a seeded subset of M training images, for quick runs.

Each choice has its own fixed seed, independent of the run's seed: every method and seed of an experiment
sees the same images, and the holdout never moves.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from isd.data.sources import Source, load_source
from isd.errors import UsageError

HOLDOUT_SEED = 1_000_003
DRAW_SEED = 2_000_003
CAP_SEED = 3_000_017


def _generator(*parts: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)


def holdout_split(n: int, count: int) -> tuple[Tensor, Tensor]:
    """(kept, held out): sorted indices; the same `count` images for every run on a set of size n."""
    if not 0 < count < n:
        raise UsageError(f"holdout={count} must be between 1 and {n - 1} (the train split has {n} images)")
    order = torch.randperm(n, generator=_generator(HOLDOUT_SEED, n))
    return order[count:].sort().values, order[:count].sort().values


def common_class_ids(num_classes: int, common: int, draw: int) -> list[int]:
    """The classes that keep all their images under draw `draw`."""
    if not 0 < common < num_classes:
        raise UsageError(f"common_classes={common} must be between 1 and {num_classes - 1} (the data has "
                         f"{num_classes} classes)")
    return sorted(torch.randperm(num_classes, generator=_generator(DRAW_SEED, draw))[:common].tolist())


def unbalanced_subset(targets: Tensor, num_classes: int, common: int, rare_per_class: int, draw: int) -> Tensor:
    """Sorted indices: the common classes keep all their images, every other class `rare_per_class` of them."""
    kept_classes = common_class_ids(num_classes, common, draw)
    gen = _generator(DRAW_SEED, draw, 1)
    chosen = []
    for c in range(num_classes):
        members = (targets == c).nonzero().squeeze(1)
        if c not in kept_classes:
            members = members[torch.randperm(len(members), generator=gen)[:rare_per_class]]
        chosen.append(members)
    return torch.cat(chosen).sort().values


def long_tail_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """Images each class keeps: the exponential profile of CIFAR-10-LT (Cao et al. 2019), 5000 ... 50 at 100."""
    if num_classes < 2:
        raise UsageError(f"imbalance_ratio needs two or more classes, the data has {num_classes}")
    return [max(1, int(n_max * ratio ** (-c / (num_classes - 1)))) for c in range(num_classes)]


def long_tail_subset(targets: Tensor, num_classes: int, ratio: float, draw: int) -> Tensor:
    """Sorted indices of the long-tailed subset: class c keeps `long_tail_counts`[c] images, drawn by `draw`."""
    sizes = torch.bincount(targets, minlength=num_classes)
    counts = long_tail_counts(int(sizes.max()), num_classes, ratio)
    gen = _generator(DRAW_SEED, draw, 2)
    chosen = []
    for c in range(num_classes):
        members = (targets == c).nonzero().squeeze(1)
        chosen.append(members[torch.randperm(len(members), generator=gen)[:counts[c]]])
    return torch.cat(chosen).sort().values


def head_classes(num_classes: int, ratio: float) -> list[int]:
    """The long tail's head: the classes that keep at least n_max / sqrt(ratio) images (the first half at any
    ratio, as the profile is geometric)."""
    return [c for c in range(num_classes) if ratio ** (-c / (num_classes - 1)) >= ratio ** -0.5 - 1e-12]


def capped(n: int, limit: int) -> Tensor | None:
    if not limit or limit >= n:
        return None
    return torch.randperm(n, generator=_generator(CAP_SEED, n))[:limit].sort().values


def without_holdout(source: Source, cfg) -> Source:
    return source.take(holdout_split(len(source), cfg.holdout)[0]) if cfg.holdout else source


def training_images(source: Source, cfg) -> Source:
    """The train split as a run sees it: holdout removed, then the unbalanced subset, then the cap."""
    source = without_holdout(source, cfg)
    if cfg.common_classes:
        source = source.take(unbalanced_subset(source.targets, len(source.classes), cfg.common_classes,
                                               cfg.rare_per_class, cfg.draw))
    if cfg.imbalance_ratio:
        source = source.take(long_tail_subset(source.targets, len(source.classes), cfg.imbalance_ratio, cfg.draw))
    picked = capped(len(source), cfg.max_train_images)
    return source if picked is None else source.take(picked)


def same_classes(source: Source, classes: list[str]) -> Source:
    """`source` cut to `classes` (by name) and labelled by their index in that list, so that its labels mean
    what another split's do (a train split cut by --subset-file keeps fewer classes, renumbered)."""
    if source.classes == classes:
        return source
    index = {name: i for i, name in enumerate(classes)}
    own = torch.tensor([index.get(name, -1) for name in source.classes], dtype=torch.long)
    relabelled = own[source.targets]
    picked = source.take((relabelled >= 0).nonzero().squeeze(1))
    picked.targets, picked.classes = relabelled[relabelled >= 0], list(classes)
    return picked


def source_of(cfg, split: str) -> Source:
    """The `split` (train or val) of the run's data, as `cfg` says to read it."""
    return load_source(cfg.dataset, cfg.data, split, cfg.subset_file if split == "train" else None,
                       in_memory=cfg.in_memory, download=cfg.download)


def every_image_readable(source: Source) -> Source:
    """Evaluation uses every image of its split: a file left out when the folder was decoded stops it."""
    if source.bad_files:
        raise UsageError(f"image {source.bad_files[0]} cannot be read (corrupt, truncated, not an image or not "
                         f"readable); evaluation uses every image of the split: fix or remove it"
                         + (f" ({len(source.bad_files) - 1} more)" if len(source.bad_files) > 1 else ""))
    return source


def evaluation_sets(cfg, queries: str = "auto") -> tuple[Source, Source]:
    """(bank, queries) for kNN and the probe: the balanced train split (without the holdout) against the
    holdout (`queries` = holdout, or auto with a holdout) or the labelled val/test split."""
    train = every_image_readable(source_of(cfg, "train"))
    use_holdout = queries == "holdout" or (queries == "auto" and cfg.holdout > 0)
    if use_holdout:
        if not cfg.holdout:
            raise UsageError("evaluating on the holdout needs holdout=N (a count of train images to hold out)")
        kept, held = holdout_split(len(train), cfg.holdout)
        return train.take(kept), train.take(held)
    val = same_classes(every_image_readable(source_of(cfg, "val")), train.classes)
    if len(val) == 0:
        raise UsageError(f"the val split of {cfg.data or cfg.dataset} has no images of the {len(train.classes)} "
                         f"training classes; give a val split with the same class folders")
    return without_holdout(train, cfg), val
