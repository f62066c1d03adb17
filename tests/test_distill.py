"""Distillation (CompRess, `isd.Distill` and `isd distill`): the loss against hand-computed values, a frozen teacher,
exact resume with the queues, one-line errors for teachers that do not fit, and a tiny run end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import single_thread, write_image_folder
from isd.checkpoint import load_backbone
from isd.cli.main import main
from isd.experiments.plans import load_plan
from isd.methods import Distill
from isd.nets import build_backbone


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def hand_compress(t: np.ndarray, s: np.ndarray, queue_t: np.ndarray, queue_s: np.ndarray, temp: float) -> float:
    """CompRess's loss written out: KL(softmax(t·Q_tᵀ/T) ‖ softmax(s·Q_sᵀ/T)) summed over the queue, per sample."""
    t, s = t / np.linalg.norm(t, axis=1, keepdims=True), s / np.linalg.norm(s, axis=1, keepdims=True)
    p_t, p_s = np_softmax(t @ queue_t.T / temp), np_softmax(s @ queue_s.T / temp)
    return sum(p_t[i, j] * (math.log(p_t[i, j]) - math.log(p_s[i, j]))
               for i in range(len(t)) for j in range(len(queue_t))) / len(t)


class Fixed(nn.Module):
    """A 'backbone' whose features are a fixed linear map of the mean colour: every number of a step by hand."""

    def __init__(self, out: int, seed: int) -> None:
        super().__init__()
        self.fc = nn.Identity()
        self.body = nn.Linear(3, out, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.body.weight.copy_(torch.randn(out, 3, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        return self.fc(self.body(x.mean(dim=(2, 3))))


def model(variant: str, student_dim: int = 4, teacher_dim: int = 6, queue: int = 4) -> Distill:
    torch.manual_seed(0)
    return Distill(Fixed(student_dim, 1), Fixed(teacher_dim, 2), feat_dim=student_dim, teacher_dim=teacher_dim,
                   variant=variant, queue_size=queue, temp=0.5, ema=0.9).double()


@pytest.mark.parametrize("variant", ["2q", "1q"])
def test_one_step_equals_the_hand_computed_compress_loss(variant):
    m = model(variant)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    queue = m.queue.queue.detach().numpy().copy()
    t = m.teacher.body(x.mean(dim=(2, 3))).detach().numpy()
    s = m.encoder_q(x).detach().numpy()  # 1q: through the linear head to the teacher's 6-d
    queue_s = queue[:, 6:] if variant == "2q" else queue
    loss, _, after = m(x, x)
    assert loss.item() == pytest.approx(hand_compress(t, s, queue[:, :6], queue_s, 0.5), rel=1e-12)
    # what is enqueued: the teacher's unit embeddings, then (2q) the key encoder's
    keys = after.keys.numpy()
    assert np.allclose(keys[:, :6], t / np.linalg.norm(t, axis=1, keepdims=True), atol=1e-15)
    if variant == "2q":
        k = m.encoder_k(x).detach().numpy()
        assert np.allclose(keys[:, 6:], k / np.linalg.norm(k, axis=1, keepdims=True), atol=1e-15)
    assert after.update_teacher == (variant == "2q") and keys.shape[1] == m.queue.queue.shape[1]


def test_the_queues_start_as_the_originals_uniform_and_fill_in_step():
    m = model("2q", student_dim=4, teacher_dim=12, queue=4)
    queue = m.queue.queue
    assert queue[:, :12].abs().max() <= 1 / math.sqrt(12 / 3) and queue[:, 12:].abs().max() <= 1 / math.sqrt(4 / 3)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    _, _, after = m(x, x)
    m.apply_step(after)
    assert torch.equal(m.queue.queue[:2], after.keys) and int(m.queue.ptr) == 2


def test_the_key_encoder_is_a_momentum_copy_and_1q_has_none_to_move():
    m = model("2q")
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(m.encoder_q.parameters(), m.encoder_k.parameters()))
    before = [p.clone() for p in m.encoder_k.parameters()]
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    loss, _, after = m(x, x)
    loss.backward()
    opt.step()
    m.apply_step(after)
    for k, k0, q in zip(m.encoder_k.parameters(), before, m.encoder_q.parameters()):
        assert torch.allclose(k, 0.9 * k0 + 0.1 * q, atol=1e-15)


@pytest.mark.parametrize("variant", ["2q", "1q"])
def test_the_teacher_never_changes_and_gets_no_gradient(variant):
    m = model(variant)
    teacher = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5, momentum=0.9, weight_decay=1e-4)
    m.train()
    assert not m.teacher.training
    for step in range(3):
        x = torch.randn(2, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        loss, _, after = m(x, x)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in m.teacher.parameters())
        opt.step()
        m.apply_step(after)
    assert all(torch.equal(v, m.teacher.state_dict()[k]) for k, v in teacher.items())
    assert not any(p.requires_grad for p in m.teacher.parameters())
    assert all(p not in {id(q) for q in opt.param_groups[0]["params"]} for p in map(id, m.teacher.parameters()))


def test_a_teacher_with_batchnorm_stays_in_eval_mode():
    teacher = build_backbone("resnet18", stem="small", width=8)
    m = Distill(build_backbone("resnet18", stem="small", width=8), teacher, queue_size=8)
    m.train()
    stats = teacher.bn1.running_mean.clone()
    m(torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16))
    assert not teacher.training and torch.equal(stats, teacher.bn1.running_mean)


def test_distill_arguments_are_checked():
    backbone = build_backbone("resnet18", stem="small", width=8)
    with pytest.raises(ValueError, match="variant must be 1q or 2q"):
        Distill(backbone, build_backbone("resnet18", width=8), variant="3q")
    with pytest.raises(TypeError, match="teacher must be a torch.nn.Module"):
        Distill(backbone, "resnet50.pth")
    with pytest.raises(TypeError, match="teacher_dim: pass the size"):
        Distill(backbone, nn.Identity())


# ------------------------------------------------------------------------------------------ isd distill


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> tuple[Path, Path]:
    """(DATA with 32 px images in train/ and val/, a tiny ISD run on it: the teacher)."""
    root = tmp_path_factory.mktemp("distill")
    data = root / "data"
    write_image_folder(data / "train", classes=2, per_class=16, size=32, ext="png")
    write_image_folder(data / "val", classes=2, per_class=4, size=32, ext="png", seed=5)
    with single_thread():
        assert main(["train", str(data), "--epochs", "1", "--batch-size", "8", "--queue-size", "16", "--run-dir",
                     str(root / "teacher"), "--device", "cpu", "--set", "width=16", "--set", "num_workers=0"]) == 0
    return data, root / "teacher" / "ckpt_last.pth"


def distill_argv(data: Path, teacher: Path | str, run: Path, *extra: str) -> list[str]:
    return ["distill", str(data), "--teacher", str(teacher), "--run-dir", str(run), "--epochs", "2", "--batch-size",
            "8", "--queue-size", "16", "--device", "cpu", "--set", "width=8", "--set", "num_workers=0",
            "--set", "image_size=32", *extra]


@pytest.mark.parametrize("variant, cache", [("2q", False), ("1q", True)])
def test_isd_distill_runs_end_to_end_and_its_student_is_evaluated(tmp_path, teacher_run, variant, cache):
    data, teacher = teacher_run
    run = tmp_path / "student"
    argv = distill_argv(data, teacher, run, "--variant", variant, "--eval-every", "1",
                        *(["--teacher-cache"] if cache else []))
    with single_thread():
        assert main(argv) == 0
        assert main(["knn", str(run / "ckpt_last.pth"), str(data), "--device", "cpu", "--image-size", "32"]) == 0
    config = (run / "config.yaml").read_text()
    assert "method: distill" in config and f"distill_variant: {variant}" in config
    assert (run / "teacher_features.pt").is_file() == cache
    net, info = load_backbone(run / "ckpt_last.pth")
    assert info["width"] == 8 and info["method"] == "distill"
    assert json.loads((run / "knn.json").read_text())["counts"]["train"] == 32
    assert len(json.loads((run / "knn_history.json").read_text())) == 3  # epochs 0, 1, 2


@pytest.mark.parametrize("cache", [False, True])
def test_a_stopped_distillation_resumes_exactly_with_its_queues(tmp_path, teacher_run, cache):
    data, teacher = teacher_run
    extra = ["--teacher-cache"] if cache else []
    with single_thread():
        assert main(distill_argv(data, teacher, tmp_path / "whole", *extra)) == 0
        assert main(distill_argv(data, teacher, tmp_path / "half", *extra, "--epochs", "1")) == 0
        assert main(distill_argv(data, teacher, tmp_path / "half", *extra, "--resume", "auto")) == 0
    whole = torch.load(tmp_path / "whole" / "ckpt_last.pth", weights_only=True)["state_dict"]
    half = torch.load(tmp_path / "half" / "ckpt_last.pth", weights_only=True)["state_dict"]
    assert whole.keys() == half.keys() and "queue.queue" in whole
    assert all(torch.equal(whole[k], half[k]) for k in whole), [k for k in whole if not torch.equal(whole[k], half[k])]


@pytest.mark.parametrize("teacher, message", [
    ("missing.pth", "teacher missing.pth does not exist (--teacher)"),
    ("notes.txt", "cannot be read"),
    ("torchvision:resnet51", "torchvision has no model 'resnet51' (--teacher)"),
    ("torchvision:resnet18:IMAGENET9K", "resnet18 has no weights 'IMAGENET9K' (--teacher); it has IMAGENET1K_V1"),
])
def test_bad_teachers_are_one_line_errors_before_any_compute(tmp_path, teacher_run, capsys, teacher, message):
    data, _ = teacher_run
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    path = tmp_path / teacher if teacher.endswith((".pth", ".txt")) and teacher != "missing.pth" else teacher
    assert main(distill_argv(data, path, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_a_teacher_for_other_channels_is_refused(tmp_path, teacher_run, capsys):
    data, _ = teacher_run
    gray = build_backbone("resnet18", stem="small", width=8, in_channels=1)
    torch.save(gray.state_dict(), tmp_path / "gray.pth")
    assert main(distill_argv(data, tmp_path / "gray.pth", tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert "takes 1-channel images, but the data has 3 channels (--teacher)" in err and len(err.splitlines()) == 1


def test_an_offline_torchvision_teacher_names_the_file_to_provide(tmp_path, teacher_run, capsys, monkeypatch):
    data, _ = teacher_run
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    from torchvision.models._api import WeightsEnum

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)  # as offline here, and never a download in a test
    assert main(distill_argv(data, "torchvision:resnet18:IMAGENET1K_V1", tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert "could not be downloaded (OSError); without internet, put" in err
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in err and len(err.splitlines()) == 1


def test_a_torchvision_teacher_from_the_hub_cache(tmp_path, teacher_run, monkeypatch):
    """A weights file put where torch.hub keeps it is used without a download."""
    import torchvision

    data, _ = teacher_run
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cache / Path(weights.url).name)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded"))
    from isd.checkpoint import load_teacher

    net, info = load_teacher("torchvision:resnet18:IMAGENET1K_V1")  # the hash is checked on download only
    assert isinstance(net.fc, nn.Identity) and info["in_channels"] == 3 and not net.training
    assert F.normalize(net(torch.randn(2, 3, 32, 32)), dim=1).shape == (2, 512)


def test_a_mobilenet_student_is_distilled_evaluated_and_exported(tmp_path, teacher_run):
    data, teacher = teacher_run
    run = tmp_path / "mobile"
    argv = distill_argv(data, teacher, run, "--arch", "mobilenet_v3_small", "--epochs", "1", "--set", "width=64")
    with single_thread():
        assert main(argv) == 0
        assert main(["knn", str(run / "ckpt_last.pth"), str(data), "--device", "cpu"]) == 0
        assert main(["export", str(run / "ckpt_last.pth"), "-o", str(run / "backbone.pth")]) == 0
    net, info = load_backbone(run / "ckpt_last.pth")
    assert info["arch"] == "mobilenet_v3_small" and info["feature_dim"] == 576 and info["stem"] == "small"
    rebuilt = build_backbone("mobilenet_v3_small", stem="small")
    rebuilt.load_state_dict(torch.load(run / "backbone.pth", weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(rebuilt.eval()(x), net(x)) and net(x).shape == (2, 576)


def test_a_plan_compares_the_distilled_student_with_its_teacher_scratch_and_pixels(tmp_path, teacher_run):
    data, teacher = teacher_run
    plan = tmp_path / "distill-plan.yaml"
    plan.write_text(f"""
description: a distilled student beside its teacher, the same net trained with ISD, and raw pixels
queries: test
set: {{width: 8, image_size: 32, num_workers: 0, teacher: {teacher}, batch_size: 8, queue_size: 16}}
methods:
  distill: {{recipe: compress-r50-r18-imagenet, set: {{dataset: folder, epochs: 1, lr: 0.05}}}}
  isd: {{recipe: isd-r18-imagenet, set: {{epochs: 1}}}}
  teacher: {{recipe: compress-r50-r18-imagenet, floor: teacher}}
  raw-pixels: {{recipe: isd-r18-imagenet, floor: raw-pixels}}
seeds: [0]
budgets:
  smoke: {{about: a tiny check, set: {{print_freq: 2}}}}
""")
    out = tmp_path / "exp"
    with single_thread():
        assert main(["experiment", str(plan), str(data), "--budget", "smoke", "--device", "cpu", "--out",
                     str(out)]) == 0
    teacher_row = json.loads((out / "teacher-seed0" / "result.json").read_text())
    assert teacher_row["floor"] == "teacher" and teacher_row["train"] == {}
    text = (out / "report.md").read_text()
    assert "CompRess's claims on these cells" in text
    assert "- distilled (CompRess) ≥ 0.9 × teacher (fixed) at 20-NN:" in text
    assert "- distilled (CompRess) ≥ ISD at 20-NN:" in text and "- distilled (CompRess) ≥ raw pixels (floor)" in text


def test_a_plan_may_name_a_teacher_another_plan_makes_and_its_cell_says_so_when_run(tmp_path, teacher_run, capsys):
    data, _ = teacher_run
    missing = tmp_path / "other-plan" / "supervised-seed0" / "ckpt_last.pth"
    plan = tmp_path / "later-plan.yaml"
    plan.write_text(f"""
queries: test
set: {{width: 8, image_size: 32, num_workers: 0, teacher: {missing}, batch_size: 8, queue_size: 16}}
methods:
  distill: {{recipe: compress-r50-r18-imagenet, set: {{dataset: folder, epochs: 1}}}}
seeds: [0]
budgets:
  smoke: {{about: a tiny check}}
""")
    assert [c.name for c in load_plan(str(plan)).cells("smoke")] == ["distill-seed0"]  # loads before the teacher exists
    out = tmp_path / "exp"
    assert main(["experiment", str(plan), str(data), "--budget", "smoke", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"teacher {missing} does not exist" in err, err
    assert not (out / "distill-seed0" / "log.jsonl").exists()
