"""`isd knn`, `isd linear`, `isd export`, load_backbone and the original eval scripts, on tiny data (CPU)."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import isd
from isd.cli.main import main
from isd.config import build_config
from isd.eval.features import backbone_forward
from isd.cli.legacy_eval import main as legacy_main
from isd.methods import method_from_config

ROOT = Path(__file__).resolve().parents[1]
TINY = {"data": "x", "width": 8, "stem": "small", "image_size": 32, "queue_size": 16, "batch_size": 4}
FAST = ["--num-workers", "0", "--batch-size", "8"]


def write_images(folder: Path, classes: dict[str, int], per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c, (name, colour) in enumerate(classes.items()):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (36, 36, 3), dtype=np.uint8)
            img[..., c] += np.uint8(colour)  # one bright channel per class: a learnable, separable signal
            Image.fromarray(img).save(folder / name / f"{i}.png")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny convolutions: on a shared 2-core machine, OpenMP barriers cost ~100x the work itself
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_images(root / "train", {"a": 150, "b": 150}, 12, 0)
    write_images(root / "val", {"a": 150, "b": 150}, 4, 1)
    return root


def save_ckpt(path: Path, values: dict, stem: str = "small", perturb_teacher: bool = True) -> Path:
    cfg = build_config(None, values)
    torch.manual_seed(0)
    model = method_from_config(cfg, stem=stem)
    if perturb_teacher:  # a teacher that differs from the student in weights and BN statistics
        with torch.no_grad():
            for p in model.encoder_k.parameters():
                p.add_(0.05 * torch.randn_like(p))
            for m_q, m_k in zip(model.encoder_q.modules(), model.encoder_k.modules()):
                if isinstance(m_q, torch.nn.BatchNorm2d):
                    m_q.running_mean.normal_()
                    m_k.running_mean.normal_()
    torch.save({"opt": cfg.to_dict(), "state_dict": model.state_dict(), "epoch": 1, "method": cfg.method,
                "arch": cfg.arch, "format": "isd-ssl/1"}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_ckpt(tmp_path_factory.mktemp("run") / "ckpt_epoch_1.pth", TINY)


def run(argv: list, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_export_loads_into_torchvision_strictly(tmp_path, capsys):
    path = save_ckpt(tmp_path / "ckpt.pth", {"data": "x", "queue_size": 256}, stem="imagenet")
    rc, out, _ = run(["export", path, "-o", tmp_path / "backbone.pth"], capsys)
    assert rc == 0 and "torchvision.models.resnet18()" in out
    tv = torchvision.models.resnet18()
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(torch.load(tmp_path / "backbone.pth", weights_only=True), strict=True)
    ours, info = isd.load_backbone(path)
    assert info["torchvision_compatible"] and json.loads((tmp_path / "backbone.json").read_text())["arch"] == "resnet18"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tv.eval()(x), backbone_forward(ours, x), rtol=0, atol=0)


def test_export_of_a_small_stem_notes_it_is_not_torchvision(ckpt, tmp_path, capsys):
    rc, out, _ = run(["export", ckpt, "--encoder", "teacher", "-o", tmp_path / "b.pth"], capsys)
    assert rc == 0 and "note: not a plain torchvision" in out
    assert json.loads((tmp_path / "b.json").read_text())["stem"] == "small"


def test_original_layout_loads_and_evaluates(data, tmp_path, capsys):
    cfg = build_config(None, TINY)
    model = method_from_config(cfg, stem="small")
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.encoder_q.fc.weight"] = torch.randn(10, 64)  # a head the original evaluation drops
    path = tmp_path / "original.pth.tar"
    torch.save({"opt": argparse.Namespace(arch="resnet18", temp=0.02), "state_dict": state, "epoch": 200}, path)
    net, info = isd.load_backbone(path)
    assert info["layout"] == "original" and info["width"] == 8 and info["stem"] == "small"
    expected = {k: v for k, v in model.encoder_q.state_dict().items()}
    assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items())
    rc, out, _ = run(["knn", path, data, "--image-size", 32, "--out", tmp_path, *FAST], capsys)
    assert rc == 0 and (tmp_path / "knn.json").is_file()


def test_teacher_has_teacher_weights_and_student_bn_statistics(ckpt):
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    teacher, info = isd.load_backbone(ckpt, encoder="teacher")
    t = teacher.state_dict()
    assert info["encoder"] == "teacher"
    assert torch.equal(t["conv1.weight"], state["encoder_k.conv1.weight"])
    assert torch.equal(t["bn1.weight"], state["encoder_k.bn1.weight"])
    assert torch.equal(t["bn1.running_mean"], state["encoder_q.bn1.running_mean"])
    assert torch.equal(t["layer4.1.bn2.running_var"], state["encoder_q.layer4.1.bn2.running_var"])
    assert not torch.equal(t["conv1.weight"], state["encoder_q.conv1.weight"])


def test_knn_writes_json_and_reuses_cached_features(ckpt, data, tmp_path, capsys):
    argv = ["knn", ckpt, data, "--out", tmp_path, *FAST]
    rc, out, _ = run(argv, capsys)
    first = json.loads((tmp_path / "knn.json").read_text())
    assert rc == 0 and set(first["top1"]) == {"1", "20"} and "top-1" in out
    assert first["counts"]["train"] == 24 and first["counts"]["val"] == 8 and first["image_size"] == 32
    assert set(first["per_class"]["1"]) == {"a", "b"} and first["features_from_cache"] == {"train": False, "val": False}
    assert (tmp_path / "features_student_train.pt").is_file()
    rc, out, _ = run(argv, capsys)
    second = json.loads((tmp_path / "knn.json").read_text())
    assert second["features_from_cache"] == {"train": True, "val": True} and second["top1"] == first["top1"]
    rc, _, err = run([*argv, "-k", 1, 100, "--encoder", "teacher"], capsys)
    assert rc == 0 and "clamped to 24" in err
    teacher = json.loads((tmp_path / "knn.json").read_text())
    assert set(teacher["top1"]) == {"1", "24"} and teacher["encoder"] == "teacher"


def test_linear_fast_with_label_fraction(ckpt, data, tmp_path, capsys):
    rc, out, _ = run(["linear", ckpt, data, "--fast", "--epochs", 3, "--label-fraction", 0.5, "--out", tmp_path,
                      *FAST], capsys)
    assert rc == 0
    result = json.loads((tmp_path / "linear.json").read_text())
    assert result["num_train"] == 12 and len(result["history"]) == 3 and 0 <= result["top1"] <= 100
    picked = json.loads((tmp_path / "label_indices_0.5.json").read_text())
    assert picked["count"] == 12 and len(set(picked["indices"])) == 12
    assert set(torch.load(tmp_path / "linear_best.pth", weights_only=False)["state_dict"]) == {
        "mean", "std", "linear.weight", "linear.bias"}


def test_linear_paper_protocol_two_epochs(ckpt, data, tmp_path, capsys):
    rc, out, _ = run(["linear", ckpt, data, "--epochs", 2, "--lr-schedule", "1", "--out", tmp_path, *FAST], capsys)
    result = json.loads((tmp_path / "linear.json").read_text())
    assert rc == 0 and result["protocol"].startswith("paper") and result["top5"] == 100.0
    assert [h["lr"] for h in result["history"]] == pytest.approx([0.01, 0.001])


def bad_layout(tmp_path: Path, ckpt: Path, data: Path) -> list:
    torch.save({"weights": {"foo.bar": torch.zeros(1)}}, tmp_path / "odd.pth")
    return ["knn", tmp_path / "odd.pth", data, "--out", tmp_path]


def arch_mismatch(tmp_path: Path, ckpt: Path, data: Path) -> list:
    return ["knn", ckpt, data, "--arch", "resnet50", "--out", tmp_path]


def val_differs(tmp_path: Path, ckpt: Path, data: Path) -> list:
    write_images(tmp_path / "train", {"a": 150, "b": 150}, 2, 0)
    write_images(tmp_path / "val", {"a": 150, "c": 150}, 2, 1)
    return ["knn", ckpt, tmp_path, "--out", tmp_path]


def empty_split(tmp_path: Path, ckpt: Path, data: Path) -> list:
    write_images(tmp_path / "train", {"a": 150, "b": 150}, 2, 0)
    (tmp_path / "val").mkdir()
    return ["linear", ckpt, tmp_path, "--fast", "--out", tmp_path]


def corrupt_val_image(tmp_path: Path, ckpt: Path, data: Path) -> list:
    write_images(tmp_path / "train", {"a": 150, "b": 150}, 2, 0)
    write_images(tmp_path / "val", {"a": 150, "b": 150}, 2, 1)
    victim = sorted((tmp_path / "val" / "b").iterdir())[0]
    victim.write_bytes(b"not an image")
    return ["knn", ckpt, tmp_path, "--out", tmp_path, "--num-workers", "1"]


@pytest.mark.parametrize("make, message", [
    (corrupt_val_image, "val/b/0.png cannot be read"),
    (bad_layout, "unknown layout (keys seen: weights)"),
    (arch_mismatch, "holds resnet18 weights, not resnet50"),
    (val_differs, "val classes differ"),
    (empty_split, "has no class folders"),
    (lambda tmp, ckpt, data: ["export", tmp / "missing.pth"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(make, message, ckpt, data, tmp_path, capsys):
    rc, _, err = run(make(tmp_path, ckpt, data), capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_teacher_of_a_plain_backbone_is_refused(ckpt, tmp_path, capsys):
    run(["export", ckpt, "-o", tmp_path / "b.pth"], capsys)
    rc, _, err = run(["export", tmp_path / "b.pth", "--encoder", "teacher", "-o", tmp_path / "c.pth"], capsys)
    assert rc == 2 and "no teacher" in err


def test_original_eval_scripts(ckpt, data, tmp_path):
    proc = subprocess.run([sys.executable, ROOT / "eval_knn.py", "--arch", "resnet18", "--weights", ckpt,
                           "--save", tmp_path, "-j", "0", "-b", "8", data], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads((tmp_path / "knn.json").read_text())["top1"]) == {"1", "20"}
    assert legacy_main("eval_linear.py", [str(data), "--weights", str(ckpt), "--save", str(tmp_path), "-j", "0",
                                          "-b", "8", "--epochs", "1", "--lr_schedule", "15,30,40"]) == 0
    assert json.loads((tmp_path / "linear.json").read_text())["epochs"] == 1


def test_eval_knn_prints_and_logs_the_original_lines(ckpt, data, tmp_path, capsys):
    """For each k, the original printed k, then `=> time : N.NNs` and ` * Acc NN.NN`, into SAVE/knn.logs too."""
    import re

    argv = [str(data), "--weights", str(ckpt), "--save", str(tmp_path), "-j", "0", "-b", "8"]
    assert legacy_main("eval_knn.py", argv) == 0
    lines = capsys.readouterr().out.splitlines()
    top1 = json.loads((tmp_path / "knn.json").read_text())["top1"]
    assert "    k   top-1 %" in lines  # today's table stays
    expected = []
    for k, acc in top1.items():
        at = lines.index(k)
        assert re.fullmatch(r"=> time : \d+\.\d\ds", lines[at + 1]) and lines[at + 2] == f" * Acc {acc:.2f}"
        expected += lines[at:at + 3]
    log = (tmp_path / "knn.logs").read_text().splitlines()
    assert log[0].startswith("eval_knn.py Namespace(") and log[1:] == expected
    assert legacy_main("eval_knn.py", [*argv, "--debug"]) == 0  # the original's --debug: no log
    assert (tmp_path / "knn.logs").read_text().splitlines() == log
    capsys.readouterr()


def test_eval_linear_prints_and_logs_acc_lines_per_epoch(ckpt, data, tmp_path, capsys):
    """` * Acc@1 N.NNN Acc@5 N.NNN` after every epoch, on the console and appended to SAVE/logs."""
    argv = [str(data), "--weights", str(ckpt), "--save", str(tmp_path), "-j", "0", "-b", "8", "--epochs", "2"]
    assert legacy_main("eval_linear.py", argv) == 0
    out = capsys.readouterr().out
    history = json.loads((tmp_path / "linear.json").read_text())["history"]
    expected = [f" * Acc@1 {h['top1']:.3f} Acc@5 {h['top5']:.3f}" for h in history]
    assert len(expected) == 2 and [ln for ln in out.splitlines() if ln.startswith(" * Acc@1")] == expected
    assert "linear probe  student" in out  # today's summary stays
    log = (tmp_path / "logs").read_text().splitlines()
    assert log[0].startswith("eval_linear.py Namespace(") and log[1:] == expected
    assert legacy_main("eval_linear.py", argv) == 0  # appended, as the original's logger did
    assert len((tmp_path / "logs").read_text().splitlines()) == 6
    capsys.readouterr()
