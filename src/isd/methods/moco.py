"""MoCo-v2: InfoNCE of the student's query against its key and a queue of negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from isd.methods.base import checked_number
from isd.methods.momentum import QueuedMethod, purity
from isd.nets.heads import moco_projection

MOCO_DIM = 128


def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temp: float) -> Tensor:
    """Cross-entropy with the positive q·k at index 0 and q·Qᵀ as negatives. Call in fp32."""
    positive = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, q @ queue.T], dim=1) / temp
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class MoCo(QueuedMethod):
    """MoCo-v2: 128-d MLP projection, InfoNCE at temperature 0.2, queue 65,536, teacher momentum 0.999."""

    def __init__(self, backbone: nn.Module, feat_dim: int | None = None, *, queue_size: int = 65_536,
                 temp: float = 0.2, ema: float = 0.999) -> None:
        super().__init__(backbone, feat_dim, queue_size=queue_size, ema=ema)
        self.temp_infonce = float(checked_number("temp", temp, 0.0, low_open=True))

    def queue_dim(self, feat_dim: int) -> int:
        return MOCO_DIM

    def build_projection(self, feat_dim: int) -> nn.Module:
        return moco_projection(feat_dim, MOCO_DIM)

    def loss(self, q: Tensor, k: Tensor, labels: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        loss = moco_loss(q, k, self.queue.queue, self.temp_infonce)
        stats = {} if labels is None else {"purity": purity(k, self.queue, labels)}
        return loss, stats
