"""The step contract between a method and the training loop.

`forward(key_view, query_view, labels)` computes the loss and the logged stats and changes nothing but the
BatchNorm statistics of the networks it runs: it returns a `Step`, whose `after` says what must happen once the
optimizer has stepped (move the teacher, enqueue the keys). The loop applies it with `apply_step(after)` right
after `optimizer.step()`, and drops it for a step it skips; a second forward (a diagnostic, gradient
accumulation) moves nothing.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from isd.errors import ArgumentError, ArgumentTypeError


@dataclass(frozen=True)
class AfterStep:
    """What one step leaves for after `optimizer.step()`."""

    update_teacher: bool = False  # θ_t ← m·θ_t + (1−m)·θ_s with the student just stepped
    keys: Tensor | None = None  # teacher embeddings of every rank's batch, to enqueue
    labels: Tensor | None = None  # their labels (the purity diagnostic only)


class Step(NamedTuple):
    loss: Tensor
    stats: dict[str, Tensor]
    after: AfterStep


class Method(nn.Module):
    """What the loop trains: `encoder_q` is the backbone that evaluation and export read."""

    encoder_q: nn.Module

    def forward(self, key_view: Tensor, query_view: Tensor, labels: Tensor | None = None) -> Step:
        raise NotImplementedError

    def apply_step(self, after: AfterStep) -> None:
        """Do what `after` asks; a method without a teacher or a queue asks for nothing."""

    def catch_up_teacher(self) -> None:
        """The teacher update the original code makes at the top of its first forward (see `MomentumMethod`)."""


# ----------------------------------------------------------------------------------- arguments of the public API


def checked_number(name: str, value: object, low: float, high: float | None = None, integer: bool = False,
                   low_open: bool = False, high_open: bool = False) -> float:
    """`value` if it is a number (a whole one with `integer`) in [low, high] (open ends where asked), else a one-line
    error naming `name`."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ArgumentTypeError(f"{name} must be {'a whole number' if integer else 'a number'}, got "
                                f"{type(value).__name__} {value!r}")
    number = float(value)  # checked above: a Real
    too_low = number <= low if low_open else value < low
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        span = f"{'(' if low_open else '['}{low}, {'∞)' if high is None else str(high) + (')' if high_open else ']')}"
        raise ArgumentError(f"{name} must be in {span}, got {value!r}")
    return value  # type: ignore[return-value]  # the caller's own int or float, unchanged


def backbone_feature_dim(backbone: nn.Module) -> int | None:
    """The size of the vector a backbone gives its head, where its structure tells: the input of a Linear `fc`, or
    the channels of a torchvision ResNet's last block; None for other networks."""
    fc = getattr(backbone, "fc", None)
    if isinstance(fc, nn.Linear):
        return fc.in_features
    if isinstance(backbone, ResNet):
        last = backbone.layer4[-1]
        if isinstance(last, Bottleneck):
            return last.bn3.num_features
        if isinstance(last, BasicBlock):
            return last.bn2.num_features
    return None


class WithHead(nn.Module):
    """A backbone without an `fc` attribute, given one: forward = fc(body(x)). (A torchvision ResNet has its own
    `fc`, which the method replaces, so its state_dict keys stay the original code's.)"""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body, self.fc = body, nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


def checked_backbone(backbone: object, feat_dim: object) -> tuple[nn.Module, int]:
    """(the backbone, with an `fc` slot for the method's head; its feature size), or a one-line error."""
    if not isinstance(backbone, nn.Module):
        raise ArgumentTypeError(f"backbone must be a torch.nn.Module (e.g. isd.build_backbone('resnet18')), got "
                                f"{type(backbone).__name__}")
    known = backbone_feature_dim(backbone)
    if feat_dim is None:
        if known is None:
            raise ArgumentTypeError(f"feat_dim: pass the size of the feature vector {type(backbone).__name__} "
                                    "returns (it cannot be read from its layers)")
        feat_dim = known
    dim = int(checked_number("feat_dim", feat_dim, 1, integer=True))
    if known is not None and dim != known:
        raise ArgumentError(f"feat_dim={dim} does not match the backbone, whose features are {known}-d; pass "
                            f"feat_dim={known} or leave it out")
    if not isinstance(getattr(backbone, "fc", None), nn.Module):
        backbone = WithHead(backbone)
    return backbone, dim
