"""The public Python API (`import isd`, docs/api.md): the example loop equals `isd train`, bad arguments are
one-line errors, every public name is documented."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import torch

import isd
from conftest import ROOT, single_thread
from isd.config import build_config
from isd.data.sources import IMAGENET_MEAN, IMAGENET_STD, Source


def load_example():
    spec = importlib.util.spec_from_file_location("own_loop", ROOT / "examples" / "own_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_loop_makes_the_losses_of_isd_train(tmp_path, monkeypatch):
    import isd.train.loop as loop

    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    source = Source("memory", ["a", "b"], torch.tensor([0, 1] * 8), IMAGENET_MEAN, IMAGENET_STD, native_size=32,
                    images=images)
    monkeypatch.setattr(loop, "load_source", lambda *a, **k: source)
    values = {"method": "isd", "arch": "resnet18", "stem": "small", "width": 8, "batch_size": 4, "queue_size": 16,
              "temp_student": 0.02, "ema": 0.99, "lr": 0.05, "schedule": "cos", "epochs": 1, "seed": 5,
              "amp": "off", "channels_last": "off", "device": "cpu", "num_workers": 0, "print_freq": 1,
              "data": "memory", "run_dir": str(tmp_path)}
    with single_thread():
        loop.train(build_config(None, values), log=lambda _: None)
        ours = load_example().train(images, steps=4, batch_size=4, seed=5, lr=0.05, width=8)
    logged = [json.loads(line)["loss"] for line in (tmp_path / "log.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert len(ours) == 4 and ours == logged


def test_the_example_runs_from_the_command_line_on_a_folder(image_root, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "own_loop.py"), "--folder",
                           str(image_root / "train"), "--steps", "1"], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"step 1: loss \d+\.\d{4}\n", proc.stdout)


def small_backbone(**kwargs):
    return isd.build_backbone("resnet18", stem="small", width=8, **kwargs)


@pytest.mark.parametrize("make, error, message", [
    (lambda: isd.ISD("resnet18"), TypeError, r"backbone must be a torch\.nn\.Module"),
    (lambda: isd.ISD(small_backbone(), feat_dim=128), ValueError, r"feat_dim=128 does not match the backbone, whose "
     r"features are 64-d; pass feat_dim=64"),
    (lambda: isd.ISD(torch.nn.Flatten()), TypeError, r"feat_dim: pass the size of the feature vector Flatten"),
    (lambda: isd.build_method("simclr", small_backbone()), ValueError, r"unknown method 'simclr': use one of isd, "
     r"isd-plus, byol, moco, supervised"),
    (lambda: isd.build_method("moco", small_backbone(), temperature=0.2), TypeError,
     r"moco: got an unexpected keyword argument 'temperature'"),
    (lambda: isd.build_backbone("vit_b_16"), ValueError, r"unknown arch 'vit_b_16': use one of resnet18"),
    (lambda: isd.build_backbone("resnet18", stem="tiny"), ValueError, r"stem must be 'imagenet'"),
    (lambda: isd.build_backbone("resnet18", width=8.5), TypeError, r"width must be a whole number, got float 8.5"),
    (lambda: isd.ISD(small_backbone(), ema=1.5), ValueError, r"ema must be in \[0.0, 1.0\], got 1.5"),
    (lambda: isd.ISD(small_backbone(), temp=0), ValueError, r"temp must be in \(0.0, ∞\), got 0"),
    (lambda: isd.MoCo(small_backbone(), temp="0.2"), TypeError, r"temp must be a number, got str '0.2'"),
    (lambda: isd.ISD(small_backbone(), queue_size=0), ValueError, r"queue_size must be in \[1, ∞\), got 0"),
    (lambda: isd.ISD(small_backbone(), queue_size=True), TypeError, r"queue_size must be a whole number"),
    (lambda: isd.Supervised(small_backbone(), num_classes=1), ValueError, r"num_classes must be in \[2, ∞\)"),
    (lambda: isd.two_view_batches(torch.zeros(4, 3, 8, 8)), TypeError, r"images must be a uint8 tensor \[N, C, H, "
     r"W\] with C = 1 or 3, got torch.float32 \(4, 3, 8, 8\)"),
    (lambda: isd.two_view_batches(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), batch_size=8), ValueError,
     r"batch_size=8 is larger than the 4 images"),
    (lambda: isd.two_view_batches(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), augmentation="strong/mild"),
     ValueError, r"augmentation"),
])
def test_bad_arguments_are_one_line_errors(make, error, message):
    with pytest.raises(error, match=message) as caught:
        make()
    assert isinstance(caught.value, isd.UsageError) and "\n" not in str(caught.value)


def test_a_queue_that_the_batch_does_not_divide_says_so():
    model = isd.ISD(small_backbone(), queue_size=6, ema=0.9)
    x = torch.randn(4, 3, 16, 16)
    _, _, after = model(x, x)
    with pytest.raises(ValueError, match=r"the queue size must be a multiple of the \(global\) batch size"):
        model.apply_step(after)
        model.apply_step(after)


def test_a_backbone_without_fc_gets_one_for_the_head():
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    model = isd.BYOL(body, feat_dim=8)
    loss, stats, after = model(torch.randn(4, 3, 12, 12), torch.randn(4, 3, 12, 12))
    assert loss.shape == () and after.update_teacher and "encoder_q.body.0.weight" in model.state_dict()


def test_a_torchvision_resnet_keeps_the_original_keys():
    from torchvision.models import resnet18

    model = isd.ISD(resnet18(), queue_size=64)  # feature size read from its fc: 512
    assert model.queue.queue.shape == (64, 512) and "encoder_q.fc.0.weight" not in model.state_dict()
    assert "encoder_q.layer4.1.bn2.weight" in model.state_dict() and "predict_q.0.weight" in model.state_dict()


def test_defaults_are_the_papers():
    b = small_backbone
    assert (isd.ISD(b(), queue_size=8).temp_student, isd.ISD(b(), queue_size=8).ema) == (0.02, 0.999)
    plus = isd.ISDPlus(b(), queue_size=8)
    assert (plus.temp_student, plus.temp_teacher, plus.ema) == (0.1, 0.01, 0.99)
    assert isd.BYOL(b()).ema == 0.99
    moco = isd.MoCo(b(), queue_size=8)
    assert (moco.temp_infonce, moco.ema) == (0.2, 0.999)
    import inspect
    assert inspect.signature(isd.ISD).parameters["queue_size"].default == 128_000
    assert inspect.signature(isd.MoCo).parameters["queue_size"].default == 65_536


def test_every_public_name_is_in_the_api_docs():
    text = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name in isd.__all__ if f"`{name}" not in text and f"isd.{name}" not in text]
    assert not missing, missing
    for name in isd.losses.__all__:
        assert f"isd.losses.{name}" in text, name
