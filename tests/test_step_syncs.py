"""A training step on an in-memory set neither makes a tensor from Python data nor reads one back to the host.

On a GPU either is a blocking copy, which waits for every kernel queued before it: the host stops running
ahead, and a small-image step, bound by kernel launches, loses the overlap. Here on a CPU the operations that
would copy are seen by name (torch's dispatcher), before any GPU runs them.
"""

from __future__ import annotations

import pytest
import torch

import isd.data.batches as data_batches
import isd.train.loop as loop
from conftest import single_thread, tiny_values
from isd.config import build_config
from isd.data.batches import batches_of, view_augments
from isd.data.sources import IMAGENET_MEAN, IMAGENET_STD, Source
from isd.train.bench import OpCounter
from isd.train.loop import EpochRunner
from isd.train.runlog import RunLog


def rgb_source(*_args, **_kwargs) -> Source:
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return Source("memory", ["a", "b"], torch.tensor([0, 1] * 8), IMAGENET_MEAN, IMAGENET_STD, native_size=32,
                  images=images)


@pytest.mark.parametrize("method", ["isd", "isd-plus", "byol", "moco"])
@pytest.mark.parametrize("one_batch", [False, True])
def test_an_in_memory_step_stays_on_the_device(method, one_batch, tmp_path, monkeypatch):
    """`one_batch`: both views as one batch, as a GPU makes them (`both_views_as_one_batch`)."""
    monkeypatch.setattr(loop, "load_source", rgb_source)
    monkeypatch.setattr(data_batches, "both_views_as_one_batch", lambda device: one_batch)
    values = tiny_values(tmp_path, tmp_path / "run", method=method, augmentation="strong/strong", print_freq=100)
    with single_thread():
        setup = loop.build(build_config(None, values), log=lambda _: None)
        loader = batches_of(setup.source).two_views(setup.cfg, setup.size, setup.device)
        assert loader.pipeline == "memory" and (loader.key_aug is loader.query_aug) == one_batch
        runner = EpochRunner(setup, setup.model, loader, loader.steps_per_epoch(), RunLog(setup.run_dir, False))
        batches = loader.epoch(1)
        runner.step(next(batches), 0)  # the first step builds the optimizer's state and the queue's cursor
        watch = OpCounter()
        with watch:
            for step in (1, 2):
                runner.step(next(batches), step)
    assert watch.round_trips() == 0, dict(watch.counts["all"])


def test_the_views_keep_their_constants_on_the_training_device():
    # mean and std left on the host would be copied to the GPU at every view (`.to(x.device)`)
    cfg = build_config(None, {"data": "x"})
    key, query = view_augments(cfg, 32, rgb_source(), torch.device("meta"))
    assert {key.mean.device.type, key.std.device.type, query.mean.device.type} == {"meta"}
