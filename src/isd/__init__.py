"""isd: self-supervised learning by Iterative Similarity Distillation (ISD, ICCV 2021)."""

from isd.checkpoint import load_backbone

__all__ = ["load_backbone"]
