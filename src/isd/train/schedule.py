"""The original's learning-rate schedules (docs/faithfulness.md), evaluated once per epoch, epochs counted from 1."""

from __future__ import annotations

import math


def learning_rate(epoch: int, base_lr: float, epochs: int, schedule: str = "step",
                  decay_epochs: tuple[int, ...] = (140, 180), decay_rate: float = 0.2) -> float:
    if schedule == "cos":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
    return base_lr * decay_rate ** sum(1 for e in decay_epochs if e < epoch)
