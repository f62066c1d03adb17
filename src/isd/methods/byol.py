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
    def build_projection(self, feat_dim: int, cfg) -> nn.Module:
        return mlp(feat_dim, 2 * feat_dim, feat_dim // 4)

    def build_predictor(self, feat_dim: int, cfg) -> nn.Module:
        return mlp(feat_dim // 4, 2 * feat_dim, feat_dim // 4)

    def loss(self, q: Tensor, k: Tensor, labels: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        return byol_loss(q, k), {}
