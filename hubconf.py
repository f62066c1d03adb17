"""torch.hub entry points: a torchvision ResNet backbone from any checkpoint isd reads.

    model = torch.hub.load("path/to/isd", "resnet18", source="local", weights="ckpt_epoch_200.pth")
    features = model(images)          # fc is Identity: 512-d (resnet18) or 2048-d (resnet50) features

`weights` may be a checkpoint of `isd train`, of the train_*.py scripts or of the original ISD code, or a plain
state_dict (`isd export`); it is read by isd's safe reader (see docs/faithfulness.md). `encoder="teacher"` takes
the teacher's weights with the student's BatchNorm statistics. Without `weights` the backbone is randomly
initialised. The model is returned in eval mode.
"""

import os
import sys

dependencies = ["torch", "torchvision"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if os.path.isdir(_SRC) and _SRC not in sys.path:  # a clone used without `pip install`
    sys.path.insert(0, _SRC)

from isd.checkpoint import load_backbone  # noqa: E402
from isd.nets import build_backbone  # noqa: E402


def _backbone(arch: str, weights, encoder: str, trust_checkpoint_code: bool):
    if weights is None:
        return build_backbone(arch).eval()
    model, _ = load_backbone(weights, encoder=encoder, arch=arch, trust_checkpoint_code=trust_checkpoint_code)
    return model


def resnet18(weights=None, encoder: str = "student", trust_checkpoint_code: bool = False):
    """ResNet-18 backbone (torchvision layout, fc = Identity) with the weights of a checkpoint file."""
    return _backbone("resnet18", weights, encoder, trust_checkpoint_code)


def resnet50(weights=None, encoder: str = "student", trust_checkpoint_code: bool = False):
    """ResNet-50 backbone (torchvision layout, fc = Identity) with the weights of a checkpoint file."""
    return _backbone("resnet50", weights, encoder, trust_checkpoint_code)
