"""Backbone features for evaluation: from a live model or a checkpoint (ours, the original code's, a plain one)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from isd.data.loaders import eval_batches
from isd.data.sources import Source


def backbone_forward(net: nn.Module, x: Tensor) -> Tensor:
    """A torchvision ResNet up to the pooled features, whatever head sits in its `fc`."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


def teacher_with_student_bn(teacher: nn.Module, student: nn.Module) -> nn.Module:
    """Teacher weights with the student's BatchNorm running statistics (the original's teacher evaluation)."""
    mixed = copy.deepcopy(teacher)
    student_bn = {name: m for name, m in student.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for name, m in mixed.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and name in student_bn:
            m.running_mean.copy_(student_bn[name].running_mean)
            m.running_var.copy_(student_bn[name].running_var)
            m.num_batches_tracked.copy_(student_bn[name].num_batches_tracked)
    return mixed


@torch.no_grad()
def extract_features(net: nn.Module, source: Source, size: int, device: torch.device, batch_size: int = 512,
                     num_workers: int = 4, indices: Tensor | None = None,
                     progress=None) -> tuple[Tensor, Tensor]:
    """L2-normalised backbone features of unaugmented images, in dataset order (or of `indices`)."""
    was_training = net.training
    net.eval()
    feats, labels = [], []
    if indices is not None:
        source = subset(source, indices)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for images, targets in eval_batches(source, size, batch_size, device, num_workers):
        with autocast:
            out = backbone_forward(net, images)
        feats.append(F.normalize(out.float(), dim=1))
        labels.append(targets)
        if progress is not None:
            progress.update(len(targets))
    net.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def subset(source: Source, indices: Tensor) -> Source:
    picked = copy.copy(source)
    picked.targets = source.targets[indices]
    if source.images is not None:
        picked.images = source.images[indices]
    else:
        picked.files = [source.files[int(i)] for i in indices]
    return picked


def same_classes(source: Source, classes: list[str]) -> Source:
    """`source` cut to `classes` (by name) and labelled by their index in that list, so that its labels mean
    what another split's do (a train split cut by --subset-file keeps fewer classes, renumbered)."""
    if source.classes == classes:
        return source
    index = {name: i for i, name in enumerate(classes)}
    own = torch.tensor([index.get(name, -1) for name in source.classes], dtype=torch.long)
    relabelled = own[source.targets]
    picked = subset(source, (relabelled >= 0).nonzero().squeeze(1))
    picked.targets, picked.classes = relabelled[relabelled >= 0], list(classes)
    return picked


def seeded_subset(n: int, limit: int, seed: int) -> Tensor | None:
    if not limit or limit >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
