"""torchvision ResNets, optionally with a small-image stem and a narrower width, and torchvision's MobileNets (as
distillation students).

The module keeps torchvision's layout (conv1, bn1, layer1..4, avgpool, fc; a MobileNet's features and an Identity
classifier), so a default-width backbone's state_dict loads into `torchvision.models.<arch>()` unchanged once its
head is an Identity.
"""

from __future__ import annotations

import copy

from torch import nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from isd.errors import ArgumentError, ArgumentTypeError

_CONSTRUCTORS = {"resnet18": models.resnet18, "resnet34": models.resnet34, "resnet50": models.resnet50}
# torchvision's MobileNets: (constructor, pooled feature size); their stem is a 3x3/2 conv, the small stem 3x3/1
MOBILENETS = {"mobilenet_v2": (models.mobilenet_v2, 1280), "mobilenet_v3_small": (models.mobilenet_v3_small, 576),
              "mobilenet_v3_large": (models.mobilenet_v3_large, 960)}
ARCHITECTURES = (*_CONSTRUCTORS, *MOBILENETS)


def feature_dim(arch: str, width: int = 64) -> int:
    if arch in MOBILENETS:
        return MOBILENETS[arch][1]
    expansion = 4 if arch == "resnet50" else 1
    return 8 * width * expansion


def build_backbone(arch: str = "resnet18", stem: str = "imagenet", width: int = 64, in_channels: int = 3) -> ResNet:
    """A ResNet whose `fc` is Identity, so forward() returns the pooled feature vector (`feature_dim(arch, width)`
    values). `stem` small: a 3x3 stride-1 first convolution and no max-pool, for 28-32 px images. A MobileNet (its
    classifier an Identity) has no `fc`; its width is torchvision's (64 means as built) and its small stem is its
    first convolution at stride 1."""
    _check_backbone_arguments(arch, stem, width, in_channels)
    if arch in MOBILENETS:
        return _mobilenet(arch, stem, width, in_channels)
    net = _CONSTRUCTORS[arch]()
    block = Bottleneck if arch == "resnet50" else BasicBlock
    if width != 64:
        _rebuild_stages(net, block, width)
    if stem == "small":
        # 28-32 px images: a 7x7/2 conv plus max-pool would leave 7x7 maps before layer1.
        net.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3 or width != 64:
        net.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Identity()
    return net


def _mobilenet(arch: str, stem: str, width: int, in_channels: int) -> nn.Module:
    if width != 64:
        raise ArgumentError(f"width={width}: {arch} is built at torchvision's width; width applies to ResNets")
    net = MOBILENETS[arch][0]()
    first = net.features[0][0]
    if in_channels != 3 or stem == "small":
        net.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, stride=1 if stem == "small" else 2,
                                       padding=1, bias=False)
        nn.init.kaiming_normal_(net.features[0][0].weight, mode="fan_out")
    net.classifier = nn.Identity()
    return net


def auto_stem(image_size: int) -> str:
    """The stem `stem: auto` picks: the small one below 64 px, where the ImageNet stem leaves tiny maps."""
    return "small" if image_size < 64 else "imagenet"


def _check_backbone_arguments(arch: object, stem: object, width: object, in_channels: object) -> None:
    """One-line errors (ValueError / TypeError) for what build_backbone cannot build."""
    if arch not in ARCHITECTURES:
        raise ArgumentError(f"unknown arch {arch!r}: use one of {', '.join(ARCHITECTURES)}")
    if stem not in ("imagenet", "small"):
        raise ArgumentError(f"stem must be 'imagenet' (7x7/2 + max-pool) or 'small' (3x3/1, for 28-32 px), "
                            f"got {stem!r}")
    for name, value in (("width", width), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArgumentTypeError(f"{name} must be a whole number, got {type(value).__name__} {value!r}")
        if value < 1:
            raise ArgumentError(f"{name} must be at least 1, got {value}")


def _rebuild_stages(net: ResNet, block: type, width: int) -> None:
    """Same depth, `width`-wide stages, built with torchvision's own _make_layer."""
    depths = [len(getattr(net, f"layer{i}")) for i in range(1, 5)]
    net.inplanes = width
    net.bn1 = nn.BatchNorm2d(width)
    for i, depth in enumerate(depths):
        stage = net._make_layer(block, width * 2**i, depth, stride=1 if i == 0 else 2)
        setattr(net, f"layer{i + 1}", stage)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def teacher_with_student_bn(teacher: nn.Module, student: nn.Module) -> nn.Module:
    """Teacher weights with the student's BatchNorm running statistics (the original's teacher evaluation)."""
    mixed = copy.deepcopy(teacher)
    student_bn = {name: m for name, m in student.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for name, m in mixed.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and name in student_bn:
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                getattr(m, buffer).copy_(getattr(student_bn[name], buffer))
    return mixed
