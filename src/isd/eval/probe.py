"""The paper's linear probe (its classifier head) and its one trainer, fed either by cached unaugmented features
(`FeatureBatches`, seconds) or by augmented images through the frozen backbone (`ImageBatches`, the paper's
protocol)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from isd.data.batches import batches_of
from isd.data.sources import Source
from isd.eval.features import backbone_forward

VAR_EPS = 1e-5  # added to the variance before the square root, as in the original FullBatchNorm


class LinearProbe(nn.Module):
    """L2-normalise -> standardise with fixed train statistics -> Linear(dim, num_classes).

    `mean` and `std` are buffers, so they are part of the state_dict; std = sqrt(var + 1e-5) with the
    unbiased per-dimension variance of the L2-normalised train features (torch.var_mean, as the original).
    """

    mean: Tensor
    std: Tensor

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.linear = nn.Linear(dim, num_classes)

    @torch.no_grad()
    def set_statistics(self, train_features: Tensor) -> None:
        var, mean = torch.var_mean(F.normalize(train_features.float(), dim=1), dim=0)
        self.mean.copy_(mean)
        self.std.copy_((var + VAR_EPS).sqrt())

    def standardise(self, features: Tensor) -> Tensor:
        return (F.normalize(features.float(), dim=1) - self.mean) / self.std

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(self.standardise(features))


def topk_accuracy(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy in percent for each k (k is capped at the number of classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels.view(-1, 1).to(top.device)
    return {k: 100.0 * hits[:, :k].any(dim=1).double().mean().item() for k in ks}


def _init_linear(linear: nn.Linear, generator: torch.Generator) -> None:
    # Same distribution as nn.Linear.reset_parameters, but from our generator (no global RNG side effects).
    nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
    bound = 1 / math.sqrt(linear.in_features)
    nn.init.uniform_(linear.bias, -bound, bound, generator=generator)


@contextmanager
def _single_threaded(device: torch.device) -> Iterator[None]:
    # The per-step ops are tiny (batch x dim x classes): on CPU, thread synchronisation costs more than it
    # saves, and on a loaded machine OpenMP barriers slow each step down by orders of magnitude.
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class FeatureBatches:
    """Cached features, reshuffled every epoch by the trainer's generator and standardised once (the normalisation
    is fixed). The probe's steps are tiny: on CPU they run single-threaded."""

    single_threaded = True

    def __init__(self, features: Tensor, labels: Tensor, batch_size: int) -> None:
        self.features, self.labels, self.batch_size = features, labels, batch_size
        self.device = features.device

    def prepare(self, probe: LinearProbe) -> None:
        with torch.no_grad():
            self.xs = probe.standardise(self.features)
        self.ys = self.labels.to(self.device).long()
        self.buffer = torch.empty_like(self.xs)

    def epoch(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        perm = torch.randperm(len(self.xs), generator=generator).to(self.device)
        # one gather per epoch into a reused buffer, then contiguous slices: far cheaper than per-batch indexing
        torch.index_select(self.xs, 0, perm, out=self.buffer)
        ys = self.ys[perm]
        for start in range(0, len(self.xs), self.batch_size):
            yield self.buffer[start:start + self.batch_size], ys[start:start + self.batch_size]


class ImageBatches:
    """The paper's protocol: augmented train images (RandomResizedCrop + flip) through the frozen backbone in eval
    mode; the views depend on (seed, epoch) only."""

    single_threaded = False

    def __init__(self, net: nn.Module, source: Source, size: int, batch_size: int, device: torch.device,
                 num_workers: int = 4, seed: int = 0) -> None:
        self.net = net.eval().to(device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.images, self.size, self.batch_size = batches_of(source), size, batch_size
        self.device, self.num_workers, self.seed = device, num_workers, seed
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def prepare(self, probe: LinearProbe) -> None:
        self.probe = probe

    def epoch(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        for images, labels in self.images.augmented(self.size, self.batch_size, self.device, self.num_workers,
                                                    self.seed, epoch):
            with torch.no_grad(), self.autocast:
                feats = backbone_forward(self.net, images)
            with torch.no_grad():  # ended before the yield: the trainer's step needs gradients
                standardised = self.probe.standardise(feats.float())
            yield standardised, labels


def train_probe(
    batches: FeatureBatches | ImageBatches,
    stats_features: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    num_classes: int,
    epochs: int = 40,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    milestones: tuple[int, ...] = (15, 30, 40),
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    eval_batch: int = 16384,
) -> dict:
    """Train a LinearProbe with the paper's recipe on `batches`; keep the best val top-1 state.

    The standardisation uses `stats_features` (unaugmented train features, as the original). SGD(lr, momentum,
    weight_decay) on the linear layer, MultiStepLR(gamma 0.1) stepped after each epoch; the probe's init and the
    feature batches' order come from one generator seeded by `seed`. Epochs in the result are 1-based. Returns
    {"best_top1", "best_top5", "best_epoch", "history", "state_dict"} (state_dict on CPU) and "final": the last
    epoch's top-1, top-5 and val predictions (a number chosen without looking at the val set).
    """
    device = batches.device
    generator = torch.Generator().manual_seed(seed)
    probe = LinearProbe(stats_features.shape[1], num_classes)
    _init_linear(probe.linear, generator)
    probe.to(device).set_statistics(stats_features.to(device))
    batches.prepare(probe)
    with torch.no_grad():
        vs = probe.standardise(val_x.to(device))
    vy = val_y.to(device).long()
    optimizer = torch.optim.SGD(probe.linear.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=0.1)
    history: list[dict] = []
    best: dict = {"best_top1": -1.0}
    for epoch in range(1, epochs + 1):
        probe.train()
        total, seen = torch.zeros((), device=device), 0
        with _single_threaded(device) if batches.single_threaded else nullcontext():
            for xb, yb in batches.epoch(epoch, generator):
                loss = F.cross_entropy(probe.linear(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(yb)
                seen += len(yb)
        lr_now = optimizer.param_groups[0]["lr"]
        scheduler.step()
        probe.eval()
        with torch.no_grad():
            logits = torch.cat([probe.linear(vs[i : i + eval_batch]) for i in range(0, len(vs), eval_batch)])
        acc = topk_accuracy(logits, vy, (1, 5))
        history.append({"epoch": epoch, "lr": lr_now, "loss": total.item() / max(seen, 1), "top1": acc[1],
                        "top5": acc[5]})
        if log is not None:
            log(f"epoch {epoch}/{epochs}  lr {lr_now:.4g}  loss {history[-1]['loss']:.4f}  "
                f"top-1 {acc[1]:.2f}  top-5 {acc[5]:.2f}")
        if on_epoch is not None:
            on_epoch(history[-1])
        if acc[1] > best["best_top1"]:
            best = {"best_top1": acc[1], "best_top5": acc[5], "best_epoch": epoch,
                    "state_dict": {k: v.detach().cpu().clone() for k, v in probe.state_dict().items()}}
    final = {"top1": history[-1]["top1"], "top5": history[-1]["top5"], "predictions": logits.argmax(dim=1).cpu()}
    return {**best, "history": history, "final": final}


def balanced_label_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Class-balanced seeded subset (the 1% / 10% semi-supervised protocol); returns sorted indices.

    From each class present in `labels` take max(1, round_half_up(fraction * class_count)) indices,
    drawn with a torch.Generator seeded by `seed`, classes visited in ascending label order.
    """
    labels_cpu = labels.detach().cpu().long()
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels_cpu).tolist():
        members = (labels_cpu == c).nonzero().squeeze(1)
        take = max(1, math.floor(fraction * len(members) + 0.5))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.cat(chosen).sort().values.to(labels.device)
