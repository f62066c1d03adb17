"""Exact k-nearest-neighbour evaluation on L2-normalised features (cosine similarity)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from isd.eval.features import Encoded

DEFAULT_MAX_ELEMENTS = 2**26  # similarity-matrix entries per product: 256 MiB in float32


@torch.no_grad()
def nearest_neighbours(
    train: Tensor,
    query: Tensor,
    k: int,
    block: int = 2048,
    backend: str = "torch",
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """Exact top-k inner-product search of `query` [M, D] against `train` [N, D].

    Both inputs must already be L2-normalised, so inner product order is cosine order (and the same order
    as L2 distance, i.e. faiss `IndexFlatL2` in the original code). Queries are processed in blocks of
    `block` rows; the train set is split into chunks so that one similarity matrix holds at most
    `max_elements` entries, and a running top-k is merged across chunks. Returns (similarities [M, k]
    sorted descending, indices [M, k]) on the inputs' device.
    """
    n, m = train.shape[0], query.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, {n}] (number of train samples)")
    if backend == "faiss":
        return _faiss_search(train, query, k)
    if backend != "torch":
        raise ValueError(f"unknown backend {backend!r} (expected 'torch' or 'faiss')")
    query = query.to(device=train.device, dtype=train.dtype)
    chunk = max(k, max_elements // block)
    # One reused similarity buffer: allocating a fresh 100+ MB matrix per block costs ~20% in page faults.
    buffer = torch.empty(min(block, m) * min(chunk, n), dtype=train.dtype, device=train.device)
    out_sims = torch.empty(m, k, dtype=train.dtype, device=train.device)
    out_idx = torch.empty(m, k, dtype=torch.long, device=train.device)
    for q0 in range(0, m, block):
        q = query[q0 : q0 + block]
        best_s = best_i = torch.empty(0)  # the first chunk's top-k replaces them
        for t0 in range(0, n, chunk):
            t = train[t0 : t0 + chunk]
            sims = torch.mm(q, t.T, out=buffer[: len(q) * len(t)].view(len(q), len(t)))
            s, i = sims.topk(min(k, len(t)), dim=1)
            i += t0
            if t0 > 0:
                s, j = torch.cat([best_s, s], 1).topk(k, dim=1)
                i = torch.cat([best_i, i], 1).gather(1, j)
            best_s, best_i = s, i
        out_sims[q0 : q0 + len(q)] = best_s
        out_idx[q0 : q0 + len(q)] = best_i
    return out_sims, out_idx


def _faiss_search(train: Tensor, query: Tensor, k: int) -> tuple[Tensor, Tensor]:
    try:
        import faiss
    except ImportError as e:
        raise ImportError("backend='faiss' needs the optional faiss package (pip install faiss-cpu)") from e
    index = faiss.IndexFlatIP(train.shape[1])
    index.add(train.detach().float().cpu().contiguous().numpy())
    sims, idx = index.search(query.detach().float().cpu().contiguous().numpy(), k)
    return torch.from_numpy(sims).to(train.device), torch.from_numpy(idx).long().to(train.device)


def majority_vote(neighbour_labels: Tensor, num_classes: int) -> Tensor:
    """Majority vote over the labels of each row of `neighbour_labels` [M, k] (nearest neighbour first).

    Tie-break rule (deterministic): among the classes with the highest count, the class whose first
    occurrence in the neighbour list is nearest wins; e.g. [2, 1, 1, 2] -> 2 and [1, 2, 2, 1] -> 1.
    (The original code broke ties at random.) Computed as count * (k + 1) + (k - first_position), whose
    second term is < k + 1 so it only decides among equal counts.
    """
    labels = neighbour_labels.long()
    m, k = labels.shape
    counts = torch.zeros(m, num_classes, dtype=torch.long, device=labels.device)
    counts.scatter_add_(1, labels, torch.ones_like(labels))
    positions = torch.arange(k, device=labels.device).expand(m, k)
    first = torch.full((m, num_classes), k, dtype=torch.long, device=labels.device)
    first.scatter_reduce_(1, labels, positions, reduce="amin")
    return (counts * (k + 1) + (k - first)).argmax(dim=1)


def weighted_knn(
    similarities: Tensor, neighbour_labels: Tensor, num_classes: int, temperature: float = 0.07
) -> Tensor:
    """Weighted kNN (InstDisc / DINO): class score = sum over its neighbours of exp(sim / T); returns [M]."""
    scores = torch.zeros(similarities.shape[0], num_classes, dtype=similarities.dtype, device=similarities.device)
    scores.scatter_add_(1, neighbour_labels.long(), (similarities / temperature).exp())
    return scores.argmax(dim=1)


def per_class_accuracy(correct: Tensor, labels: Tensor, num_classes: int) -> list[float | None]:
    hits = torch.bincount(labels, weights=correct.double(), minlength=num_classes)
    totals = torch.bincount(labels, minlength=num_classes)
    return [100.0 * h / t if t else None for h, t in zip(hits.tolist(), totals.tolist())]


def knn_evaluate(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    ks: tuple[int, ...] = (1, 20),
    num_classes: int | None = None,
    weighted_k: int | None = None,
    temperature: float = 0.07,
    block: int = 2048,
    backend: str = "torch",
    more_temperatures: tuple[float, ...] = (),
) -> dict:
    """kNN accuracy (%) of `test_feats` against `train_feats`; features are L2-normalised here.

    One neighbour search with k = max(ks, weighted_k) serves every k. Returns a JSON-ready dict with
    "top1" (majority vote accuracy per k), "per_class" (accuracy per class per k; None for a class
    absent from the test set), optionally "weighted" (and "weighted_at", the accuracy at each of
    `more_temperatures`, from the same neighbours), sizes and the search time in seconds.
    """
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float().to(train.device), dim=1)
    train_labels = train_labels.to(train.device).long()
    test_labels = test_labels.to(train.device).long()
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k_max = max(*ks, weighted_k or 0)

    if train.is_cuda:
        torch.cuda.synchronize(train.device)
    start = time.perf_counter()
    sims, idx = nearest_neighbours(train, test, k_max, block=block, backend=backend)
    if train.is_cuda:
        torch.cuda.synchronize(train.device)
    search_seconds = time.perf_counter() - start

    neighbour_labels = train_labels[idx]
    result: dict = {"top1": {}, "per_class": {}}
    for k in ks:
        correct = majority_vote(neighbour_labels[:, :k], num_classes) == test_labels
        result["top1"][str(k)] = 100.0 * correct.double().mean().item()
        result["per_class"][str(k)] = per_class_accuracy(correct, test_labels, num_classes)
    if weighted_k:
        pred = weighted_knn(sims[:, :weighted_k], neighbour_labels[:, :weighted_k], num_classes, temperature)
        acc = 100.0 * (pred == test_labels).double().mean().item()
        result["weighted"] = {"k": weighted_k, "T": temperature, "acc": acc}
        result["weighted_at"] = {}
        for t in more_temperatures:
            pred = weighted_knn(sims[:, :weighted_k], neighbour_labels[:, :weighted_k], num_classes, t)
            result["weighted_at"][t] = 100.0 * (pred == test_labels).double().mean().item()
    result.update(num_train=train.shape[0], num_test=test.shape[0], dim=train.shape[1],
                  search_seconds=search_seconds)
    return result


def knn_of(encoded: Encoded, num_classes: int, ks: tuple[int, ...] = (1, 20), weighted_k: int | None = None,
           temperature: float = 0.07, backend: str = "torch", more_temperatures: tuple[float, ...] = ()) -> dict:
    """`knn_evaluate` of the queries against the bank, every k clamped to the bank's size (a tiny bank: 20-NN
    becomes all-NN); `result["at"][k]` is the top-1 accuracy for each requested k."""
    n = len(encoded.bank_y)
    usable = {k: min(k, n) for k in ks}
    result = knn_evaluate(encoded.bank_x, encoded.bank_y, encoded.query_x, encoded.query_y,
                          ks=tuple(sorted(set(usable.values()))), num_classes=num_classes,
                          weighted_k=min(weighted_k, n) if weighted_k else None, temperature=temperature,
                          backend=backend, more_temperatures=more_temperatures)
    result["at"] = {k: result["top1"][str(usable[k])] for k in ks}
    return result
