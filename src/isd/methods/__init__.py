"""One small module per method; the step contract is `base.py`, the momentum teacher and queue `momentum.py`."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from isd.errors import ArgumentError, ArgumentTypeError
from isd.methods.base import AfterStep, Method, Step
from isd.methods.byol import BYOL
from isd.methods.isd import ISD, ISDPlus
from isd.methods.moco import MoCo
from isd.methods.momentum import MemoryQueue, MomentumMethod, QueuedMethod
from isd.methods.supervised import Supervised
from isd.nets import build_backbone, feature_dim

METHOD_CLASSES: dict[str, type[Method]] = {"isd": ISD, "isd-plus": ISDPlus, "byol": BYOL, "moco": MoCo,
                                           "supervised": Supervised}


def build_method(name: str, backbone: nn.Module, feat_dim: int | None = None, **options: Any) -> Method:
    """The method called `name` (isd, isd-plus, byol, moco, supervised) around `backbone`; `options` are its
    keyword arguments (queue_size, temp, temp_teacher, ema; num_classes for supervised)."""
    if name not in METHOD_CLASSES:
        raise ArgumentError(f"unknown method {name!r}: use one of {', '.join(METHOD_CLASSES)}")
    try:
        return METHOD_CLASSES[name](backbone, feat_dim, **options)
    except TypeError as err:
        if isinstance(err, ArgumentTypeError):
            raise
        raise ArgumentTypeError(f"{name}: " + re.sub(r"^\w+\.__init__\(\) ", "", str(err))) from None


def method_options(cfg) -> dict[str, Any]:
    """A run config's values of its method's keyword arguments."""
    queue = {"queue_size": cfg.queue_size}
    return {"isd": {**queue, "temp": cfg.temp_student, "temp_teacher": cfg.temp_teacher, "ema": cfg.ema},
            "isd-plus": {**queue, "temp": cfg.temp_student, "ema": cfg.ema,
                         "temp_teacher": cfg.temp_student if cfg.temp_teacher is None else cfg.temp_teacher},
            "byol": {"ema": cfg.ema},
            "moco": {**queue, "temp": cfg.temp_infonce, "ema": cfg.ema}}.get(cfg.method, {})


def method_from_config(cfg, in_channels: int = 3, stem: str = "imagenet", num_classes: int = 1000) -> Method:
    """The training model of a run config; `num_classes` matters only to the supervised baseline."""
    backbone = build_backbone(cfg.arch, stem=stem, width=cfg.width, in_channels=in_channels)
    options = method_options(cfg) if cfg.method != "supervised" else {"num_classes": num_classes}
    return build_method(cfg.method, backbone, feature_dim(cfg.arch, cfg.width), **options)


__all__ = ["build_method", "method_from_config", "method_options", "METHOD_CLASSES", "Method", "Step", "AfterStep",
           "MomentumMethod", "QueuedMethod", "MemoryQueue", "ISD", "ISDPlus", "BYOL", "MoCo", "Supervised",
           "ArgumentError", "ArgumentTypeError"]
