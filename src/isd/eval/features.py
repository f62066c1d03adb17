"""Backbone features for evaluation: of a live model or of a checkpoint's backbone, and of a bank and a query set
at once (`encode`), which is what every kNN and probe evaluation starts from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import ResNet

from isd.data.batches import batches_of
from isd.data.sources import Source


def backbone_forward(module: nn.Module, x: Tensor) -> Tensor:
    """A backbone's pooled features, whatever head sits in its `fc`: a torchvision ResNet up to its pooling, a
    backbone wrapped with a head slot (`WithHead`: a MobileNet inside a method) without it, any other as is."""
    if not isinstance(module, ResNet):
        body = getattr(module, "body", None)
        return body(x) if isinstance(body, nn.Module) else module(x)
    net = cast(ResNet, module)
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


@torch.no_grad()
def extract_features(net: nn.Module, source: Source, size: int, device: torch.device, batch_size: int = 512,
                     num_workers: int = 4, indices: Tensor | None = None,
                     progress=None) -> tuple[Tensor, Tensor]:
    """L2-normalised backbone features of unaugmented images, in dataset order (or of `indices`)."""
    was_training = net.training
    net.eval()
    feats, labels = [], []
    if indices is not None:
        source = source.take(indices)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for images, targets in batches_of(source).plain(size, batch_size, device, num_workers):
        with autocast:
            out = backbone_forward(net, images)
        feats.append(F.normalize(out.float(), dim=1))
        labels.append(targets)
        if progress is not None:
            progress.update(len(targets))
    net.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def seeded_subset(n: int, limit: int, seed: int) -> Tensor | None:
    if not limit or limit >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


def capped_sets(bank: Source, queries: Source, limit: int, seed: int = 0) -> tuple[Source, Source]:
    """At most `limit` images of each (0 = all): the same seeded choice for every run of a seed."""
    bank_pick, query_pick = seeded_subset(len(bank), limit, seed), seeded_subset(len(queries), limit, seed + 1)
    return (bank if bank_pick is None else bank.take(bank_pick),
            queries if query_pick is None else queries.take(query_pick))


@dataclass
class Encoded:
    """An encoder's features (or a floor's) of a bank and of queries, with their labels."""

    bank_x: Tensor
    bank_y: Tensor
    query_x: Tensor
    query_y: Tensor


def encode(net: nn.Module, bank: Source, queries: Source, size: int, device: torch.device,
           num_workers: int = 4) -> Encoded:
    """L2-normalised backbone features of the unaugmented bank and query images."""
    bank_x, bank_y = extract_features(net, bank, size, device, num_workers=num_workers)
    query_x, query_y = extract_features(net, queries, size, device, num_workers=num_workers)
    return Encoded(bank_x, bank_y, query_x, query_y)


def raw_pixels(bank: Source, queries: Source) -> Encoded:
    """The raw-pixel floor: each image's pixels as its features (in-memory sets only)."""
    return Encoded(*batches_of(bank).pixels(), *batches_of(queries).pixels())
