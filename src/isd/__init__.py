"""isd: self-supervised learning by Iterative Similarity Distillation (ISD, ICCV 2021), with ISD+, asymmetric BYOL
and MoCo-v2, and distillation of a frozen teacher (CompRess). The public Python API; docs/api.md lists every name."""

from importlib import metadata

from isd import losses
from isd.checkpoint import load_backbone
from isd.data.batch_augment import BatchAugment, two_views
from isd.data.batches import Batch, two_view_batches
from isd.errors import ArgumentError, ArgumentTypeError, UsageError
from isd.methods import (
    BYOL,
    ISD,
    AfterStep,
    Distill,
    ISDPlus,
    MemoryQueue,
    Method,
    MoCo,
    Step,
    Supervised,
    build_method,
)
from isd.nets import build_backbone, feature_dim

try:
    __version__ = metadata.version("isd-ssl")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["ISD", "ISDPlus", "BYOL", "MoCo", "Supervised", "Distill", "build_method", "build_backbone", "feature_dim",
           "load_backbone", "Method", "Step", "AfterStep", "MemoryQueue", "losses", "BatchAugment", "two_views",
           "two_view_batches", "Batch", "ArgumentError", "ArgumentTypeError", "UsageError", "__version__"]
