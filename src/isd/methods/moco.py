"""MoCo-v2: InfoNCE of the student's query against its key and a queue of negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from isd.methods.momentum import QueuedMethod, purity
from isd.nets.heads import moco_projection

MOCO_DIM = 128


def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temp: float) -> Tensor:
    """Cross-entropy with the positive q·k at index 0 and q·Qᵀ as negatives. Call in fp32."""
    positive = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, q @ queue.T], dim=1) / temp
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class MoCo(QueuedMethod):
    def __init__(self, backbone: nn.Module, feat_dim: int, cfg) -> None:
        super().__init__(backbone, feat_dim, cfg)
        self.temp_infonce = cfg.temp_infonce

    def queue_dim(self, feat_dim: int) -> int:
        return MOCO_DIM

    def build_projection(self, feat_dim: int, cfg) -> nn.Module:
        return moco_projection(feat_dim, MOCO_DIM)

    def loss(self, q: Tensor, k: Tensor, labels: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        loss = moco_loss(q, k, self.queue.queue, self.temp_infonce)
        stats = {} if labels is None else {"purity": purity(k, self.queue, labels)}
        return loss, stats
