"""The metrics of one encoder (or floor) on a bank and a query set: kNN, weighted kNN, fast linear probe."""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from isd.data.sources import Source
from isd.eval.features import extract_features, seeded_subset
from isd.eval.knn import per_class_accuracy, knn_evaluate
from isd.eval.probe import train_probe_on_features

WEIGHTED_K, WEIGHTED_T = 200, 0.07
PROBE_EPOCHS = 40  # the paper's probe recipe (lr 0.01, steps at 15/30/40), on cached unaugmented features


def capped_sets(bank: Source, queries: Source, limit: int, seed: int = 0) -> tuple[Source, Source]:
    """At most `limit` images of each (0 = all), the same seeded choice for every cell."""
    picks = seeded_subset(len(bank), limit, seed), seeded_subset(len(queries), limit, seed + 1)
    return tuple(s if p is None else s.take(p) for s, p in zip((bank, queries), picks))  # type: ignore[return-value]


def pixel_features(source: Source) -> tuple[Tensor, Tensor]:
    if source.images is None:
        raise ValueError("the raw-pixels floor needs an in-memory set (images of one size)")
    return source.images.flatten(1).float() / 255.0, source.targets


def encoder_features(net: nn.Module, bank: Source, queries: Source, size: int, device: torch.device,
                     num_workers: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    bank_x, bank_y = extract_features(net, bank, size, device, num_workers=num_workers)
    query_x, query_y = extract_features(net, queries, size, device, num_workers=num_workers)
    return bank_x, bank_y, query_x, query_y


def metrics(bank_x: Tensor, bank_y: Tensor, query_x: Tensor, query_y: Tensor, num_classes: int,
            seed: int = 0) -> dict:
    """1-NN, 20-NN, weighted kNN and the linear probe (last epoch, and best epoch as the original reports),
    with per-class accuracies; every accuracy in %."""
    start = time.perf_counter()
    device = bank_x.device
    query_x, query_y, bank_y = query_x.to(device), query_y.to(device), bank_y.to(device)
    n = len(bank_y)
    ks = tuple(sorted({min(1, n), min(20, n)}))
    knn = knn_evaluate(bank_x, bank_y, query_x, query_y, ks=ks, num_classes=num_classes,
                       weighted_k=min(WEIGHTED_K, n), temperature=WEIGHTED_T)
    probe = train_probe_on_features(bank_x, bank_y, query_x, query_y, num_classes, epochs=PROBE_EPOCHS, seed=seed)
    probe_correct = probe["final"]["predictions"] == query_y.cpu()
    return {
        "knn1": knn["top1"][str(ks[0])], "knn20": knn["top1"][str(ks[-1])], "knn_weighted": knn["weighted"]["acc"],
        "linear": probe["final"]["top1"], "linear_top5": probe["final"]["top5"],
        "linear_best": probe["best_top1"], "linear_best_epoch": probe["best_epoch"],
        "per_class": {"knn1": knn["per_class"][str(ks[0])], "knn20": knn["per_class"][str(ks[-1])],
                      "linear": per_class_accuracy(probe_correct, query_y.cpu(), num_classes)},
        "sizes": {"bank": n, "queries": len(query_y), "dim": bank_x.shape[1]},
        "protocol": {"weighted_k": min(WEIGHTED_K, n), "weighted_T": WEIGHTED_T, "probe_epochs": PROBE_EPOCHS,
                     "probe": "L2-normalise, standardise, Linear; SGD lr 0.01, steps at 15/30/40, "
                              "on unaugmented features"},
        "seconds": round(time.perf_counter() - start, 2),
    }
