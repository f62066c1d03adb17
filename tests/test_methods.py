"""Losses, EMA teacher, memory queue, heads, fp32 loss under autocast, shuffle-BN (docs/faithfulness.md)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import isd.methods.isd as isd_module
import isd.methods.moco as moco_module
from isd.config import build_config
from isd.methods import BYOL, ISD, AfterStep, ISDPlus, MoCo, Supervised, method_from_config
from isd.methods.byol import byol_loss
from isd.methods.isd import isd_loss
from isd.methods.momentum import MemoryQueue
from isd.methods.moco import moco_loss

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = {"data": "x", "width": 8, "batch_size": 4, "queue_size": 8}


def small_model(method: str = "isd", **extra) -> nn.Module:
    torch.manual_seed(0)
    return method_from_config(build_config(None, {**SMALL, "method": method, **extra}), stem="small")


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


# ------------------------------------------------------------------------------------------ losses by hand


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def hand_kl(q: np.ndarray, k: np.ndarray, queue: np.ndarray, temp_s: float, temp_t: float) -> float:
    """The original's loss: KL(softmax(k·Qᵀ/T_t) ‖ softmax(q·Qᵀ/T_s)) summed over the queue, divided by the batch."""
    p_t = np_softmax(k @ queue.T / temp_t)
    p_s = np_softmax(q @ queue.T / temp_s)
    total = 0.0
    for i in range(q.shape[0]):
        for j in range(queue.shape[0]):
            total += p_t[i, j] * (math.log(p_t[i, j]) - math.log(p_s[i, j]))
    return total / q.shape[0]


@pytest.mark.parametrize("temp_s, temp_t", [(0.02, 0.02), (0.1, 0.01), (0.5, 0.2)])
def test_isd_loss_equals_hand_computed_kl(temp_s, temp_t):
    q, k, queue = unit_rows(3, 5, 0), unit_rows(3, 5, 1), unit_rows(7, 5, 2)
    got = isd_loss(q, k, queue, temp_s, temp_t)
    expected = hand_kl(q.numpy(), k.numpy(), queue.numpy(), temp_s, temp_t)
    assert got.dim() == 0 and abs(got.item() - expected) < 1e-6
    # fp32 inputs (what training passes) agree to float precision
    got32 = isd_loss(q.float(), k.float(), queue.float(), temp_s, temp_t)
    assert got32.dtype == torch.float32 and got32.item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_isd_loss_tiny_example_by_hand():
    """Two queue entries, one sample: every number written out."""
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    k = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    queue = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    temp_s, temp_t = 1.0, 0.5
    # s_q = [1, 0], s_k = [0, 2]
    p_s = [math.e / (math.e + 1), 1 / (math.e + 1)]
    p_t = [1 / (1 + math.e ** 2), math.e ** 2 / (1 + math.e ** 2)]
    expected = sum(t * (math.log(t) - math.log(s)) for t, s in zip(p_t, p_s))
    assert abs(isd_loss(q, k, queue, temp_s, temp_t).item() - expected) < 1e-12
    # equal distributions -> zero
    assert abs(isd_loss(q, q, queue, 0.3, 0.3).item()) < 1e-12


def test_isd_loss_is_batch_mean_not_elementwise_mean():
    q, k, queue = unit_rows(4, 6, 3), unit_rows(4, 6, 4), unit_rows(16, 6, 5)
    per_sample = [hand_kl(q[i:i + 1].numpy(), k[i:i + 1].numpy(), queue.numpy(), 0.1, 0.05) for i in range(4)]
    assert abs(isd_loss(q, k, queue, 0.1, 0.05).item() - float(np.mean(per_sample))) < 1e-6


def test_byol_loss_is_mean_of_two_minus_two_cos():
    q, k = unit_rows(5, 8, 6), unit_rows(5, 8, 7)
    cos = [float(np.dot(q[i].numpy(), k[i].numpy())) for i in range(5)]
    expected = sum(2 - 2 * c for c in cos) / 5
    assert abs(byol_loss(q, k).item() - expected) < 1e-6
    assert abs(byol_loss(q, q).item()) < 1e-6
    assert abs(byol_loss(q, -q).item() - 4.0) < 1e-6


def test_moco_loss_equals_hand_infonce():
    q, k, queue = unit_rows(3, 4, 8), unit_rows(3, 4, 9), unit_rows(6, 4, 10)
    temp = 0.2
    total = 0.0
    for i in range(3):
        qi = q[i].numpy()
        logits = [float(qi @ k[i].numpy()) / temp] + [float(qi @ queue[j].numpy()) / temp for j in range(6)]
        total += -(logits[0] - math.log(sum(math.exp(v) for v in logits)))
    assert abs(moco_loss(q, k, queue, temp).item() - total / 3) < 1e-6


# ------------------------------------------------------------------------------------------ EMA teacher


@pytest.mark.parametrize("method", ["isd", "isd-plus", "byol", "moco"])
def test_teacher_starts_as_a_copy_updated_once_without_grad(method):
    """A copy of the student, moved once toward it (m·θ + (1 − m)·θ: the original's update at the top of its first
    forward, which only rounds), and BatchNorm buffers copied exactly."""
    model = small_model(method)
    q_state, k_state = model.encoder_q.state_dict(), model.encoder_k.state_dict()
    assert q_state.keys() == k_state.keys()
    params = {name for name, _ in model.encoder_q.named_parameters()}
    m = model.ema
    assert all(torch.equal(k_state[n], torch.add(q_state[n] * m, q_state[n], alpha=1 - m)) if n in params
               else torch.equal(k_state[n], q_state[n]) for n in q_state)
    assert all(not p.requires_grad for p in model.encoder_k.parameters())
    assert all(p.requires_grad for p in model.encoder_q.parameters())
    assert all(p.requires_grad for p in model.predict_q.parameters())
    # a copy, not shared storage
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(model.encoder_q.parameters(),
                                                            model.encoder_k.parameters()))


@pytest.mark.parametrize("method", ["isd", "isd-plus"])
def test_update_teacher_is_ema_over_parameters_only(method):
    m = 0.9
    model = small_model(method, ema=m)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
        for b in model.encoder_k.buffers():
            if b.is_floating_point():
                b.add_(torch.rand_like(b))
    teacher = {n: p.clone() for n, p in model.encoder_k.named_parameters()}
    student = {n: p.clone() for n, p in model.encoder_q.named_parameters()}
    buffers = {n: b.clone() for n, b in model.encoder_k.named_buffers()}
    student_buffers = {n: b.clone() for n, b in model.encoder_q.named_buffers()}
    model.update_teacher()
    for name, p in model.encoder_k.named_parameters():
        expected = m * teacher[name] + (1 - m) * student[name]
        torch.testing.assert_close(p, expected, rtol=0, atol=1e-6, msg=name)
        assert not torch.equal(p, teacher[name]), name
    assert all(torch.equal(b, buffers[n]) for n, b in model.encoder_k.named_buffers())
    assert all(torch.equal(p, student[n]) for n, p in model.encoder_q.named_parameters())
    assert all(torch.equal(b, student_buffers[n]) for n, b in model.encoder_q.named_buffers())
    # twice: the update keeps tracking the (changed) student, not a stale copy
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.mul_(2)
    teacher = {n: p.clone() for n, p in model.encoder_k.named_parameters()}
    model.update_teacher()
    for name, p in model.encoder_q.named_parameters():
        torch.testing.assert_close(dict(model.encoder_k.named_parameters())[name], m * teacher[name] + (1 - m) * p,
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["isd", "isd-plus", "byol", "moco"])
def test_forward_moves_nothing_and_apply_step_makes_the_teacher_update(method):
    model = small_model(method, ema=0.5)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(4, 3, 16, 16)
    teacher = {n: p.clone() for n, p in model.encoder_k.named_parameters()}
    queue = model.queue.queue.clone() if method != "byol" else None
    first = model(x, x)
    second = model(x, x)  # a diagnostic or an accumulation step: still nothing moves
    assert all(torch.equal(p, teacher[n]) for n, p in model.encoder_k.named_parameters())
    assert queue is None or torch.equal(model.queue.queue, queue)
    torch.testing.assert_close(first.loss, second.loss, rtol=0, atol=0)
    assert first.after.update_teacher
    model.apply_step(first.after)
    student = dict(model.encoder_q.named_parameters())
    for name, p in model.encoder_k.named_parameters():
        torch.testing.assert_close(p, 0.5 * teacher[name] + 0.5 * student[name], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------ memory queue


def test_memory_queue_ring_buffer_wraps_and_stores_labels():
    queue = MemoryQueue(8, 3)
    assert queue.labels.tolist() == [-1] * 8 and int(queue.ptr) == 0
    batches = [torch.full((4, 3), float(i + 1)) for i in range(3)]
    queue.push(batches[0], torch.tensor([0, 1, 2, 3]))
    assert int(queue.ptr) == 4
    assert torch.equal(queue.queue[:4], batches[0]) and queue.labels[:4].tolist() == [0, 1, 2, 3]
    assert queue.labels[4:].tolist() == [-1] * 4
    queue.push(batches[1], torch.tensor([4, 5, 6, 7]))
    assert int(queue.ptr) == 0  # (4 + 4) % 8
    queue.push(batches[2], torch.tensor([8, 9, 10, 11]))
    assert int(queue.ptr) == 4
    assert torch.equal(queue.queue[:4], batches[2]) and torch.equal(queue.queue[4:], batches[1])
    assert queue.labels.tolist() == [8, 9, 10, 11, 4, 5, 6, 7]
    # no labels: the label slots keep their values
    queue.push(torch.zeros(4, 3))
    assert int(queue.ptr) == 0 and queue.labels.tolist() == [8, 9, 10, 11, 4, 5, 6, 7]


def test_memory_queue_pointer_survives_state_dict_round_trip():
    a = MemoryQueue(8, 2)
    a.push(torch.ones(2, 2))
    a.push(torch.ones(2, 2))
    b = MemoryQueue(8, 2)
    b.push(torch.zeros(2, 2))  # b's host cursor is now 2; loading must reset it to a's ptr (4)
    b.load_state_dict(a.state_dict())
    b.push(torch.full((2, 2), 7.0))
    assert int(b.ptr) == 6 and torch.equal(b.queue[4:6], torch.full((2, 2), 7.0))
    assert torch.equal(b.queue[:4], torch.ones(4, 2))


def test_isd_queue_init_normalised_along_dim0_as_train_isd():
    q = small_model("isd").queue.queue
    assert q.shape == (8, 64)
    torch.testing.assert_close(q.norm(dim=0), torch.ones(q.shape[1]))  # columns unit norm: train_isd.py's quirk
    assert not torch.allclose(q.norm(dim=1), torch.ones(q.shape[0]))


@pytest.mark.parametrize("method, dim", [("isd-plus", 16), ("moco", 128)])
def test_isd_plus_and_moco_queue_init_has_unit_rows(method, dim):
    """train_isd_plus.py normalises its fresh queue along dim 1, unlike train_isd.py: every entry a unit vector."""
    q = small_model(method).queue.queue
    assert q.shape == (8, dim)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(q.shape[0]))
    assert not torch.allclose(q.norm(dim=0), torch.ones(q.shape[1]))


LOSS_FNS = {"isd": (isd_module, "isd_loss"), "isd-plus": (isd_module, "isd_loss"), "moco": (moco_module, "moco_loss")}


@pytest.mark.parametrize("method", ["isd", "isd-plus", "moco"])
def test_forward_uses_queue_before_this_steps_keys(method, monkeypatch):
    extra = {"temp": 0.1, "temp_t": 0.05} if method == "isd-plus" else {}
    model = small_model(method, **extra)
    model.train()
    key, query = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    labels = torch.tensor([0, 1, 0, 1])
    reference = copy.deepcopy(model)
    before = model.queue.queue.clone()
    module, name = LOSS_FNS[method]
    calls = []
    real = getattr(module, name)

    def record(*args):
        calls.append([a.clone() if torch.is_tensor(a) else a for a in args])
        return real(*args)

    monkeypatch.setattr(module, name, record)
    loss, stats, after = model(key, query, labels)
    assert len(calls) == 1 and torch.equal(calls[0][2], before)
    # expected loss from the same student and teacher and the queue snapshot taken before forward
    q = reference.student_embed(query)
    k = reference.teacher_embed(key)
    if method == "moco":
        expected = real(q, k, before, model.temp_infonce)
        assert model.temp_infonce == 0.2  # MoCo-v2's, not ISD's temp_student
    else:
        expected = real(q, k, before, model.temp_student, model.temp_teacher)
        assert (model.temp_student, model.temp_teacher) == ((0.1, 0.05) if method == "isd-plus" else (0.02, 0.02))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    # ... the queue is untouched until the step is applied (after the optimizer step) ...
    assert torch.equal(model.queue.queue, before) and int(model.queue.ptr) == 0
    torch.testing.assert_close(after.keys, k, rtol=1e-6, atol=1e-6)
    loss.backward()
    model.apply_step(after)
    # ... and then holds this step's keys, with their labels
    torch.testing.assert_close(model.queue.queue[:4], k, rtol=1e-6, atol=1e-6)
    assert torch.equal(model.queue.queue[4:], before[4:])
    assert int(model.queue.ptr) == 4 and model.queue.labels[:4].tolist() == labels.tolist()
    assert "purity" in stats and 0.0 <= float(stats["purity"]) <= 1.0
    # a loss against the updated queue would differ: the test can tell the two apart
    assert not torch.allclose(loss, real(q, k, model.queue.queue, *calls[0][3:]))


def test_a_step_not_applied_leaves_the_queue_and_only_applied_keys_are_enqueued():
    model = small_model("isd")
    x, y = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    before = model.queue.queue.clone()
    dropped = model(x, x)  # a skipped step: the loop drops its AfterStep
    kept = model(y, y)
    assert torch.equal(model.queue.queue, before)
    model.apply_step(kept.after)
    assert int(model.queue.ptr) == 4 and torch.equal(model.queue.queue[:4], kept.after.keys)
    assert not torch.equal(model.queue.queue[:4], dropped.after.keys)
    assert torch.equal(model.queue.queue[4:], before[4:])


def test_supervised_step_leaves_nothing_for_after_the_optimizer_step():
    model = small_model("supervised")
    assert isinstance(model, Supervised) and not hasattr(model, "encoder_k") and not hasattr(model, "queue")
    x, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
    step = model(x, x, labels)
    assert step.after == AfterStep() and set(step.stats) == {"train_acc"}
    weights = {n: p.clone() for n, p in model.named_parameters()}
    model.apply_step(step.after)
    model.catch_up_teacher()
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


def test_byol_forward_is_its_loss_on_student_and_teacher_embeddings():
    model = small_model("byol")
    key, query = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    reference = copy.deepcopy(model)
    loss, stats, after = model(key, query)
    q = reference.student_embed(query)
    k = reference.teacher_embed(key)
    torch.testing.assert_close(loss, byol_loss(q, k), rtol=1e-6, atol=1e-6)
    assert stats == {} and not hasattr(model, "queue")
    assert after == AfterStep(update_teacher=True)  # nothing to enqueue


# ------------------------------------------------------------------------------------------ heads


def linear(layer, n_in, n_out, bias=True):
    return isinstance(layer, nn.Linear) and layer.in_features == n_in and layer.out_features == n_out and \
        (layer.bias is not None) == bias


def assert_mlp(seq, n_in, hidden, n_out, first_bias=True):
    assert isinstance(seq, nn.Sequential) and len(seq) == 4
    assert linear(seq[0], n_in, hidden, first_bias)
    assert isinstance(seq[1], nn.BatchNorm1d) and seq[1].num_features == hidden
    assert isinstance(seq[2], nn.ReLU)
    assert linear(seq[3], hidden, n_out)


def test_isd_r18_heads():
    model = method_from_config(build_config("isd-r18-imagenet", {"data": "x"}))
    assert type(model) is ISD
    assert isinstance(model.encoder_q.fc, nn.Identity) and isinstance(model.encoder_k.fc, nn.Identity)
    assert_mlp(model.predict_q, 512, 512, 512, first_bias=False)
    assert model.queue.queue.shape == (128000, 512) and (model.temp_student, model.temp_teacher) == (0.02, 0.02)
    assert model.ema == 0.999


def test_isd_plus_r50_heads():
    model = method_from_config(build_config("isd-plus-r50-imagenet", {"data": "x", "queue_size": 256}))
    assert type(model) is ISDPlus
    assert_mlp(model.encoder_q.fc, 2048, 4096, 512)
    assert_mlp(model.encoder_k.fc, 2048, 4096, 512)  # the teacher's MLP is part of the EMA
    assert_mlp(model.predict_q, 512, 4096, 512)
    assert model.queue.queue.shape == (256, 512) and (model.temp_student, model.temp_teacher) == (0.1, 0.01)
    assert model.ema == 0.99
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert model.student_embed(x).shape == (2, 512) and model.teacher_embed(x).shape == (2, 512)


def test_byol_r18_heads():
    model = method_from_config(build_config("byol-r18-imagenet", {"data": "x"}))
    assert type(model) is BYOL
    assert_mlp(model.encoder_q.fc, 512, 1024, 128)
    assert_mlp(model.encoder_k.fc, 512, 1024, 128)
    assert_mlp(model.predict_q, 128, 1024, 128)


def test_moco_r18_heads():
    model = method_from_config(build_config("moco-r18-imagenet", {"data": "x", "queue_size": 256}))
    assert type(model) is MoCo
    fc = model.encoder_q.fc
    assert isinstance(fc, nn.Sequential) and len(fc) == 3
    assert linear(fc[0], 512, 512) and isinstance(fc[1], nn.ReLU) and linear(fc[2], 512, 128)
    assert isinstance(model.predict_q, nn.Identity) and model.temp_infonce == 0.2


def test_optimizer_sees_student_and_heads_only(image_root, tmp_path):
    from conftest import tiny_values
    from isd.train.loop import build

    setup = build(build_config(None, tiny_values(image_root, tmp_path / "run", method="isd-plus", epochs=1)),
                  log=lambda _: None)
    model, group = setup.model, setup.optimizer.param_groups[0]
    expected = {id(p) for p in [*model.encoder_q.parameters(), *model.predict_q.parameters()]}
    assert {id(p) for p in group["params"]} == expected
    assert (group["momentum"], group["weight_decay"]) == (0.9, 1e-4)


# ------------------------------------------------------------------------------------------ precision, shuffle-BN


def test_loss_is_fp32_under_bf16_autocast(monkeypatch):
    model = small_model("isd")
    seen = []
    real = isd_module.isd_loss

    def record(q, k, queue, temp_s, temp_t):
        seen.append((q.dtype, k.dtype, queue.dtype, torch.is_autocast_enabled("cpu")))
        return real(q, k, queue, temp_s, temp_t)

    monkeypatch.setattr(isd_module, "isd_loss", record)
    x = torch.randn(4, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.encoder_q(x)
        loss = model(x, x).loss
    assert features.dtype == torch.bfloat16  # the backbone does run in bf16 ...
    assert loss.dtype == torch.float32  # ... but the similarities and the loss are fp32
    assert seen == [(torch.float32, torch.float32, torch.float32, False)]
    assert model.queue.queue.dtype == torch.float32
    loss.backward()
    assert model.predict_q[0].weight.grad is not None


def test_one_process_teacher_keys_follow_their_samples_in_any_order():
    """Shuffle-BN needs no shuffle in one process: BatchNorm's batch statistics do not depend on the order of
    the samples, so the keys of a permuted batch are the permuted keys, whatever the permutation."""
    model = small_model("isd")
    model.train()
    x = torch.randn(8, 3, 16, 16)
    keys = model.teacher_embed(x)
    for seed in range(3):
        perm = torch.randperm(8, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(model.teacher_embed(x[perm]), keys[perm], rtol=1e-5, atol=1e-6)
    assert not keys.requires_grad and keys.shape == (8, 64)
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(8))
