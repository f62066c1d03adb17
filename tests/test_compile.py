"""`compile`: the networks and the views' pixel work run through torch.compile, and training computes the same
losses as the eager step."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

import isd.train.loop as loop
from conftest import single_thread, tiny_values
from isd import checkpoint as ck
from isd.config import build_config
from isd.data.batch_augment import BatchAugment
from isd.data.batches import batches_of
from isd.methods import method_from_config
from isd.train.runlog import RunLog


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def train_tiny(data: Path, run_dir: Path, **extra) -> loop.Setup:
    """fp32: bf16 autocast (amp auto, on a CPU with native bf16) rounds compiled and eager kernels apart by more
    than these tolerances."""
    values = tiny_values(data, run_dir, epochs=1, num_workers=0, amp="off", **extra)
    with single_thread():
        return loop.train(build_config(None, values), log=lambda _: None)


def check_same_as_eager(image_root: Path, tmp_path: Path, compile_mode: str, rel: float,
                        method: str = "isd") -> loop.Setup:
    """The first step (same weights, same batch) to 1e-5; the later ones to `rel`, as rounding compounds.
    The views are made by the device pipeline (on the CPU here), whose pixel work is compiled too."""
    from torch._dynamo.utils import counters

    train_tiny(image_root, tmp_path / "eager", data_pipeline="device", method=method)
    torch._dynamo.reset()
    counters.clear()
    setup = train_tiny(image_root, tmp_path / "compiled", compile=compile_mode, data_pipeline="device", method=method)
    # student, predictor and teacher, and the views' pixel work (one graph for two views of one recipe), each ran
    # as a compiled graph
    assert counters["stats"]["unique_graphs"] >= 4
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert len(eager) == len(compiled) >= 2
    assert compiled[0] == pytest.approx(eager[0], rel=1e-5)
    assert compiled == pytest.approx(eager, rel=rel)
    rows = [json.loads(line) for line in (tmp_path / "compiled" / "log.jsonl").read_text().splitlines()]
    warm_up = [r for r in rows if r["kind"] == "compile"]
    assert len(warm_up) == 1 and warm_up[0]["first_step_seconds"] > 0  # reported apart from the images/s
    return setup


def test_compiled_networks_train_with_the_eager_losses(image_root, tmp_path, monkeypatch):
    """The compiled graphs (captured by dynamo, differentiated by AOTAutograd; the aot_eager backend skips only
    inductor's code generation, which the slow test below covers) give the eager step's losses, and the
    checkpoint keeps the plain keys: it loads into an uncompiled model."""
    monkeypatch.setattr(loop, "compile_networks", functools.partial(loop.compile_networks, backend="aot_eager"))
    monkeypatch.setattr(BatchAugment, "compile_pixels", functools.partialmethod(BatchAugment.compile_pixels,
                                                                                backend="aot_eager"))
    setup = check_same_as_eager(image_root, tmp_path, "default", rel=1e-5)
    state = ck.read(tmp_path / "compiled" / "ckpt_last.pth")
    plain = method_from_config(setup.cfg, stem="small")
    plain.load_state_dict(ck.our_layout(ck.raw_model_state(state)))  # strict: the same keys as an eager run's
    assert not any("_orig_mod" in key for key in ck.raw_model_state(state))


@pytest.mark.parametrize("channels, recipe", [(1, "strong"), (3, "strong"), (3, "weak"), (3, "none")])
def test_compiled_pixel_work_makes_the_eager_views(channels, recipe):
    """The draws stay eager and the same; the compiled pixel work (aot_eager: dynamo's graph, without inductor's
    code generation) gives the eager views to the bit, for a batch in memory and for a list of decoded files, one
    view at a time or both views as one batch."""
    eager = BatchAugment(recipe, 24, [0.5] * channels, [0.25] * channels)
    compiled = BatchAugment(recipe, 24, [0.5] * channels, [0.25] * channels)
    compiled.compile_pixels(backend="aot_eager")
    batch = torch.randint(0, 256, (16, channels, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    files = [batch[i, :, : 20 + i, : 30 - i] for i in range(16)]
    for seed, views in [(0, 1), (1, 1), (2, 2)]:
        assert torch.equal(compiled(batch, torch.Generator().manual_seed(seed), views=views),
                           eager(batch, torch.Generator().manual_seed(seed), views=views))
        crops = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
        assert torch.equal(compiled(files, torch.Generator().manual_seed(seed), crops[0], views),
                           eager(files, torch.Generator().manual_seed(seed), crops[1], views))


@pytest.mark.slow
def test_inductor_compiled_training_has_the_eager_losses(image_root, tmp_path):
    # BYOL: ISD's sharp similarity distributions (temperatures 0.02/0.01 over a queue of 8) turn inductor's
    # last-bit rounding into ~1% by the second step on this tiny model; BYOL's loss is smooth
    check_same_as_eager(image_root, tmp_path, "default", rel=1e-3, method="byol")


def test_compile_modes_are_checked():
    from isd.errors import SettingError

    with pytest.raises(SettingError, match="compile"):
        build_config(None, {"data": "x", "compile": "fast"})


@pytest.mark.parametrize("method, augmentation, views", [("isd", "strong/strong", 1), ("isd-plus", "weak/strong", 2)])
def test_compiled_training_never_recompiles_nor_breaks_its_graphs(method, augmentation, views, tmp_path, monkeypatch):
    """A graph break or a recompilation per step (a guard on a changing Python value) would run a compiled step
    partly eager, and `reduce-overhead`'s CUDA graphs would be captured again and again: after the first step
    no new graph is made, through a second epoch (a new learning rate), and dynamo breaks none."""
    from torch._dynamo.utils import counters

    from test_step_syncs import rgb_source

    monkeypatch.setattr(loop, "load_source", rgb_source)
    monkeypatch.setattr(loop, "compile_networks", functools.partial(loop.compile_networks, backend="aot_eager"))
    monkeypatch.setattr(BatchAugment, "compile_pixels", functools.partialmethod(BatchAugment.compile_pixels,
                                                                                backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()
    values = tiny_values(tmp_path, tmp_path / "run", method=method, augmentation=augmentation, compile="default",
                         amp="off", epochs=2, schedule="cos", print_freq=100)
    with single_thread():
        setup = loop.build(build_config(None, values), log=lambda _: None)
        loader = batches_of(setup.source).two_views(setup.cfg, setup.size, setup.device)
        runner = loop.EpochRunner(setup, setup.model, loader, loader.steps_per_epoch(), RunLog(setup.run_dir, False))
        runner.steps = 1
        runner(1, 0)
        first = counters["stats"]["unique_graphs"]
        runner.steps = loader.steps_per_epoch()
        runner(1, 1)
        runner(2, 0)
    # the student, predictor and teacher, and one graph per distinct view recipe
    assert first == 3 + views
    assert counters["stats"]["unique_graphs"] == first
    assert not counters["graph_break"], dict(counters["graph_break"])
