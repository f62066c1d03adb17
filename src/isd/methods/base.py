"""The step contract between a method and the training loop.

`forward(key_view, query_view, labels)` computes the loss and the logged stats and changes nothing but the
BatchNorm statistics of the networks it runs: it returns a `Step`, whose `after` says what must happen once the
optimizer has stepped (move the teacher, enqueue the keys). The loop applies it with `apply_step(after)` right
after `optimizer.step()`, and drops it for a step it skips; a second forward (a diagnostic, gradient
accumulation) moves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor, nn


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
