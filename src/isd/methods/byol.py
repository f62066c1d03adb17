"""Asymmetric BYOL: regress the teacher's embedding of one view from the student's of the other
(docs/faithfulness.md)."""

from __future__ import annotations

from torch import Tensor, nn

from isd.methods.momentum import MomentumMethod
from isd.nets.heads import mlp


def byol_loss(q: Tensor, k: Tensor) -> Tensor:
    """Σ‖q − k‖² / B on unit vectors (= mean of 2 − 2·cos)."""
    return (q - k).pow(2).sum() / q.shape[0]


class BYOL(MomentumMethod):
    """train_byol.py: MLP projection (d -> 2d -> d/4) and predictor, teacher momentum 0.99, no queue."""

    def __init__(self, backbone: nn.Module, feat_dim: int | None = None, *, ema: float = 0.99) -> None:
        super().__init__(backbone, feat_dim, ema=ema)

    def build_projection(self, feat_dim: int) -> nn.Module:
        return mlp(feat_dim, 2 * feat_dim, feat_dim // 4)

    def build_predictor(self, feat_dim: int) -> nn.Module:
        return mlp(feat_dim // 4, 2 * feat_dim, feat_dim // 4)

    def loss(self, q: Tensor, k: Tensor, labels: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        return byol_loss(q, k), {}
