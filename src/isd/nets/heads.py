"""The heads of the original code (docs/faithfulness.md). Every MLP is Linear -> BN1d -> ReLU -> Linear unless
said otherwise."""

from __future__ import annotations

from torch import nn


def mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """ISD+/BYOL projection (d -> 2d -> d/4) and predictor (d/4 -> 2d -> d/4)."""
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim_out))


def isd_predictor(dim: int) -> nn.Sequential:
    """ISD's student predictor: Linear(d, d, bias=False) -> BN1d -> ReLU -> Linear(d, d)."""
    return nn.Sequential(nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim))


def moco_projection(dim_in: int, dim_out: int = 128) -> nn.Sequential:
    """MoCo-v2's projection: Linear(d, d) -> ReLU -> Linear(d, 128), no BatchNorm."""
    return nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True), nn.Linear(dim_in, dim_out))
