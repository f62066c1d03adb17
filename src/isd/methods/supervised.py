"""The supervised ceiling: the same backbone and augmentation, cross-entropy on the labels.

It keeps the self-supervised methods' interface (and their `encoder_q` key, so every evaluation and export
reads it like theirs) but has no teacher and no queue: it trains on the query (student) view alone, and its
step leaves nothing for after the optimizer step.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from isd.methods.base import AfterStep, Method, Step, checked_backbone, checked_number
from isd.methods.momentum import at_least_fp32


class Supervised(Method):
    def __init__(self, backbone: nn.Module, feat_dim: int | None = None, *, num_classes: int) -> None:
        super().__init__()
        backbone, feat_dim = checked_backbone(backbone, feat_dim)
        self.encoder_q = backbone
        self.encoder_q.fc = nn.Linear(feat_dim, int(checked_number("num_classes", num_classes, 2, integer=True)))

    def forward(self, key_view: Tensor, query_view: Tensor, labels: Tensor | None = None) -> Step:
        if labels is None:
            raise ValueError("the supervised baseline needs labels")
        logits = at_least_fp32(self.encoder_q(query_view))
        loss = F.cross_entropy(logits, labels)
        return Step(loss, {"train_acc": (logits.argmax(dim=1) == labels).float().mean()}, AfterStep())
