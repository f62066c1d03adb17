"""`compile`: the networks run through torch.compile, and training computes the same losses as the eager step."""

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
from isd.methods import build_method


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def train_tiny(data: Path, run_dir: Path, **extra) -> loop.Setup:
    with single_thread():
        return loop.train(build_config(None, tiny_values(data, run_dir, epochs=1, num_workers=0, **extra)),
                          log=lambda _: None)


def check_same_as_eager(image_root: Path, tmp_path: Path, compile_mode: str, rel: float) -> loop.Setup:
    """The first step (same weights, same batch) to 1e-5; the later ones to `rel`, as rounding compounds."""
    from torch._dynamo.utils import counters

    train_tiny(image_root, tmp_path / "eager")
    torch._dynamo.reset()
    counters.clear()
    setup = train_tiny(image_root, tmp_path / "compiled", compile=compile_mode)
    assert counters["stats"]["unique_graphs"] >= 3  # student, predictor and teacher each ran as a compiled graph
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
    setup = check_same_as_eager(image_root, tmp_path, "default", rel=1e-5)
    state = ck.read(tmp_path / "compiled" / "ckpt_last.pth")
    plain = build_method(setup.cfg, stem="small")
    plain.load_state_dict(ck.our_layout(ck.raw_model_state(state)))  # strict: the same keys as an eager run's
    assert not any("_orig_mod" in key for key in ck.raw_model_state(state))


@pytest.mark.slow
def test_inductor_compiled_training_has_the_eager_losses(image_root, tmp_path):
    check_same_as_eager(image_root, tmp_path, "default", rel=1e-3)


def test_compile_modes_are_checked():
    from isd.errors import SettingError

    with pytest.raises(SettingError, match="compile"):
        build_config(None, {"data": "x", "compile": "fast"})
