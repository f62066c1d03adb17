"""A crafted checkpoint cannot run code: every command that reads one refuses it in one line, exit code 2.

The crafted file is a checkpoint in every other respect (a real backbone under `state_dict`), but its `opt`
unpickles by calling `exec`, which would write a marker file. The safe reader must name the file and the
type, and the marker must never appear; `--trust-checkpoint-code` is the explicit opt-out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import isd
from conftest import ROOT, TINY, single_thread, write_image_folder
from isd.cli.main import main
from isd.cli.legacy_eval import main as eval_main
from isd.cli.legacy_train import main as train_main
from isd.nets.backbones import build_backbone


class RunsCode:
    """Unpickles as exec(code): what a malicious checkpoint does."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def crafted(path: Path, marker: Path, legacy_format: bool = False) -> Path:
    state = {f"encoder_q.{k}": v for k, v in build_backbone("resnet18", "small", 8).state_dict().items()}
    payload = RunsCode(f"open({str(marker)!r}, 'w').write('ran')")
    torch.save({"opt": payload, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 1},
               path, _use_new_zipfile_serialization=not legacy_format)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_image_folder(root / "train", classes=2, per_class=4)
    write_image_folder(root / "val", classes=2, per_class=2, seed=3)
    return root


def train_flags(run_dir: Path) -> list[str]:
    return [f"--set={k}={v}" for k, v in TINY.items()] + ["--run-dir", str(run_dir)]


def legacy_train_flags(run_dir: Path) -> list[str]:
    return ["--batch_size", "4", "--queue_size", "8", "--num_workers", "0", "--device", "cpu", "--arch", "resnet18",
            "--checkpoint_path", str(run_dir)]


def resume_auto(ckpt: Path, data: Path, tmp: Path) -> tuple:
    run_dir = tmp / "run"
    run_dir.mkdir()
    ckpt.rename(run_dir / "ckpt_epoch_1.pth")  # the newest (only) checkpoint of the run folder
    return main, ["train", str(data), "--epochs", "2", "--resume", "auto", *train_flags(run_dir)], run_dir / "ckpt_epoch_1.pth"


COMMANDS = {
    "isd export": lambda c, d, t: (main, ["export", str(c), "-o", str(t / "b.pth")], c),
    "isd knn": lambda c, d, t: (main, ["knn", str(c), str(d), "--out", str(t), "--num-workers", "0"], c),
    "isd linear": lambda c, d, t: (main, ["linear", str(c), str(d), "--fast", "--out", str(t)], c),
    "eval_knn.py": lambda c, d, t: (lambda a: eval_main("eval_knn.py", a), [str(d), "--weights", str(c), "--save",
                                                                            str(t), "-j", "0"], c),
    "eval_linear.py": lambda c, d, t: (lambda a: eval_main("eval_linear.py", a), [str(d), "--weights", str(c),
                                                                                  "--save", str(t), "-j", "0"], c),
    "isd train --resume": lambda c, d, t: (main, ["train", str(d), "--epochs", "2", "--resume", str(c),
                                                  *train_flags(t / "run")], c),
    "isd train --resume auto": resume_auto,
    "isd neighbors": lambda c, d, t: (main, ["neighbors", str(c), str(d), "-o", str(t / "n.png")], c),
    "isd clusters": lambda c, d, t: (main, ["clusters", str(c), str(d), "-o", str(t / "c.png")], c),
    **{f"{script} --resume": (lambda script: lambda c, d, t: (
        lambda a: train_main(script, a), [str(d), "--epochs", "2", "--resume", str(c), *legacy_train_flags(t / "run")],
        c))(script) for script in ("train_isd.py", "train_isd_plus.py", "train_byol.py")},
}


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "pre-1.6 format"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_crafted_checkpoint_is_refused_and_runs_nothing(command, legacy_format, data, tmp_path, capsys):
    marker = tmp_path / "marker"
    ckpt = crafted(tmp_path / "evil.pth", marker, legacy_format)
    entry, argv, named = COMMANDS[command](ckpt, data, tmp_path)
    with single_thread():
        rc = entry(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert str(named) in err[0] and "exec" in err[0] and "--trust-checkpoint-code" in err[0]
    assert not marker.exists()


def test_load_backbone_and_torch_hub_refuse_it_too(tmp_path):
    marker = tmp_path / "marker"
    ckpt = crafted(tmp_path / "evil.pth", marker)
    with pytest.raises(isd.errors.UsageError, match=r"evil\.pth holds builtins\.exec") as caught:
        isd.load_backbone(ckpt)
    assert "\n" not in str(caught.value)
    with pytest.raises(isd.errors.UsageError, match="holds builtins.exec"):
        torch.hub.load(str(ROOT), "resnet18", source="local", weights=str(ckpt))
    assert not marker.exists()


def test_refusal_is_one_line_and_exit_2_from_a_real_process(tmp_path):
    marker = tmp_path / "marker"
    ckpt = crafted(tmp_path / "evil.pth", marker)
    proc = subprocess.run([sys.executable, ROOT / "eval_knn.py", "--weights", ckpt, "--save", tmp_path, tmp_path],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"eval_knn.py: error: checkpoint {ckpt} holds builtins.exec")
    assert not marker.exists()


def test_trust_checkpoint_code_is_the_explicit_opt_out(tmp_path, capsys):
    marker = tmp_path / "marker"
    ckpt = crafted(tmp_path / "evil.pth", marker)
    assert main(["export", str(ckpt), "-o", str(tmp_path / "b.pth"), "--trust-checkpoint-code"]) == 0
    assert marker.read_text() == "ran"  # what the flag lets through, and why it is never the default
    net, _ = isd.load_backbone(ckpt, trust_checkpoint_code=True)
    assert torch.equal(torch.load(tmp_path / "b.pth", weights_only=True)["conv1.weight"], net.conv1.weight)
    capsys.readouterr()


def test_what_original_and_own_checkpoints_hold_is_allowed(tmp_path):
    """The allow-list: the original's argparse options, our RNG states (numpy arrays from older versions too)."""
    import argparse
    import random

    import numpy as np

    from isd import checkpoint

    state = {"opt": argparse.Namespace(arch="resnet50", lr_decay_epochs=[90, 120], cos=True),
             "numpy_rng": np.random.get_state(), "python_rng": random.getstate(), "torch_rng": torch.get_rng_state()}
    torch.save(state, tmp_path / "ok.pth")
    loaded = checkpoint.load(tmp_path / "ok.pth")
    assert loaded["opt"] == state["opt"] and np.array_equal(loaded["numpy_rng"][1], state["numpy_rng"][1])
    torch.save({"opt": {"data": Path("/data")}}, tmp_path / "path.pth")  # harmless, but not on the list
    with pytest.raises(checkpoint.UnsafeCheckpoint, match="path.pth holds pathlib.PosixPath"):
        checkpoint.load(tmp_path / "path.pth")


def test_a_corrupt_file_is_unreadable_not_unsafe(tmp_path, capsys):
    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint at all")
    assert main(["export", str(tmp_path / "junk.pth")]) == 2
    err = capsys.readouterr().err
    assert "junk.pth cannot be read (UnpicklingError: Unsupported operand" in err and "trust" not in err
