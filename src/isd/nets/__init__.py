"""Backbones (torchvision ResNets) and the MLP heads of the original code (docs/faithfulness.md)."""

from isd.nets.backbones import build_backbone, feature_dim, teacher_with_student_bn
from isd.nets.heads import isd_predictor, mlp

__all__ = ["build_backbone", "feature_dim", "teacher_with_student_bn", "mlp", "isd_predictor"]
