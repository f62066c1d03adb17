"""Linear probe (the paper's classifier head) and a fast trainer on cached, frozen features."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VAR_EPS = 1e-5  # added to the variance before the square root, as in the original FullBatchNorm


class LinearProbe(nn.Module):
    """L2-normalise -> standardise with fixed train statistics -> Linear(dim, num_classes).

    `mean` and `std` are buffers, so they are part of the state_dict; std = sqrt(var + 1e-5) with the
    unbiased per-dimension variance of the L2-normalised train features (torch.var_mean, as the original).
    """

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


def train_probe_on_features(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    num_classes: int,
    epochs: int = 40,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    milestones: tuple[int, ...] = (15, 30, 40),
    seed: int = 0,
    progress: bool = False,
    eval_batch: int = 16384,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train a LinearProbe on cached features with the paper's recipe; keep the best val top-1 state.

    SGD(lr, momentum, weight_decay) on the linear layer, MultiStepLR(gamma 0.1) stepped after each epoch,
    shuffled mini-batches (last one partial) from a seeded generator. Epochs in the result are 1-based.
    Returns {"best_top1", "best_top5", "best_epoch", "history", "state_dict"} (state_dict on CPU) and "final":
    the last epoch's top-1, top-5 and val predictions (a number chosen without looking at the val set).
    """
    device = train_x.device
    generator = torch.Generator().manual_seed(seed)
    probe = LinearProbe(train_x.shape[1], num_classes)
    _init_linear(probe.linear, generator)
    probe.to(device).set_statistics(train_x)
    with torch.no_grad():  # the normalisation is fixed, so apply it once instead of every step
        xs, vs = probe.standardise(train_x), probe.standardise(val_x.to(device))
    ys, vy = train_y.to(device).long(), val_y.to(device).long()

    optimizer = torch.optim.SGD(probe.linear.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=0.1)
    history: list[dict] = []
    best: dict = {"best_top1": -1.0}
    n = len(xs)
    xs_epoch = torch.empty_like(xs)
    for epoch in range(1, epochs + 1):
        probe.train()
        perm = torch.randperm(n, generator=generator).to(device)
        # One gather per epoch into a reused buffer, then contiguous slices: far cheaper than per-batch indexing.
        torch.index_select(xs, 0, perm, out=xs_epoch)
        ys_epoch = ys[perm]
        total_loss = torch.zeros((), device=device)
        with _single_threaded(device):
            for start in range(0, n, batch_size):
                xb, yb = xs_epoch[start : start + batch_size], ys_epoch[start : start + batch_size]
                loss = F.cross_entropy(probe.linear(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += loss.detach() * len(yb)
        scheduler.step()

        probe.eval()
        with torch.no_grad():
            logits = torch.cat([probe.linear(vs[i : i + eval_batch]) for i in range(0, len(vs), eval_batch)])
        acc = topk_accuracy(logits, vy, (1, 5))
        history.append({"epoch": epoch, "loss": total_loss.item() / n, "top1": acc[1], "top5": acc[5]})
        if progress:
            print(f"epoch {epoch}/{epochs} loss {history[-1]['loss']:.4f} top1 {acc[1]:.2f} top5 {acc[5]:.2f}")
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
