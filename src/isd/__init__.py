"""isd: self-supervised learning by Iterative Similarity Distillation (ISD, ICCV 2021)."""

from typing import Any

__all__ = ["load_backbone"]


def __getattr__(name: str) -> Any:
    # lazy: `import isd` (e.g. for the CLI) must not import torch models until they are used
    if name == "load_backbone":
        from isd.eval.checkpoints import load_backbone

        return load_backbone
    raise AttributeError(f"module 'isd' has no attribute {name!r}")
