"""The paper's linear probe on a frozen backbone: augmented train images, cached unaugmented val features."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from isd.data.batch_aug import BatchAugment
from isd.data.loaders import ImageFiles, mix_seed, unreadable_check
from isd.data.sources import Source
from isd.data.views import train_transform
from isd.eval.features import backbone_forward
from isd.eval.probe import LinearProbe, _init_linear, topk_accuracy

CROP_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop default, as the original linear evaluation


def augmented_batches(source: Source, size: int, batch_size: int, device: torch.device, num_workers: int,
                      seed: int, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
    """One shuffled epoch of RandomResizedCrop + flip views; the randomness depends on (seed, epoch) only."""
    epoch_seed = mix_seed(seed, epoch)
    if source.in_memory:
        aug = BatchAugment("weak", size, source.mean, source.std, CROP_SCALE).to(device)
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(epoch_seed))
        gen = torch.Generator(device=device).manual_seed(epoch_seed)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            yield aug(source.images[batch].to(device), generator=gen), source.targets[batch].to(device)
        return
    transform = train_transform("weak", size, source.mean, source.std, CROP_SCALE)  # RandomResizedCrop + flip
    torch.manual_seed(epoch_seed)  # the transforms' RNG when num_workers == 0; workers are seeded by the loader
    loader = DataLoader(ImageFiles(source, transform), batch_size=batch_size, shuffle=True,
                        num_workers=num_workers, generator=torch.Generator().manual_seed(epoch_seed),
                        pin_memory=device.type == "cuda")
    for images, labels in loader:
        yield images.to(device, non_blocking=True), unreadable_check(labels, source).to(device, non_blocking=True)


def train_linear(net: nn.Module, source: Source, size: int, stats_features: Tensor, val_x: Tensor, val_y: Tensor,
                 num_classes: int, device: torch.device, epochs: int = 40, lr: float = 0.01,
                 milestones: tuple[int, ...] = (15, 30, 40), batch_size: int = 256, num_workers: int = 4,
                 seed: int = 0, log: Callable[[str], None] = print,
                 on_epoch: Callable[[dict], None] | None = None) -> dict:
    """SGD(lr, m 0.9, wd 1e-4) on LinearProbe over a frozen eval-mode backbone; keeps the best val top-1.

    The probe's standardisation uses `stats_features` (unaugmented train features, as the original). The backbone is
    frozen and in eval mode, so the val features are fixed and evaluated from the cache each epoch.
    Returns the same keys as `train_probe_on_features`.
    """
    net.eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    probe = LinearProbe(stats_features.shape[1], num_classes)
    _init_linear(probe.linear, torch.Generator().manual_seed(seed))
    probe.to(device).set_statistics(stats_features.to(device))
    optimizer = torch.optim.SGD(probe.linear.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=0.1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    val_x, val_y = val_x.to(device), val_y.to(device)
    best: dict = {"best_top1": -1.0}
    history = []
    for epoch in range(1, epochs + 1):
        total, seen = torch.zeros((), device=device), 0
        for images, labels in augmented_batches(source, size, batch_size, device, num_workers, seed, epoch):
            with torch.no_grad(), autocast:
                feats = backbone_forward(net, images)
            loss = F.cross_entropy(probe(feats.float()), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(labels)
            seen += len(labels)
        lr_now = optimizer.param_groups[0]["lr"]
        scheduler.step()
        with torch.no_grad():
            acc = topk_accuracy(probe(val_x), val_y, (1, 5))
        history.append({"epoch": epoch, "lr": lr_now, "loss": total.item() / max(seen, 1), "top1": acc[1],
                        "top5": acc[5]})
        log(f"epoch {epoch}/{epochs}  lr {lr_now:.4g}  loss {history[-1]['loss']:.4f}  "
            f"top-1 {acc[1]:.2f}  top-5 {acc[5]:.2f}")
        if on_epoch is not None:
            on_epoch(history[-1])
        if acc[1] > best["best_top1"]:
            best = {"best_top1": acc[1], "best_top5": acc[5], "best_epoch": epoch,
                    "state_dict": {k: v.detach().cpu().clone() for k, v in probe.state_dict().items()}}
    return {**best, "history": history}
