import pytest
import torch
import torch.nn.functional as F

from isd.eval.knn import knn_evaluate, majority_vote, nearest_neighbours, weighted_knn
from isd.eval.probe import FeatureBatches, LinearProbe, balanced_label_subset, topk_accuracy, train_probe


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("block, max_elements", [(4096, 2**26), (37, 2**26), (64, 500), (5, 40)])
def test_blocked_search_matches_brute_force(block, max_elements):
    train, query = unit(1000, 16, 0), unit(203, 16, 1)
    sims, idx = nearest_neighbours(train, query, 7, block=block, max_elements=max_elements)
    ref_sims, ref_idx = (query @ train.T).topk(7, dim=1)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(sims, ref_sims)
    assert (sims[:, :-1] >= sims[:, 1:]).all()


def test_search_rejects_bad_arguments():
    with pytest.raises(ValueError):
        nearest_neighbours(unit(5, 4, 0), unit(2, 4, 1), 6)
    with pytest.raises(ValueError):
        nearest_neighbours(unit(5, 4, 0), unit(2, 4, 1), 1, backend="annoy")


def test_faiss_backend_is_optional():
    try:
        import faiss  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="faiss"):
            nearest_neighbours(unit(5, 4, 0), unit(2, 4, 1), 1, backend="faiss")
    else:
        train, query = unit(100, 8, 0), unit(10, 8, 1)
        assert torch.equal(nearest_neighbours(train, query, 3, backend="faiss")[1],
                           nearest_neighbours(train, query, 3)[1])


def angles(*degrees: float) -> torch.Tensor:
    rad = torch.tensor(degrees) * torch.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def test_hand_built_1nn_and_3nn():
    # Train points on the unit circle; query at 12 deg: nearest 10 (A), then 20 (B), 30 (B).
    train, labels = angles(0, 10, 20, 30, 90), torch.tensor([0, 0, 1, 1, 2])
    query = angles(12, 88)
    sims, idx = nearest_neighbours(train, query, 3)
    assert idx.tolist() == [[1, 2, 0], [4, 3, 2]]
    assert majority_vote(labels[idx[:, :1]], 3).tolist() == [0, 2]
    assert majority_vote(labels[idx], 3).tolist() == [0, 1]
    res = knn_evaluate(train, labels, query, torch.tensor([1, 1]), ks=(1, 3), num_classes=3)
    assert res["top1"] == {"1": 0.0, "3": 50.0}


def test_majority_vote_tie_break_nearest_first_occurrence():
    labels = torch.tensor([[2, 1, 1, 2], [1, 2, 2, 1], [0, 1, 2, 3], [3, 3, 1, 1], [4, 0, 0, 4], [1, 1, 1, 2]])
    assert majority_vote(labels, 5).tolist() == [2, 1, 0, 3, 4, 1]


def test_weighted_knn_hand_example():
    sims = torch.tensor([[0.9, 0.5, 0.5], [0.9, 0.8, 0.1]])
    labels = torch.tensor([[0, 1, 1], [0, 1, 1]])
    # row 0: exp(0.9/T)=e^9 vs 2 e^5 -> 0; with T=1: e^.9=2.46 vs 2 e^.5=3.30 -> 1
    assert weighted_knn(sims, labels, 2, temperature=0.1).tolist() == [0, 0]
    assert weighted_knn(sims, labels, 2, temperature=1.0).tolist() == [1, 1]


def test_knn_evaluate_on_clustered_features():
    # 4 well-separated clusters; test points from cluster c but 5 of them labelled wrongly -> exactly 95 %.
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4, 32) * 10
    train_y = torch.arange(4).repeat_interleave(50)
    test_y = torch.arange(4).repeat_interleave(25)
    train_x = centres[train_y] + torch.randn(200, 32, generator=g)
    test_x = centres[test_y] + torch.randn(100, 32, generator=g)
    noisy_y = test_y.clone()
    noisy_y[[0, 1, 2, 30, 99]] = torch.tensor([1, 1, 1, 2, 0])
    res = knn_evaluate(train_x * 3, train_y, test_x, noisy_y, ks=(1, 20), weighted_k=30)
    assert res["top1"] == {"1": 95.0, "20": 95.0}
    assert res["weighted"] == {"k": 30, "T": 0.07, "acc": 95.0}
    assert res["per_class"]["1"] == pytest.approx([2200 / 23, 2400 / 27, 2500 / 26, 100.0])
    assert (res["num_train"], res["num_test"], res["dim"]) == (200, 100, 32)


def test_search_seconds_is_the_time_of_the_neighbour_search(monkeypatch):
    """knn.json's search time is the search's, not the vote's nor the normalisation's: a search made 0.2 s slower
    shows up in it, and the rest of the evaluation does not."""
    import time

    import isd.eval.knn as knn

    real = knn.nearest_neighbours

    def slow(*args, **kwargs):
        time.sleep(0.2)
        return real(*args, **kwargs)

    x, y = torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), torch.arange(50) % 5
    fast = knn_evaluate(x, y, x, y, ks=(1,))["search_seconds"]
    monkeypatch.setattr(knn, "nearest_neighbours", slow)
    start = time.perf_counter()
    slowed = knn_evaluate(x, y, x, y, ks=(1,))["search_seconds"]
    total = time.perf_counter() - start
    assert 0.2 <= slowed <= total and fast < 0.2


def test_knn_evaluate_per_class_absent_class_is_none():
    res = knn_evaluate(angles(0, 90), torch.tensor([0, 1]), angles(5), torch.tensor([0]), ks=(1,), num_classes=3)
    assert res["per_class"]["1"] == [100.0, None, None]


def test_linear_probe_statistics_standardise_train_features():
    # Per-dimension variances of the normalised features are >> the 1e-5 epsilon, so the result is ~unit.
    x = torch.randn(5000, 64, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.5, 2, 64) + 0.3
    probe = LinearProbe(64, 10)
    probe.set_statistics(x)
    z = probe.standardise(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(64), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.var(0), torch.ones(64), atol=2e-2, rtol=0)
    assert {"mean", "std", "linear.weight", "linear.bias"} <= set(probe.state_dict())
    assert probe(x).shape == (5000, 10)


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.15], [0.2, 0.3, 0.5]])
    assert topk_accuracy(logits, torch.tensor([1, 2, 0]), ks=(1, 2, 5)) == pytest.approx(
        {1: 100 / 3, 2: 200 / 3, 5: 100.0})


def test_train_probe_separates_gaussian_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 64, generator=g) * 3
    ty, vy = torch.arange(10).repeat(200), torch.arange(10).repeat(50)
    tx = centres[ty] + torch.randn(2000, 64, generator=g)
    vx = centres[vy] + torch.randn(500, 64, generator=g)
    out = train_probe(FeatureBatches(tx, ty, 256), tx, vx, vy, 10, epochs=5, milestones=(3,), seed=1)
    assert out["best_top1"] >= 99.0
    assert len(out["history"]) == 5 and 1 <= out["best_epoch"] <= 5
    assert out["best_top1"] == max(h["top1"] for h in out["history"])
    probe = LinearProbe(64, 10)
    probe.load_state_dict(out["state_dict"])
    assert topk_accuracy(probe(vx), vy)[1] == out["best_top1"]
    again = train_probe(FeatureBatches(tx, ty, 256), tx, vx, vy, 10, epochs=5, milestones=(3,), seed=1)
    assert [h["loss"] for h in again["history"]] == [h["loss"] for h in out["history"]]


def test_balanced_label_subset():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([100, 35, 7, 1000])])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    idx = balanced_label_subset(labels, 0.1, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [10, 4, 1, 100]  # 3.5 rounds up, 0.7 -> at least 1
    assert torch.equal(idx, idx.sort().values) and len(idx.unique()) == len(idx)
    assert torch.equal(idx, balanced_label_subset(labels, 0.1, seed=0))
    assert not torch.equal(idx, balanced_label_subset(labels, 0.1, seed=1))
