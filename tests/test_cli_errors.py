"""Bad input gives one line naming the problem (exit 2), never a traceback; unreadable images are skipped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, write_image_folder
from isd.cli.main import main
from isd.cli.legacy_train import main as legacy_main

pytestmark = pytest.mark.usefixtures("torch_one_thread")

FAST = ["--num-workers", "0", "--device", "cpu", "--batch-size", "4", "--queue-size", "8",
        "--set", "image_size=32", "--set", "stem=small", "--set", "width=8", "--set", "in_memory=off"]  # the file pipelines


def run_cli(argv: list, capsys, entry=main) -> tuple[int, str, str]:
    try:
        rc = entry([str(a) for a in argv])
    except SystemExit as exit_:  # argparse errors exit from inside parse_args
        rc = exit_.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line(rc: int, err: str, *messages: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for message in messages:
        assert message in lines[0], lines[0]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray default run folder (runs/isd) would land here, not in the repo


def train_argv(data, run_dir, *extra) -> list:
    return ["train", data, "--run-dir", run_dir, "--epochs", "1", *FAST, *extra]


# ------------------------------------------------------------------------------------------ data folder


def test_missing_data_folder(tmp_path, capsys):
    rc, _, err = run_cli(train_argv(tmp_path / "nowhere", tmp_path / "run"), capsys)
    assert_one_line(rc, err, "isd train: error: data folder", "nowhere/train does not exist",
                    "DATA/train/<class>/<image>")


def test_data_folder_without_train_split(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    rc, _, err = run_cli(train_argv(tmp_path / "data", tmp_path / "run"), capsys)
    assert_one_line(rc, err, "data/train does not exist")


def test_empty_data_folder(tmp_path, capsys):
    (tmp_path / "data" / "train").mkdir(parents=True)
    rc, _, err = run_cli(train_argv(tmp_path / "data", tmp_path / "run"), capsys)
    assert_one_line(rc, err, "data/train has no class folders", "put images in")


def test_class_folder_without_images(tmp_path, capsys):
    write_image_folder(tmp_path / "data" / "train", classes=1, per_class=8)
    (tmp_path / "data" / "train" / "empty_class").mkdir()
    (tmp_path / "data" / "train" / "empty_class" / "notes.txt").write_text("not an image")
    rc, _, err = run_cli(train_argv(tmp_path / "data", tmp_path / "run"), capsys)
    assert_one_line(rc, err, "empty_class", "remove the empty class folder or add images to it")


def test_batch_larger_than_dataset(image_root, tmp_path, capsys):
    rc, _, err = run_cli(train_argv(image_root, tmp_path / "run", "--batch-size", "16", "--queue-size", "32"),
                         capsys)
    # the engine names the setting; each command line shows its own flag
    assert_one_line(rc, err, "--batch-size 16 is larger than the dataset (8 images in", "use --batch-size 4")


# ------------------------------------------------------------------------------------------ flags and config


def test_queue_not_a_multiple_of_the_batch(image_root, tmp_path, capsys):
    rc, _, err = run_cli(train_argv(image_root, tmp_path / "run", "--queue-size", "10"), capsys)
    assert_one_line(rc, err, "--queue-size 10 must be a multiple of the global --batch-size 4",
                    "e.g. --queue-size 8")
    assert not (tmp_path / "run").exists()  # checked before anything is built or written


@pytest.mark.parametrize("argv, messages", [
    (["--arch", "resnet99"], ["argument --arch: invalid choice: 'resnet99'"]),
    (["--set", "arch=resnet99"], ["unknown arch 'resnet99' (--arch); choose from resnet18, resnet34, resnet50"]),
    (["--method", "simclr"], ["argument --method: invalid choice: 'simclr'"]),
    (["--set", "method=simclr"], ["unknown method 'simclr' (--method); choose from isd, isd-plus, byol, moco"]),
    (["--recipe", "nope"], ["unknown recipe 'nope' (--recipe); available: byol-r18-cifar10, byol-r18-fmnist, byol-r18-imagenet", "isd recipes"]),
    (["--frobnicate"], ["unrecognized arguments: --frobnicate"]),
    (["--set", "frobnicate=1"], ["unknown config key 'frobnicate' in --set"]),
    (["--epochs", "ten"], ["argument --epochs: invalid int value: 'ten'"]),
    (["--augmentation", "weak"], ["bad --augmentation 'weak'"]),
])
def test_bad_flags(argv, messages, image_root, tmp_path, capsys):
    rc, _, err = run_cli(train_argv(image_root, tmp_path / "run", *argv), capsys)
    assert_one_line(rc, err, *messages)


def test_unknown_subcommand(capsys):
    rc, _, err = run_cli(["frobnicate"], capsys)
    assert_one_line(rc, err, "invalid choice: 'frobnicate'")


@pytest.mark.parametrize("argv, message", [
    (["--arch", "resnet99"], "train_isd.py: error: unknown arch 'resnet99' (--arch)"),
    (["--frobnicate"], "train_isd.py: error: unrecognized arguments: --frobnicate"),
    (["--queue_size", "10"], "--queue_size 10 must be a multiple of the global --batch_size 4"),
    (["--augmentation", "weak-strong"], "bad --augmentation 'weak-strong'"),
])
def test_original_script_bad_flags(argv, message, image_root, tmp_path, capsys):
    base = [image_root, "--batch_size", "4", "--queue_size", "8", "--num_workers", "0", "--device", "cpu",
            "--checkpoint_path", tmp_path / "run"]
    rc, _, err = run_cli([*base, *argv], capsys, entry=lambda a: legacy_main("train_isd.py", a))
    assert_one_line(rc, err, message)


def test_original_script_missing_folder_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "train_isd.py", str(tmp_path / "nowhere"), "--checkpoint_path",
                           str(tmp_path / "run"), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert_one_line(proc.returncode, proc.stderr, "train_isd.py: error: data folder", "does not exist")


# ------------------------------------------------------------------------------------------ run folder, resume


def test_run_folder_under_a_file(image_root, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    rc, _, err = run_cli(train_argv(image_root, tmp_path / "afile" / "run"), capsys)
    assert_one_line(rc, err, "afile/run is not writable", "pass a writable --run-dir")


def test_run_folder_is_a_file(image_root, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    rc, _, err = run_cli(train_argv(image_root, tmp_path / "afile"), capsys)
    assert_one_line(rc, err, "afile is not writable")


@pytest.mark.parametrize("argv, message", [
    (["--method", "byol"], "was trained with --method isd, not byol: resume with --method isd"),
    (["--arch", "resnet34"], "holds a resnet18, not a resnet34: resume with --arch resnet18"),
    (["--set", "width=16"], "does not fit this model"),
    (["--queue-size", "16"], "does not fit this model"),
])
def test_resume_a_checkpoint_of_another_model(argv, message, isd_run, image_root, tmp_path, capsys):
    ckpt = isd_run / "ckpt_last.pth"
    rc, _, err = run_cli(train_argv(image_root, tmp_path / "run", "--epochs", "2", "--resume", ckpt, *argv), capsys)
    assert_one_line(rc, err, str(ckpt), message)


def test_resume_missing_or_corrupt_checkpoint(image_root, tmp_path, capsys):
    rc, _, err = run_cli(train_argv(image_root, tmp_path / "run", "--resume", tmp_path / "none.pth"), capsys)
    assert_one_line(rc, err, "none.pth does not exist (--resume)")
    (tmp_path / "bad.pth").write_bytes(b"\x00garbage")
    rc, _, err = run_cli(train_argv(image_root, tmp_path / "run", "--resume", tmp_path / "bad.pth"), capsys)
    assert_one_line(rc, err, "bad.pth cannot be read", "resume from an earlier checkpoint", "--resume auto")


# ------------------------------------------------------------------------------------------ unreadable images


@pytest.fixture()
def folder_with_bad_image(tmp_path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    write_image_folder(data / "train", classes=2, per_class=4, ext="jpg")
    bad = data / "train" / "class1" / "2.jpg"
    bad.write_bytes(b"this is not a JPEG" * 10)  # 8 files, every one read in the 2 steps of an epoch
    truncated = data / "train" / "class0" / "3.jpg"
    truncated.write_bytes(truncated.read_bytes()[:40])  # a header, then nothing
    return data, bad


def test_unreadable_images_are_skipped_and_listed(folder_with_bad_image, tmp_path, capsys):
    data, bad = folder_with_bad_image
    run_dir = tmp_path / "run"
    rc, out, err = run_cli(train_argv(data, run_dir, "--set", "max_bad_fraction=0.5"), capsys)
    assert rc == 0, err
    assert (run_dir / "ckpt_epoch_1.pth").is_file()
    listed = (run_dir / "bad_files.txt").read_text().splitlines()
    assert f"epoch 1\t{bad}" in listed
    assert f"epoch 1\t{data / 'train' / 'class0' / '3.jpg'}" in listed and len(listed) == 2
    assert "2 unreadable image(s) skipped" in out + err


def test_too_many_unreadable_images_stop_the_run(folder_with_bad_image, tmp_path, capsys):
    data, bad = folder_with_bad_image
    rc, _, err = run_cli(train_argv(data, tmp_path / "run"), capsys)  # default max_bad_fraction 0.01
    assert rc == 2
    errors = [line for line in err.splitlines() if line.startswith("isd train: error:")]
    assert len(errors) == 1 and "2 of 8 images read in epoch 1 were unreadable" in errors[0]
    assert "max_bad_fraction=0.01" in errors[0] and "Traceback" not in err
    assert str(bad) in (tmp_path / "run" / "bad_files.txt").read_text()


# ------------------------------------------------------------------------------------------ edge cases


def test_queue_as_small_as_the_batch_trains(image_root, tmp_path, capsys):
    """K = B = 4 is a valid config (K % B == 0); the purity diagnostic (top-5) must not crash on it."""
    rc, _, err = run_cli(train_argv(image_root, tmp_path / "run", "--queue-size", "4"), capsys)
    assert rc == 0, err
    assert (tmp_path / "run" / "ckpt_epoch_1.pth").is_file()


def test_resume_an_original_code_checkpoint_of_another_arch(image_root, tmp_path, capsys):
    """The original scripts store `opt` as an argparse.Namespace: a mismatch is one line, not a traceback."""
    import argparse

    import torch

    path = tmp_path / "ckpt_epoch_200.pth"
    torch.save({"opt": argparse.Namespace(arch="resnet50", learning_rate=0.05), "state_dict": {},
                "optimizer": {}, "epoch": 200}, path)
    rc, _, err = run_cli(train_argv(image_root, tmp_path / "run", "--resume", path), capsys)
    assert_one_line(rc, err, str(path), "holds a resnet50, not a resnet18")


def test_resume_a_checkpoint_without_optimizer_state(isd_run, image_root, tmp_path, capsys):
    """A weights-only checkpoint (no `optimizer`) cannot continue a run: say so in one line."""
    import torch

    state = torch.load(isd_run / "ckpt_last.pth", weights_only=False)
    path = tmp_path / "weights_only.pth"
    torch.save({k: v for k, v in state.items() if k not in ("optimizer", "rng")}, path)
    rc, _, err = run_cli(train_argv(image_root, tmp_path / "run", "--epochs", "2", "--resume", path), capsys)
    assert_one_line(rc, err, str(path), "optimizer")
