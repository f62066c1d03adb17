"""Cached teacher features for distillation (`teacher_cache: true`): one pass of the frozen teacher over the
unaugmented training images (Resize -> CenterCrop for files, native size in memory), stored in the run folder and
looked up by image every step, as the original's cached teachers. The student still sees its augmented view;
the teacher's embedding of an image no longer depends on the augmentation, and costs nothing per step: on a CPU,
where the teacher's forward is a large share of a step, that is most of the point."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from isd.checkpoint import TORCHVISION, atomic_save
from isd.data.batches import Batch, TwoViewLoader, batches_of
from isd.data.sources import Source

FILE = "teacher_features.pt"


def cache_key(cfg, source: Source, size: int) -> dict:
    teacher = Path(str(cfg.teacher))
    stamp = [teacher.stat().st_size, teacher.stat().st_mtime_ns] if not str(cfg.teacher).startswith(TORCHVISION) \
        and teacher.is_file() else []
    return {"teacher": str(cfg.teacher), "encoder": cfg.teacher_encoder, "stamp": stamp, "data": source.name,
            "images": len(source), "image_size": size}


@torch.no_grad()
def teacher_features(teacher: nn.Module, source: Source, size: int, device: torch.device, batch_size: int,
                     num_workers: int) -> Tensor:
    teacher.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    out = []
    for images, _ in batches_of(source).plain(size, batch_size, device, num_workers):
        with autocast:
            out.append(teacher(images).float())
    return torch.cat(out)


def cached_teacher_features(cfg, run_dir: Path, teacher: nn.Module, source: Source, size: int, device: torch.device,
                            log: Callable[[str], None], main_process: bool = True) -> Tensor:
    """The teacher's features of every training image, from RUN_DIR/teacher_features.pt when it was made for this
    teacher, data and size (a resumed run), else computed (and saved by the main process)."""
    path, key = run_dir / FILE, cache_key(cfg, source, size)
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            return saved["features"].to(device)
    start = time.perf_counter()
    features = teacher_features(teacher, source, size, device, cfg.batch_size, cfg.num_workers)
    log(f"teacher features of {len(source)} images cached in {time.perf_counter() - start:.0f} s ({path})")
    if main_process:
        atomic_save({"key": key, "features": features.cpu()}, path)
    return features


class CachedKeys:
    """A training loader whose key view is the cached teacher feature vector of each image."""

    def __init__(self, loader: TwoViewLoader, features: Tensor) -> None:
        self.loader, self.features = loader, features
        self.pipeline, self.ahead = loader.pipeline, loader.ahead

    def steps_per_epoch(self) -> int:
        return self.loader.steps_per_epoch()

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        for batch in self.loader.epoch(epoch, start_step):
            assert batch.indices is not None, "every training loader says which images a batch holds"
            batch.key = self.features[batch.indices.to(self.features.device)]
            yield batch
