"""CIFAR-10/100 as data: torchvision's batch files, a folder in CIFAR's layout held in memory (decoded once, cached),
long-tailed subsets, and the CIFAR-10 benchmarks' evaluation, end to end on tiny sets of the tests' own."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, single_thread, write_image_folder
from isd.cli.main import main
from isd.data import memory
from isd.data.sources import SMALL_SETS, load_source
from isd.data.splits import head_classes, long_tail_counts, long_tail_subset
from isd.errors import SettingError, UsageError

CLASSES = ["airplane", "bird", "cat"]


def cifar_folder(root: Path, train: int = 24, test: int = 6, ext: str = "jpg") -> Path:
    """root/train/<class>/<i>.jpg and root/test/<class>/<i>.jpg: 32 px RGB, one brighter channel per class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
                img[..., c] += np.uint8(100)
                Image.fromarray(img).save(folder / f"{i:04d}.{ext}")
    return root


def batch_files(root: Path, per_batch: int = 6, test: int = 6) -> Path:
    """torchvision's cifar-10-batches-py with five tiny training batches, a test batch and the meta file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [i % 3 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CLASSES}))
    return root


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    return cifar_folder(tmp_path_factory.mktemp("cifar"), train=48)  # 144 images: the smoke budget's batch of 128


# ------------------------------------------------------------------------------------------ sources


def test_a_folder_in_cifar_layout_is_held_in_memory_with_cifar_statistics(cifar_root):
    train = load_source("cifar10", str(cifar_root), "train")
    test = load_source("cifar10", str(cifar_root), "val")  # no val/: its test/
    assert train.images is not None and train.images.shape == (144, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images is not None and len(test) == 18 and train.classes == CLASSES == test.classes
    assert (train.mean, train.std) == SMALL_SETS["cifar10"] and train.native_size == 32
    # pixel for pixel what PIL decodes, in the listing's order
    first = np.asarray(Image.open(cifar_root / "train" / "airplane" / "0000.jpg").convert("RGB"))
    assert torch.equal(train.images[0], torch.from_numpy(first.copy()).permute(2, 0, 1))
    assert train.targets.tolist() == [0] * 48 + [1] * 48 + [2] * 48


def test_a_val_folder_is_preferred_to_test(tmp_path):
    root = cifar_folder(tmp_path / "data", train=2, test=2)
    write_image_folder(root / "val", classes=3, per_class=1, size=32, ext="png")
    assert len(load_source("cifar10", str(root), "val")) == 3


def test_torchvision_batch_files_are_read(tmp_path):
    root = batch_files(tmp_path)
    train, test = load_source("cifar10", str(root), "train"), load_source("cifar10", str(root), "val")
    assert train.images is not None and train.images.shape == (30, 3, 32, 32) and len(test) == 6
    assert train.classes == CLASSES and train.targets.tolist()[:4] == [0, 1, 2, 0]
    raw = pickle.loads((root / "cifar-10-batches-py" / "data_batch_1").read_bytes())["data"][0]
    assert torch.equal(train.images[0].flatten(), torch.from_numpy(raw))  # CIFAR's channel-major rows
    assert len(load_source("cifar10", str(root / "cifar-10-batches-py"), "train")) == 30  # DATA = the batch folder


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_a_batch_file_that_would_run_code_is_refused(tmp_path, monkeypatch):
    root = batch_files(tmp_path / "data")
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({"data": Payload(), "labels": []}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="data_batch_3 is not a CIFAR batch file .*posix.system is not allowed"):
        load_source("cifar10", str(root), "train")
    assert not (tmp_path / "pwned.txt").exists()


def test_missing_cifar_names_both_layouts_and_download(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="cifar-10-batches-py, or a folder with train/<class>/<image>.*--download"):
        load_source("cifar10", str(tmp_path), "train")

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("isd.data.sources.CIFAR10", offline)
    with pytest.raises(UsageError, match=r"the download into .* failed \(OSError\); without internet, put"):
        load_source("cifar10", str(tmp_path), "train", download=True)


def test_the_decoded_folder_is_cached_and_decoded_again_when_a_file_changes(tmp_path, monkeypatch):
    root = cifar_folder(tmp_path / "data", train=4, test=2)
    first = load_source("cifar10", str(root), "train")
    decoded = []
    real = memory.decode_files
    monkeypatch.setattr(memory, "decode_files", lambda *a: decoded.append(a) or real(*a))
    again = load_source("cifar10", str(root), "train")
    assert decoded == [] and torch.equal(first.images, again.images)  # read back from the cache
    path = root / "train" / "bird" / "0001.jpg"
    Image.fromarray(np.full((32, 32, 3), 7, dtype=np.uint8)).save(path)
    changed = load_source("cifar10", str(root), "train")
    assert len(decoded) == 1 and changed.images is not None and int(changed.images[5].float().mean()) == 7


def test_auto_holds_small_folders_and_leaves_large_or_mixed_ones_as_files(tmp_path, caplog):
    small, large, mixed = tmp_path / "small", tmp_path / "large", tmp_path / "mixed"
    write_image_folder(small / "train", classes=2, per_class=3, size=48)
    write_image_folder(large / "train", classes=2, per_class=3, size=80)
    write_image_folder(mixed / "train", classes=2, per_class=30, size=32)  # more files than auto samples
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(mixed / "train" / "class1" / "9.png")
    held = load_source("folder", str(small), "train")
    assert held.images is not None and held.native_size == 48 and held.files == []
    assert load_source("folder", str(small), "train", in_memory="off").images is None
    assert load_source("folder", str(large), "train").images is None  # above 64 px: the file pipelines
    assert load_source("folder", str(large), "train", in_memory="on").native_size == 80
    with caplog.at_level("WARNING"):
        assert load_source("folder", str(mixed), "train").images is None
    assert "9.png is 40x40, not 32x32" in caplog.text and "stay files" in caplog.text
    with pytest.raises(SettingError, match="in_memory.*=on needs images of one size: .*9.png is 40x40"):
        load_source("folder", str(mixed), "train", in_memory="on")


def test_unreadable_files_are_left_out_for_training_and_stop_evaluation(tmp_path, capsys):
    root = cifar_folder(tmp_path / "data", train=8, test=2)
    (root / "train" / "cat" / "0003.jpg").write_bytes(b"not a jpeg")
    source = load_source("cifar10", str(root), "train")
    assert len(source) == 23 and source.bad_files == [str(root / "train" / "cat" / "0003.jpg")]
    run = tmp_path / "run"
    argv = ["train", str(root), "--dataset", "cifar10", "--run-dir", str(run), "--epochs", "1", "--batch-size", "8",
            "--queue-size", "16", "--set", "width=8", "--set", "max_bad_fraction=0.1", "--device", "cpu"]
    with single_thread():
        assert main(argv) == 0
    assert (run / "bad_files.txt").read_text() == f"epoch 0\t{root / 'train' / 'cat' / '0003.jpg'}\n"
    capsys.readouterr()
    assert main(["knn", str(run / "ckpt_last.pth"), str(root), "--dataset", "cifar10", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "0003.jpg cannot be read" in err and "fix or remove it" in err
    assert main(argv[:-2] + ["--set", "max_bad_fraction=0.01", "--run-dir", str(tmp_path / "run2")]) == 2
    assert "1 of the 24 images of cifar10" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ long tail


def test_the_long_tail_has_cifar10_lt_counts():
    counts = long_tail_counts(5000, 10, 100)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50] and sum(counts) == 12406
    assert head_classes(10, 100) == [0, 1, 2, 3, 4]  # at least 5000 / sqrt(100) = 500 images
    assert long_tail_counts(500, 100, 10)[-1] == 50 and head_classes(3, 4) == [0, 1]


def test_long_tail_draws_keep_the_counts_and_pick_other_images():
    targets = torch.arange(10).repeat_interleave(100)
    one, two = long_tail_subset(targets, 10, 10, draw=1), long_tail_subset(targets, 10, 10, draw=2)
    assert torch.bincount(targets[one], minlength=10).tolist() == long_tail_counts(100, 10, 10)
    assert torch.equal(one, long_tail_subset(targets, 10, 10, draw=1)) and not torch.equal(one, two)


def test_a_long_tail_and_common_classes_do_not_mix():
    from isd.config import build_config

    with pytest.raises(SettingError, match="set one of them"):
        build_config("isd-cifar10-cpu", {"imbalance_ratio": 100, "common_classes": 3})
    with pytest.raises(SettingError, match="0 \\(off\\) or >= 1"):
        build_config("isd-cifar10-cpu", {"imbalance_ratio": 0.5})


# ------------------------------------------------------------------------------------------ evaluation


def test_weighted_200nn_at_t01_sums_exp_similarity_over_t_per_class():
    from isd.eval.features import Encoded
    from isd.eval.knn import knn_of

    # one query; three bank vectors: two of class 1 at cosine 0.0 and 0.1, one of class 0 at cosine 0.3
    bank = torch.tensor([[0.0, 1.0], [0.1, (1 - 0.01) ** 0.5], [0.3, (1 - 0.09) ** 0.5]])
    query = torch.tensor([[1.0, 0.0]])
    enc = Encoded(bank, torch.tensor([1, 1, 0]), query, torch.tensor([1]))
    result = knn_of(enc, 2, ks=(1,), weighted_k=3, temperature=1.0, more_temperatures=(0.1,))
    assert result["weighted"]["acc"] == 100.0  # e^0 + e^0.1 = 2.105 > e^0.3 = 1.350
    assert result["weighted_at"][0.1] == 0.0  # e^0 + e^1 = 3.718 < e^3 = 20.09


def test_the_raw_pixel_floor_standardises_each_channel(cifar_root):
    from isd.data.batches import batches_of

    source = load_source("cifar10", str(cifar_root), "train")
    pixels, _ = batches_of(source).pixels()
    mean, std = SMALL_SETS["cifar10"]
    expected = (source.images[1, 2, 3, 4].item() / 255 - mean[2]) / std[2]
    assert pixels[1].view(3, 32, 32)[2, 3, 4].item() == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------------ end to end


TINY_RUN = ["--set", "width=8", "--set", "amp=off", "--set", "num_workers=0", "--set", "print_freq=1"]


@pytest.mark.parametrize("layout", ["folder", "batches"])
def test_train_knn_linear_on_cifar10(tmp_path, cifar_root, capsys, layout):
    data = cifar_root if layout == "folder" else batch_files(tmp_path / "tv", per_batch=12, test=9)
    run = tmp_path / "run"
    argv = ["train", str(data), "--recipe", "isd-cifar10-cpu", "--run-dir", str(run), "--epochs", "1",
            "--batch-size", "12", "--queue-size", "24", "--device", "cpu", "--eval-every", "1", *TINY_RUN]
    with single_thread():
        assert main(argv) == 0
        assert main(["knn", str(run / "ckpt_last.pth"), str(data), "--dataset", "cifar10", "--weighted",
                     "--temperature", "0.1", "--device", "cpu", "-k", "1", "5"]) == 0
        assert main(["linear", str(run / "ckpt_last.pth"), str(data), "--dataset", "cifar10", "--fast",
                     "--epochs", "2", "--lr-schedule", "1", "--device", "cpu"]) == 0
    knn = json.loads((run / "knn.json").read_text())
    assert knn["weighted"]["T"] == 0.1 and knn["counts"]["classes"] == 3 and knn["image_size"] == 32
    assert json.loads((run / "linear.json").read_text())["num_train"] == knn["counts"]["train"]
    assert json.loads((run / "knn_history.json").read_text())[-1]["epoch"] == 1


def test_an_experiment_on_cifar10_records_the_benchmarks_weighted_knn(tmp_path, cifar_root):
    out = tmp_path / "exp"
    argv = ["experiment", "cifar10-balanced", str(cifar_root), "--budget", "smoke", "--device", "cpu", "--out",
            str(out), "--only", "method=isd,method=raw-pixels"]
    with single_thread():
        assert main(argv) == 0
    isd = json.loads((out / "isd-seed0" / "result.json").read_text())
    pixels = json.loads((out / "raw-pixels-seed0" / "result.json").read_text())
    assert {"knn1", "knn20", "knn200", "knn_weighted", "linear"} <= set(isd["metrics"])
    assert isd["eval"]["knn200_T"] == 0.1 and pixels["eval"]["pixels"] == "standardised per channel"
    assert "| method | n | 1-NN | 20-NN | weighted 200-NN | linear |" in (out / "report.md").read_text()


def test_a_long_tailed_experiment_reports_the_tail(tmp_path, cifar_root):
    out = tmp_path / "exp"
    argv = ["experiment", "cifar10-lt", str(cifar_root), "--budget", "smoke", "--device", "cpu", "--out", str(out),
            "--only", "draw=1", "--no-report"]
    with single_thread():
        assert main(argv) == 0
    result = json.loads((out / "isd-draw1-seed0" / "result.json").read_text())
    assert result["common_classes"] == [0, 1] and result["rare_classes"] == [2]  # 3 classes at ratio 100
    assert result["train"]["images"] == sum(long_tail_counts(48, 3, 100))


def test_the_cifar10_demo_prints_its_table_beside_the_floors_on_one_screen(tmp_path, cifar_root, capsys):
    argv = ["demo", str(cifar_root), "--dataset", "cifar10", "--run-dir", str(tmp_path), "--set", "epochs=1",
            "--set", "batch_size=12", "--set", "queue_size=24", *TINY_RUN]
    with single_thread():
        assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["dataset"] == "cifar10" and report["recipe"] == "isd-cifar10-cpu"
    assert set(report["isd"]) == {"1-NN", "20-NN", "weighted 200-NN"}
    after = out.split("CIFAR-10 test set", 1)[1]
    assert f"{report['isd']['weighted 200-NN']:15.2f}%" in after and "raw pixels" in after
    assert str(tmp_path / "curves.png") in after and len(after.splitlines()) < 25


def test_isd_train_cifar10_from_a_fresh_process_explains_a_missing_folder(tmp_path):
    done = subprocess.run([sys.executable, "-m", "isd", "train", str(tmp_path), "--dataset", "cifar10"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "cifar10 not found in" in done.stderr and "--download" in done.stderr
