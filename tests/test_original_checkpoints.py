"""Checkpoints written by the original ISD scripts: export, kNN, linear probe, load_backbone, torch.hub, --resume.

The files are built here from the project's own models the way the original scripts build theirs: each part
wrapped in DataParallel (`encoder_q.module.conv1.weight`), the queue as the bare buffers `queue`, `queue_ptr`
(shape [1]) and, for ISD+, `labels`, under `state_dict` beside `opt` (an argparse Namespace), `optimizer` and
`epoch`. No original code is involved.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import isd
from conftest import ROOT, single_thread, tiny_values
from isd.cli.main import main
from isd.config import build_config
from isd.cli.legacy_eval import main as eval_main
from isd.cli.legacy_train import main as train_main
from isd.methods import method_from_config
from isd.train.loop import train

PARTS = ("encoder_q", "encoder_k", "predict_q")
FAST = ["--num-workers", "0", "--batch-size", "8"]
# `isd train` values that fit the files of build_original() (width 8, small stem, K 16)
TINY_SETS = [f"--set={k}={v}" for k, v in {"width": 8, "stem": "small", "image_size": 32, "batch_size": 4,
                                           "queue_size": 16, "num_workers": 0, "device": "cpu"}.items()]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with single_thread():
        yield


def original_state(state: dict, method: str) -> dict:
    """Our model's state_dict renamed as the original scripts name theirs."""
    out = {}
    for key, value in state.items():
        part, _, rest = key.partition(".")
        if part in PARTS:
            out[f"{part}.module.{rest}"] = value
        elif key == "queue.queue":
            out["queue"] = value
        elif key == "queue.ptr":
            out["queue_ptr"] = value.reshape(1)
        elif key == "queue.labels" and method == "isd-plus":  # train_isd.py keeps no labels
            out["labels"] = value
    return out


def original_file(ckpt: dict, method: str) -> dict:
    """One of our training checkpoints as the original scripts would have written it."""
    opt = argparse.Namespace(arch=ckpt["opt"]["arch"], learning_rate=ckpt["opt"]["lr"],
                             lr_decay_epochs=[140, 180], cos=False, queue_size=ckpt["opt"]["queue_size"])
    return {"opt": opt, "state_dict": original_state(ckpt["state_dict"], method), "optimizer": ckpt["optimizer"],
            "epoch": ckpt["epoch"]}


def build_original(path: Path, method: str, arch: str, width: int = 8, stem: str = "small",
                   legacy_format: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """Writes an original-layout file of a fresh model (teacher perturbed); returns the student and teacher
    backbone weights it holds. The parts are wrapped in DataParallel, as the original's `data_parallel()`."""
    values = {"data": "x", "method": method, "arch": arch, "width": width, "queue_size": 16, "batch_size": 4}
    cfg = build_config(None, values)
    torch.manual_seed(0)
    model = method_from_config(cfg, stem=stem)
    with torch.no_grad():
        for p in model.encoder_k.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.queue.ptr.fill_(8) if hasattr(model, "queue") else None
    backbones = {name: {k: v.clone() for k, v in getattr(model, part).state_dict().items() if not k.startswith("fc.")}
                 for name, part in (("student", "encoder_q"), ("teacher", "encoder_k"))}
    renamed = original_state(model.state_dict(), method)
    for part in PARTS:
        setattr(model, part, nn.DataParallel(getattr(model, part)))
    wrapped = model.state_dict()
    assert {k for k in wrapped if k.startswith(PARTS)} == {k for k in renamed if k.startswith(PARTS)}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    torch.save({"opt": argparse.Namespace(arch=arch, learning_rate=0.05, cos=True), "state_dict": renamed,
                "optimizer": optimizer.state_dict(), "epoch": 200}, path,
               _use_new_zipfile_serialization=not legacy_format)
    return backbones


def assert_equal_weights(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    different = [k for k in got if not torch.equal(got[k], expected[k])]
    assert not different, different[:5]


CASES = [("isd", "resnet18"), ("isd-plus", "resnet18"), ("byol", "resnet18"), ("isd", "resnet50"),
         ("isd-plus", "resnet50"), ("byol", "resnet50")]


@pytest.mark.parametrize("method, arch", CASES, ids=[f"{m}-{a}" for m, a in CASES])
def test_export_of_an_original_checkpoint_is_the_student_exactly(method, arch, tmp_path, capsys):
    path = tmp_path / "ckpt_epoch_200.pth"
    expected = build_original(path, method, arch, legacy_format=method == "byol")  # also a pre-1.6 torch file
    for encoder in ("student", "teacher"):
        out = tmp_path / f"{encoder}.pth"
        assert main(["export", str(path), "--encoder", encoder, "--arch", arch, "-o", str(out)]) == 0
        exported = torch.load(out, weights_only=True)
        if encoder == "student":
            assert_equal_weights(exported, expected["student"])
        else:  # the teacher's weights with the student's BatchNorm statistics
            assert torch.equal(exported["conv1.weight"], expected["teacher"]["conv1.weight"])
            assert torch.equal(exported["bn1.running_var"], expected["student"]["bn1.running_var"])
        meta = json.loads(out.with_suffix(".json").read_text())
        assert (meta["arch"], meta["layout"], meta["method"], meta["epoch"]) == (arch, "original", method, 200)
    capsys.readouterr()


@pytest.fixture(scope="module")
def full_r18(tmp_path_factory) -> tuple[Path, dict]:
    """A full-width ResNet-18 ISD file of the original layout (torchvision-compatible backbone)."""
    path = tmp_path_factory.mktemp("orig") / "ckpt_epoch_200.pth"
    return path, build_original(path, "isd", "resnet18", width=64, stem="imagenet")


def test_original_checkpoint_exports_to_torchvision_and_loads_everywhere(full_r18, tmp_path, capsys):
    path, expected = full_r18
    assert main(["export", str(path), "-o", str(tmp_path / "b.pth")]) == 0
    tv = torchvision.models.resnet18()
    tv.fc = nn.Identity()
    tv.load_state_dict(torch.load(tmp_path / "b.pth", weights_only=True), strict=True)
    assert_equal_weights({k: v for k, v in tv.state_dict().items()}, expected["student"])
    net, info = isd.load_backbone(path)
    assert info["layout"] == "original" and info["method"] == "isd" and info["torchvision_compatible"]
    assert_equal_weights(net.state_dict(), expected["student"])
    assert "torchvision.models.resnet18()" in capsys.readouterr().out


def test_torch_hub_loads_the_backbone_of_any_layout(full_r18, tmp_path):
    path, expected = full_r18
    model = torch.hub.load(str(ROOT), "resnet18", source="local", weights=str(path))
    assert isinstance(model, torchvision.models.ResNet) and isinstance(model.fc, nn.Identity) and not model.training
    assert_equal_weights(model.state_dict(), expected["student"])
    teacher = torch.hub.load(str(ROOT), "resnet18", source="local", weights=str(path), encoder="teacher")
    assert torch.equal(teacher.state_dict()["conv1.weight"], expected["teacher"]["conv1.weight"])
    torch.save(model.state_dict(), tmp_path / "plain.pth")  # a plain state_dict (what `isd export` writes)
    again = torch.hub.load(str(ROOT), "resnet18", source="local", weights=str(tmp_path / "plain.pth"))
    assert_equal_weights(again.state_dict(), expected["student"])
    r50 = tmp_path / "r50.pth"
    expected50 = build_original(r50, "isd-plus", "resnet50", width=16, stem="imagenet")
    model50 = torch.hub.load(str(ROOT), "resnet50", source="local", weights=str(r50))
    assert_equal_weights(model50.state_dict(), expected50["student"])
    with pytest.raises(isd.errors.UsageError, match="holds resnet18 weights, not resnet50"):
        torch.hub.load(str(ROOT), "resnet50", source="local", weights=str(path))
    fresh = torch.hub.load(str(ROOT), "resnet50", source="local")
    assert fresh(torch.randn(1, 3, 64, 64)).shape == (1, 2048)


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    from conftest import write_image_folder

    root = tmp_path_factory.mktemp("evaldata")
    write_image_folder(root / "train", classes=2, per_class=6, size=36)
    write_image_folder(root / "val", classes=2, per_class=3, size=36, seed=2)
    return root


@pytest.mark.parametrize("method, arch", CASES, ids=[f"{m}-{a}" for m, a in CASES])
def test_knn_and_original_eval_scripts_read_the_original_layout(method, arch, eval_data, tmp_path, capsys):
    path = tmp_path / "ckpt_epoch_200.pth"
    build_original(path, method, arch)
    out = tmp_path / "out"
    assert main(["knn", str(path), str(eval_data), "--image-size", "32", "--out", str(out), *FAST]) == 0
    backbone = json.loads((out / "knn.json").read_text())["backbone"]
    assert (backbone["layout"], backbone["arch"], backbone["method"]) == ("original", arch, method)
    assert eval_main("eval_knn.py", [str(eval_data), "--weights", str(path), "--save", str(out), "-j", "0"]) == 0
    assert eval_main("eval_linear.py", [str(eval_data), "--weights", str(path), "--save", str(out), "-j", "0",
                                        "--epochs", "1"]) == 0
    assert main(["linear", str(path), str(eval_data), "--fast", "--epochs", "2", "--out", str(out), *FAST]) == 0
    capsys.readouterr()


# ------------------------------------------------------------------------------------------ --resume


def run_tiny(values: dict, logs: list | None = None):
    return train(build_config(None, values), log=(logs.append if logs is not None else lambda _: None))


@pytest.mark.parametrize("method, arch", CASES, ids=[f"{m}-{a}" for m, a in CASES])
def test_resume_continues_an_original_run_queue_and_optimizer_included(method, arch, image_root, tmp_path):
    """Epoch 2 resumed from the original-layout file equals epoch 2 resumed from our own checkpoint of the same
    state, weight for weight: the queue, its pointer and the SGD momentum came across (K = 8 = one epoch's keys,
    so a queue left at its random start would change every later loss)."""
    base = tiny_values(image_root, tmp_path / "first", method=method, arch=arch, save_freq=1, seed=5, temp_t=0.05)
    run_tiny({**base, "epochs": 1})
    ours = tmp_path / "first" / "ckpt_epoch_1.pth"
    state = torch.load(ours, weights_only=False)
    assert torch.is_tensor(state["optimizer"]["state"][0]["momentum_buffer"])
    torch.save(original_file(state, method), tmp_path / "original.pth")
    # the original's files hold a teacher that still owes its last update, which resume makes first; so do the
    # files of isd's format 1: the same state in that format resumes the same way
    torch.save({**state, "format": "isd-ssl/1"}, tmp_path / "ours_format1.pth")
    from_ours = run_tiny({**base, "run_dir": str(tmp_path / "a"), "epochs": 2,
                          "resume": str(tmp_path / "ours_format1.pth")})
    logs = []
    from_original = run_tiny({**base, "run_dir": str(tmp_path / "b"), "epochs": 2,
                              "resume": str(tmp_path / "original.pth")}, logs)
    assert from_original.start_epoch == 2 and any("resumed from" in line and "epoch 1" in line for line in logs)
    assert_equal_weights(from_original.model.state_dict(), from_ours.model.state_dict())
    if method != "byol":  # the queue moved on from the resumed one, by the same keys
        assert not torch.equal(from_original.model.queue.queue, state["state_dict"]["queue.queue"])


def test_original_train_script_resumes_an_original_checkpoint(jpeg_root, tmp_path, capsys):
    """`train_isd.py --resume` on a file of the original train_isd.py (full-width ResNet-18, 224 px)."""
    values = {"data": str(jpeg_root), "queue_size": 8, "batch_size": 4}
    cfg = build_config("isd-r18-imagenet", values)
    torch.manual_seed(0)
    model = method_from_config(cfg, stem="imagenet")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    state = {"opt": {"arch": "resnet18", "lr": 0.01, "queue_size": 8}, "state_dict": model.state_dict(),
             "optimizer": optimizer.state_dict(), "epoch": 1}
    torch.save(original_file(state, "isd"), tmp_path / "ckpt_epoch_1.pth")
    out = tmp_path / "run"
    argv = [str(jpeg_root), "--epochs", "2", "--batch_size", "4", "--queue_size", "8", "--num_workers", "0",
            "--arch", "resnet18", "--device", "cpu", "--checkpoint_path", str(out), "--resume",
            str(tmp_path / "ckpt_epoch_1.pth")]
    assert train_main("train_isd.py", argv) == 0
    assert "resumed from" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("ckpt_epoch_*.pth")) == ["ckpt_epoch_2.pth"]


@pytest.mark.parametrize("method, other", [("isd", "isd-plus"), ("isd-plus", "byol"), ("byol", "isd")])
def test_resuming_an_original_file_with_another_method_is_one_line(method, other, image_root, tmp_path, capsys):
    """The original's opt has no method: it is read from the keys (labels -> ISD+, queue -> ISD, none -> BYOL)."""
    build_original(tmp_path / "orig.pth", method, "resnet18")
    argv = ["train", str(image_root), "--method", other, "--resume", str(tmp_path / "orig.pth"), "--run-dir",
            str(tmp_path / "run"), *TINY_SETS]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"was trained with --method {method}, not {other}" in err[0]


def test_an_optimizer_state_that_does_not_fit_is_one_line(image_root, tmp_path, capsys):
    build_original(tmp_path / "orig.pth", "isd", "resnet18")
    ckpt = torch.load(tmp_path / "orig.pth", weights_only=False)
    ckpt["optimizer"] = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1).state_dict()  # one parameter
    torch.save(ckpt, tmp_path / "orig.pth")
    argv = ["train", str(image_root), "--resume", str(tmp_path / "orig.pth"), "--run-dir", str(tmp_path / "run"),
            *TINY_SETS]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its optimizer state does not fit this model's parameters (ValueError:" in err[0]
