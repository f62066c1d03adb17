"""The metrics of one encoder (or floor) on a bank and a query set: kNN, weighted kNN, fast linear probe."""

from __future__ import annotations

import time

from isd.eval.features import Encoded
from isd.eval.knn import knn_of, per_class_accuracy
from isd.eval.probe import FeatureBatches, train_probe

WEIGHTED_K, WEIGHTED_T = 200, 0.07  # InstDisc's weighted kNN
ANCHOR_T = 0.1  # the weighted 200-NN of the CIFAR-10 benchmarks (MoCo's CIFAR demo, lightly): `knn200`
PROBE_EPOCHS = 40  # the paper's probe recipe (lr 0.01, steps at 15/30/40), on cached unaugmented features
PROBE_BATCH = 256


def metrics(encoded: Encoded, num_classes: int, seed: int = 0) -> dict:
    """1-NN, 20-NN, weighted kNN and the linear probe (last epoch, and best epoch as the original reports),
    with per-class accuracies; every accuracy in %."""
    start = time.perf_counter()
    device = encoded.bank_x.device
    enc = Encoded(encoded.bank_x, encoded.bank_y.to(device), encoded.query_x.to(device), encoded.query_y.to(device))
    n = len(enc.bank_y)
    knn = knn_of(enc, num_classes, ks=(1, 20), weighted_k=WEIGHTED_K, temperature=WEIGHTED_T,
                 more_temperatures=(ANCHOR_T,))
    probe = train_probe(FeatureBatches(enc.bank_x, enc.bank_y, PROBE_BATCH), enc.bank_x, enc.query_x, enc.query_y,
                        num_classes, epochs=PROBE_EPOCHS, seed=seed)
    probe_correct = probe["final"]["predictions"] == enc.query_y.cpu()
    return {
        "knn1": knn["at"][1], "knn20": knn["at"][20], "knn_weighted": knn["weighted"]["acc"],
        "knn200": knn["weighted_at"][ANCHOR_T],
        "linear": probe["final"]["top1"], "linear_top5": probe["final"]["top5"],
        "linear_best": probe["best_top1"], "linear_best_epoch": probe["best_epoch"],
        "per_class": {"knn1": knn["per_class"][str(min(1, n))], "knn20": knn["per_class"][str(min(20, n))],
                      "linear": per_class_accuracy(probe_correct, enc.query_y.cpu(), num_classes)},
        "sizes": {"bank": n, "queries": len(enc.query_y), "dim": enc.bank_x.shape[1]},
        "protocol": {"weighted_k": min(WEIGHTED_K, n), "weighted_T": WEIGHTED_T, "knn200_T": ANCHOR_T,
                     "probe_epochs": PROBE_EPOCHS,
                     "probe": "L2-normalise, standardise, Linear; SGD lr 0.01, steps at 15/30/40, "
                              "on unaugmented features"},
        "seconds": round(time.perf_counter() - start, 2),
    }
