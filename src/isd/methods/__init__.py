"""One small module per method; the step contract is `base.py`, the momentum teacher and queue `momentum.py`."""

from __future__ import annotations

from isd.methods.base import AfterStep, Method, Step
from isd.methods.byol import BYOL
from isd.methods.isd import ISD, ISDPlus
from isd.methods.moco import MoCo
from isd.methods.momentum import MomentumMethod, QueuedMethod
from isd.methods.supervised import Supervised
from isd.nets import build_backbone, feature_dim

METHOD_CLASSES = {"isd": ISD, "isd-plus": ISDPlus, "byol": BYOL, "moco": MoCo}


def build_method(cfg, in_channels: int = 3, stem: str = "imagenet", num_classes: int = 1000) -> Method:
    """The training model of cfg.method; `num_classes` matters only to the supervised baseline."""
    backbone = build_backbone(cfg.arch, stem=stem, width=cfg.width, in_channels=in_channels)
    if cfg.method == "supervised":
        return Supervised(backbone, feature_dim(cfg.arch, cfg.width), cfg, num_classes)
    return METHOD_CLASSES[cfg.method](backbone, feature_dim(cfg.arch, cfg.width), cfg)


__all__ = ["build_method", "METHOD_CLASSES", "Method", "Step", "AfterStep", "MomentumMethod", "QueuedMethod", "ISD",
           "ISDPlus", "BYOL", "MoCo", "Supervised"]
