"""One small module per method; the step contract is `base.py`, the momentum teacher and queue `momentum.py`."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from isd.checkpoint import load_teacher
from isd.errors import ArgumentError, ArgumentTypeError, SettingError
from isd.methods.base import AfterStep, Method, Step
from isd.methods.byol import BYOL
from isd.methods.distill import Distill
from isd.methods.isd import ISD, ISDPlus
from isd.methods.moco import MoCo
from isd.methods.momentum import MemoryQueue, MomentumMethod, QueuedMethod
from isd.methods.supervised import Supervised
from isd.nets import build_backbone, feature_dim

METHOD_CLASSES: dict[str, type[Method]] = {"isd": ISD, "isd-plus": ISDPlus, "byol": BYOL, "moco": MoCo,
                                           "supervised": Supervised, "distill": Distill}


def build_method(name: str, backbone: nn.Module, feat_dim: int | None = None, **options: Any) -> Method:
    """The method called `name` (isd, isd-plus, byol, moco, supervised, distill) around `backbone`; `options` are
    its keyword arguments (queue_size, temp, temp_teacher, ema; num_classes for supervised; teacher, variant for
    distill)."""
    if name not in METHOD_CLASSES:
        raise ArgumentError(f"unknown method {name!r}: use one of {', '.join(METHOD_CLASSES)}")
    try:
        return METHOD_CLASSES[name](backbone, feat_dim=feat_dim, **options)
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
            "moco": {**queue, "temp": cfg.temp_infonce, "ema": cfg.ema},
            "distill": {**queue, "temp": cfg.temp_student, "ema": cfg.ema, "variant": cfg.distill_variant}
            }.get(cfg.method, {})


def method_from_config(cfg, in_channels: int = 3, stem: str = "imagenet", num_classes: int = 1000,
                       teacher: nn.Module | None = None, trust_code: bool = False) -> Method:
    """The training model of a run config; `num_classes` matters only to the supervised baseline. Distillation
    loads `cfg.teacher` (read safely unless `trust_code`), or takes `teacher`."""
    backbone = build_backbone(cfg.arch, stem=stem, width=cfg.width, in_channels=in_channels)
    options: dict[str, Any] = method_options(cfg) if cfg.method != "supervised" else {"num_classes": num_classes}
    if cfg.method == "distill":
        options.update(teacher_for(cfg, in_channels, trust_code) if teacher is None else {"teacher": teacher})
    return build_method(cfg.method, backbone, feature_dim(cfg.arch, cfg.width), **options)


def teacher_for(cfg, in_channels: int, trust_code: bool = False) -> dict[str, Any]:
    """The frozen teacher of a distillation config, checked against the run's images before any compute."""
    net, info = load_teacher(cfg.teacher, cfg.teacher_encoder, trust_code)
    if info.get("in_channels", 3) != in_channels:
        raise SettingError("teacher {path} takes {need}-channel images, but the data has {has} channels ({teacher}); "
                           "distil on the kind of images it was trained on", path=cfg.teacher,
                           need=info.get("in_channels"), has=in_channels)
    trained = info.get("image_size")
    if trained and cfg.image_size and int(trained) != int(cfg.image_size):
        raise SettingError("teacher {path} was trained on {trained} px images, this run's are {size} px "
                           "({image_size}); set {image_size} {trained} or use a teacher trained at {size} px",
                           path=cfg.teacher, trained=trained, size=cfg.image_size)
    return {"teacher": net}


__all__ = ["build_method", "method_from_config", "method_options", "METHOD_CLASSES", "Method", "Step", "AfterStep",
           "MomentumMethod", "QueuedMethod", "MemoryQueue", "ISD", "ISDPlus", "BYOL", "MoCo", "Supervised", "Distill",
           "ArgumentError", "ArgumentTypeError"]
