"""Backbones (torchvision ResNets) and the MLP heads of the original code (docs/faithfulness.md)."""

from isd.nets.backbones import build_backbone, feature_dim
from isd.nets.heads import mlp, isd_predictor

__all__ = ["build_backbone", "feature_dim", "mlp", "isd_predictor"]
