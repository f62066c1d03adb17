"""LR schedule, config and recipes, the original training commands, checkpoints and exact resume."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import isd.train.loop as loop
from conftest import ROOT, single_thread, tiny_values
from isd.cli.main import main
from isd.config import Config, build_config, recipe_names
from isd.data.sources import IMAGENET_MEAN, IMAGENET_STD, Source
from isd.errors import UsageError
from isd.cli.legacy_train import legacy_parser, legacy_values
from isd.runtime import file_sha256
from isd import checkpoint as ck
from isd.train.loop import train
from isd.train.schedule import learning_rate

pytestmark = pytest.mark.usefixtures("torch_one_thread")

RECIPES = ["byol-r18-cifar10", "byol-r18-fmnist", "byol-r18-imagenet", "compress-cifar10-cpu",
           "compress-r50-r18-imagenet", "isd-cifar10-cpu", "isd-fmnist-demo", "isd-plus-r18-cifar10",
           "isd-plus-r18-fmnist", "isd-plus-r50-imagenet", "isd-r18-cifar10", "isd-r18-fmnist", "isd-r18-imagenet",
           "moco-r18-cifar10", "moco-r18-fmnist", "moco-r18-imagenet", "supervised-r18-cifar10",
           "supervised-r18-fmnist"]


# ------------------------------------------------------------------------------------------ LR schedule


@pytest.mark.parametrize("epoch, expected", [(1, 0.01), (2, 0.01), (140, 0.01), (141, 0.002), (180, 0.002),
                                             (181, 0.0004), (200, 0.0004)])
def test_step_schedule(epoch, expected):
    assert learning_rate(epoch, 0.01, 200, "step", (140, 180), 0.2) == pytest.approx(expected, rel=1e-12)
    # the recipe's values drive the same formula
    cfg = build_config("isd-r18-imagenet", {"data": "x"})
    got = learning_rate(epoch, cfg.lr, cfg.epochs, cfg.schedule, cfg.lr_decay_epochs, cfg.lr_decay_rate)
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("epoch", [1, 2, 50, 101, 200])
def test_cosine_schedule(epoch):
    expected = 0.05 * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / 200))
    assert learning_rate(epoch, 0.05, 200, "cos") == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_cosine_schedule_landmarks():
    assert learning_rate(1, 0.05, 200, "cos") == 0.05
    assert learning_rate(101, 0.05, 200, "cos") == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 100 / 200)))
    assert learning_rate(101, 0.05, 200, "cos") == pytest.approx(0.025)
    assert 0 < learning_rate(200, 0.05, 200, "cos") < 0.05 * 1e-3  # never exactly zero within the run


# ------------------------------------------------------------------------------------------ config and recipes


def test_recipe_values_match_spec():
    isd = build_config("isd-r18-imagenet", {"data": "x"})
    assert (isd.method, isd.arch, isd.lr, isd.schedule, isd.ema, isd.queue_size, isd.temp_student, isd.temp_teacher) == \
        ("isd", "resnet18", 0.01, "step", 0.999, 128000, 0.02, None)
    assert isd.lr_decay_epochs == (140, 180) and isd.epochs == 200 and isd.batch_size == 256
    assert isd.augmentation == "strong/strong" and isd.recipe == "isd-r18-imagenet"
    plus = build_config("isd-plus-r50-imagenet", {"data": "x"})
    assert (plus.method, plus.arch, plus.lr, plus.schedule, plus.ema, plus.temp_student, plus.temp_teacher) == \
        ("isd-plus", "resnet50", 0.05, "cos", 0.99, 0.1, 0.01)
    assert (plus.key_aug, plus.query_aug) == ("weak", "strong")
    byol = build_config("byol-r18-imagenet", {"data": "x"})
    assert (byol.method, byol.lr, byol.schedule, byol.ema, byol.augmentation) == (
        "byol", 0.05, "cos", 0.99, "strong/strong")


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_builds(name):
    teacher = {"teacher": "torchvision:resnet50"} if name.startswith("compress") else {}  # a distillation's
    cfg = build_config(name, {"data": "x", **teacher})
    assert isinstance(cfg, Config) and cfg.recipe == name


def test_set_overrides_coerce_types_and_win_over_flags():
    cfg = build_config("isd-r18-imagenet", {"data": "x", "epochs": 7, "lr": 0.3},
                       ["epochs=3", "ema=0.5", "lr_decay_epochs=10, 20", "deterministic=yes", "temp_t=none",
                        "crop_scale=0.5,1", "image_size=32", "arch=resnet50", "subset_file=", "queue-size=512"])
    assert cfg.epochs == 3 and type(cfg.epochs) is int  # --set beats the flag value
    assert cfg.lr == 0.3  # the flag beats the recipe (0.01)
    assert cfg.ema == 0.5 and type(cfg.ema) is float
    assert cfg.lr_decay_epochs == (10, 20) and cfg.crop_scale == (0.5, 1.0)
    assert cfg.deterministic is True and cfg.temp_teacher is None and cfg.image_size == 32
    assert cfg.arch == "resnet50" and cfg.subset_file is None and cfg.queue_size == 512
    assert build_config(None, {"data": "x"}, ["temp_student=1e-2"]).temp_student == 0.01


@pytest.mark.parametrize("method, given, expected", [
    ("isd", {"temp": 0.07}, {"temp_student": 0.07, "temp_teacher": None, "temp_infonce": 0.2}),
    ("isd-plus", {"temp": 0.1, "temp_t": 0.01}, {"temp_student": 0.1, "temp_teacher": 0.01}),
    ("moco", {"temp": 0.3}, {"temp_student": 0.02, "temp_infonce": 0.3}),
    ("byol", {"temp": 0.5}, {"temp_student": 0.5, "temp_infonce": 0.2}),
])
def test_old_temperature_names_are_aliases_of_each_methods_own(method, given, expected):
    """`temp` was every method's one temperature and `temp_t` the teacher's: as values, recipe keys, --set keys
    and in the `opt` of older checkpoints they still mean what they meant for that method."""
    from isd.config import config_from_dict

    for cfg in (build_config(None, {"data": "x", "method": method, **given}),
                build_config(None, {"data": "x"}, [f"method={method}", *(f"{k}={v}" for k, v in given.items())]),
                config_from_dict({"data": "x", **given, "method": method})):  # the method after the alias
        assert {k: getattr(cfg, k) for k in expected} == expected
        assert "temp" not in cfg.to_dict() and "temp_t" not in cfg.to_dict()


@pytest.mark.parametrize("overrides, message", [
    (["foo=1"], "unknown config key 'foo' in set"),
    (["epochs=abc"], "bad value 'abc' for 'epochs': expected an integer"),
    (["epochs=2.5"], "bad value '2.5' for 'epochs': expected an integer"),
    (["deterministic=maybe"], "bad value 'maybe' for 'deterministic': expected true or false"),
    (["lr_decay_epochs=a,b"], "expected a comma-separated list of numbers"),
    (["epochs"], "set expects key=value, got 'epochs'"),
    (["epochs="], "bad value '' for 'epochs': expected an integer"),
    (["augmentation=weak"], "bad augmentation 'weak'"),
])
def test_bad_overrides_are_rejected_with_the_key(overrides, message):
    with pytest.raises(UsageError, match=None) as err:
        build_config(None, {"data": "x"}, overrides)
    assert message in str(err.value)


def test_unknown_key_in_values_is_rejected():
    with pytest.raises(UsageError) as err:
        build_config(None, {"data": "x", "learning_rate": 0.1})
    assert "unknown config key 'learning_rate' in the given values" in str(err.value)


def test_isd_recipes_lists_them_all(capsys):
    assert sorted(recipe_names()) == RECIPES
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(RECIPES) and [line.split()[0] for line in lines] == RECIPES
    assert all(len(line.split()) > 1 for line in lines)  # each with its description
    assert main(["recipes", "isd-plus-r50-imagenet"]) == 0
    out = capsys.readouterr().out
    assert "temp_teacher: 0.01" in out and "method: isd-plus" in out


def test_config_yaml_round_trips(tmp_path):
    from isd.config import config_from_dict, save_yaml
    import yaml

    cfg = build_config("isd-plus-r50-imagenet", {"data": "x"}, ["lr_decay_epochs=3,4"])
    save_yaml(cfg, tmp_path / "c.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text()))
    assert again == cfg


# ------------------------------------------------------------------------------------------ original flags


def legacy_config(script: str, argv: list[str]) -> Config:
    from isd.cli.legacy_train import SCRIPTS

    parser = legacy_parser(script)
    return build_config(SCRIPTS[script][0], legacy_values(parser.parse_args(argv), parser))


def test_original_flags_map_onto_config():
    cfg = legacy_config("train_isd_plus.py", ["D", "--learning_rate", "0.3", "--momentum", "0.5", "--temp_s", "0.2",
                                              "--temp_t", "0.05", "--lr_decay_epochs", "10,20", "--checkpoint_path",
                                              "P", "--arch", "resnet18", "--batch_size", "4", "--queue_size", "8"])
    assert (cfg.lr, cfg.ema, cfg.temp_student, cfg.temp_teacher, cfg.lr_decay_epochs, cfg.run_dir, cfg.data) == \
        (0.3, 0.5, 0.2, 0.05, (10, 20), "P", "D")
    isd = legacy_config("train_isd.py", ["D", "--temp", "0.07", "--cos"])
    assert isd.temp_student == 0.07 and isd.temp_teacher is None and isd.schedule == "cos"
    both = legacy_config("train_isd_plus.py", ["D", "--temp", "0.07", "--temp_s", "0.3"])
    assert both.temp_student == 0.3  # --temp_s wins over --temp
    assert legacy_config("train_isd.py", ["D"]).schedule == "step"
    assert legacy_config("train_isd.py", ["D", "--amp", "bf16"]).amp == "bf16"  # isd's own addition


@pytest.mark.parametrize("script, argv, schedule", [
    ("train_isd_plus.py", [], "cos"),  # no schedule flag: the recipe's
    ("train_isd_plus.py", ["--lr_decay_epochs", "90,120"], "step"),
    ("train_isd_plus.py", ["--lr_decay_rate", "0.1"], "step"),
    ("train_isd_plus.py", ["--cos", "--lr_decay_epochs", "90,120"], "cos"),
    ("train_byol.py", [], "cos"),
    ("train_byol.py", ["--lr_decay_epochs", "90,120"], "step"),
    ("train_isd.py", [], "step"),
    ("train_isd.py", ["--cos"], "cos"),
    ("train_isd.py", ["--lr_decay_epochs", "90,120"], "step"),
])
def test_schedule_flags_given_win_over_the_recipe(script, argv, schedule):
    """As in the original scripts: --cos is cosine, a step flag without --cos is steps; neither keeps the recipe."""
    assert legacy_config(script, ["D", *argv]).schedule == schedule


@pytest.mark.parametrize("script", ["train_isd_plus.py", "train_byol.py"])
def test_lr_decay_epochs_without_cos_decays_in_steps(script):
    cfg = legacy_config(script, ["D", "--lr_decay_epochs", "90,120", "--learning_rate", "0.05"])
    lrs = [learning_rate(e, cfg.lr, cfg.epochs, cfg.schedule, cfg.lr_decay_epochs, cfg.lr_decay_rate)
           for e in (1, 90, 91, 120, 121, 200)]
    assert lrs == pytest.approx([0.05, 0.05, 0.01, 0.01, 0.002, 0.002])


@pytest.mark.parametrize("script", ["train_isd.py", "train_isd_plus.py", "train_byol.py"])
def test_weak_strong_spellings_agree(script):
    a = legacy_config(script, ["D", "--weak_strong"])
    b = legacy_config(script, ["D", "--augmentation", "weak/strong"])
    assert a.augmentation == b.augmentation == "weak/strong" and (a.key_aug, a.query_aug) == ("weak", "strong")
    assert legacy_config(script, ["D", "--augmentation", "strong/weak"]).key_aug == "strong"


ORIGINAL_RUNS = [
    ("train_isd.py", [], "isd", "strong/strong"),
    ("train_isd_plus.py", ["--weak_strong"], "isd-plus", "weak/strong"),
    ("train_byol.py", [], "byol", "strong/strong"),
    ("train_byol.py", ["--augmentation", "weak/strong"], "byol", "weak/strong"),
]


@pytest.mark.parametrize("script, extra, method, augmentation", ORIGINAL_RUNS,
                         ids=["isd", "isd_plus-weak_strong", "byol", "byol-augmentation"])
def test_original_command_runs_one_epoch(script, extra, method, augmentation, jpeg_root, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, script, str(jpeg_root), *extra, "--epochs", "1", "--batch_size", "4", "--queue_size",
            "8", "--num_workers", "0", "--arch", "resnet18", "--device", "cpu", "--checkpoint_path", str(out)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out / "ckpt_epoch_1.pth", map_location="cpu", weights_only=False)
    assert {"opt", "state_dict", "optimizer", "epoch"} <= set(ckpt)
    assert ckpt["epoch"] == 1
    state = ckpt["state_dict"]
    assert "encoder_q.layer1.0.conv1.weight" in state and "encoder_k.layer1.0.conv1.weight" in state
    assert state["encoder_q.layer1.0.conv1.weight"].shape == (64, 64, 3, 3)  # full-width torchvision ResNet-18
    assert ckpt["opt"]["method"] == method and ckpt["opt"]["augmentation"] == augmentation
    assert ckpt["opt"]["arch"] == "resnet18" and ckpt["opt"]["queue_size"] == 8
    assert ("queue.queue" in state) == (method != "byol")
    assert (out / "ckpt_last.pth").is_file() and (out / "config.yaml").is_file()
    assert "224px" in proc.stdout + proc.stderr  # the original scripts train at 224 px


# ------------------------------------------------------------------------------------------ resume


def memory_source(*_args, **_kwargs) -> Source:
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)
    return Source("memory", ["a", "b"], torch.tensor([0, 1] * 4), IMAGENET_MEAN, IMAGENET_STD, native_size=32,
                  images=images)


def run(cfg_values: dict, logs: list | None = None):
    with single_thread():
        return train(build_config(None, cfg_values), log=(logs.append if logs is not None else lambda _: None))


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def optimizer_tensors(opt_state: dict) -> list[torch.Tensor]:
    return [t for s in opt_state["state"].values() for t in s.values() if torch.is_tensor(t)]


@pytest.mark.parametrize("source", ["files", "memory"])
def test_resume_is_bit_identical(source, image_root, tmp_path, monkeypatch):
    if source == "memory":
        monkeypatch.setattr(loop, "load_source", memory_source)
    base = tiny_values(image_root, tmp_path / "straight", method="isd", save_freq=1, seed=5)
    straight = run({**base, "epochs": 2})
    first = run({**base, "run_dir": str(tmp_path / "split"), "epochs": 1})
    assert first.start_epoch == 1
    logs = []
    second = run({**base, "run_dir": str(tmp_path / "split"), "epochs": 2,
                  "resume": str(tmp_path / "split" / "ckpt_last.pth")}, logs)
    assert second.start_epoch == 2 and any("resumed from" in line and "epoch 1" in line for line in logs)
    assert_same_state(straight.model.state_dict(), second.model.state_dict())
    a = torch.load(tmp_path / "straight" / "ckpt_epoch_2.pth", weights_only=False)
    b = torch.load(tmp_path / "split" / "ckpt_epoch_2.pth", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    assert_same_state(a["state_dict"], b["state_dict"])
    assert all(torch.equal(x, y) for x, y in zip(optimizer_tensors(a["optimizer"]), optimizer_tensors(b["optimizer"])))
    # the run moved: the student changed in epoch 2 and the queue holds keys
    one = torch.load(tmp_path / "split" / "ckpt_epoch_1.pth", weights_only=False)["state_dict"]
    assert not torch.equal(one["encoder_q.conv1.weight"], a["state_dict"]["encoder_q.conv1.weight"])
    assert int(a["state_dict"]["queue.ptr"]) == 0  # 2 epochs x 2 steps x 4 keys = 2 laps of K = 8


@pytest.mark.parametrize("resume_from, catch_ups", [(None, 1), ("isd-ssl/2", 1), ("isd-ssl/1", 2), ("original", 2)])
def test_the_teacher_catches_up_once_unless_the_checkpoint_holds_it_current(resume_from, catch_ups, isd_run,
                                                                             image_root, tmp_path, monkeypatch):
    """The original updates its teacher at the top of each forward, so its first step, and its first step after
    a resume, see one update that must be made before stepping: a new method makes it as it is built (the first
    call), and the loop once more after loading a checkpoint whose teacher owes it; a checkpoint of the current
    format already holds it (the update came after its last optimizer step)."""
    from isd.methods import MomentumMethod

    calls = []
    monkeypatch.setattr(MomentumMethod, "catch_up_teacher", lambda self: calls.append(self))
    values = tiny_values(image_root, tmp_path / "run", epochs=2)
    if resume_from is not None:
        state = torch.load(isd_run / "ckpt_last.pth", weights_only=False)
        assert state["format"] == "isd-ssl/2"
        state = {**state, "format": resume_from} if resume_from != "original" else {
            "opt": state["opt"], "state_dict": state["state_dict"], "optimizer": state["optimizer"], "epoch": 1}
        torch.save(state, tmp_path / "resume.pth")
        values["resume"] = str(tmp_path / "resume.pth")
    setup = loop.build(build_config(None, values), log=lambda _: None)
    assert len(calls) == catch_ups and all(model is setup.model for model in calls)


def test_sgd_kernel_is_this_machines_own_after_a_resume(isd_run, image_root, tmp_path, monkeypatch):
    """A GPU run steps SGD with the fused kernel; its checkpoint's param groups say so, and a resume elsewhere (here,
    a CPU) takes this machine's kernel instead of the saved flag. With the fused kernel on the CPU forced, a step
    equals the per-tensor loop's to rounding."""
    state = torch.load(isd_run / "ckpt_last.pth", weights_only=False)
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = True
    torch.save(state, tmp_path / "from_gpu.pth")
    values = tiny_values(image_root, tmp_path / "run", epochs=2, resume=str(tmp_path / "from_gpu.pth"))
    setup = loop.build(build_config(None, values), log=lambda _: None)
    assert not loop.use_fused_sgd(setup.device)
    assert [g["fused"] for g in setup.optimizer.param_groups] == [None]

    def one_step(fused: bool) -> list[torch.Tensor]:
        monkeypatch.setattr(loop, "use_fused_sgd", lambda device: fused)
        torch.manual_seed(0)
        setup = loop.build(build_config(None, tiny_values(image_root, tmp_path / f"step{fused}")), log=lambda _: None)
        assert [g["fused"] for g in setup.optimizer.param_groups] == [True if fused else None]
        for p in setup.optimizer.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        setup.optimizer.step()
        return [p.detach().clone() for p in setup.optimizer.param_groups[0]["params"]]

    if loop.fused_sgd_kernel_works(torch.device("cpu")):
        for a, b in zip(one_step(True), one_step(False)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_resume_auto_picks_the_newest_readable_checkpoint(image_root, tmp_path):
    base = tiny_values(image_root, tmp_path / "a", method="byol", save_freq=1, epochs=2)
    done = run(base)
    assert sorted(p.name for p in (tmp_path / "a").glob("ckpt_*.pth")) == [
        "ckpt_epoch_1.pth", "ckpt_epoch_2.pth", "ckpt_last.pth", "ckpt_step_00000002.pth", "ckpt_step_00000004.pth"]
    assert os.readlink(tmp_path / "a" / "ckpt_last.pth") == "ckpt_step_00000004.pth"
    copy = tmp_path / "b"
    shutil.copytree(tmp_path / "a", copy, symlinks=True)
    logs = []
    again = run({**base, "run_dir": str(copy), "resume": "auto"}, logs)
    assert again.start_epoch == 3 and any("resumed from" in line and "epoch 2" in line for line in logs)
    assert_same_state(done.model.state_dict(), again.model.state_dict())
    # the newest file is corrupt (same size, flipped bytes: only its sha256 sidecar tells): both files are named
    # and the newest good one, the epoch-2 copy at the same point, is used
    newest = copy / "ckpt_step_00000004.pth"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    newest.write_bytes(bytes(data))
    logs = []
    again = run({**base, "run_dir": str(copy), "resume": "auto", "epochs": 3}, logs)
    assert any("ckpt_step_00000004.pth" in line and "sha256" in line and "resuming from" in line
               and "ckpt_epoch_2.pth" in line for line in logs), logs
    assert any("resumed from" in line and "ckpt_epoch_2.pth" in line for line in logs)
    assert torch.load(copy / "ckpt_epoch_3.pth", weights_only=False)["epoch"] == 3
    # an empty run folder: starts from scratch
    logs = []
    fresh = run({**base, "run_dir": str(tmp_path / "c"), "resume": "auto", "epochs": 1}, logs)
    assert fresh.start_epoch == 1 and any("no checkpoint" in line for line in logs)


def test_keep_checkpoints_prunes_rolling_files_but_never_epoch_files(image_root, tmp_path):
    run(tiny_values(image_root, tmp_path, epochs=3, save_freq=2, ckpt_every_steps=1, keep_checkpoints=2))
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ckpt_"))
    assert names == ["ckpt_epoch_2.pth", "ckpt_epoch_2.pth.sha256", "ckpt_epoch_3.pth", "ckpt_epoch_3.pth.sha256",
                     "ckpt_last.pth", "ckpt_step_00000005.pth", "ckpt_step_00000005.pth.sha256",
                     "ckpt_step_00000006.pth", "ckpt_step_00000006.pth.sha256"]
    line = (tmp_path / "ckpt_step_00000006.pth.sha256").read_text()
    assert line.split() == [file_sha256(tmp_path / "ckpt_step_00000006.pth"), "ckpt_step_00000006.pth"]


def test_run_folder_contents_and_log(isd_run):
    import json

    ckpt = torch.load(isd_run / "ckpt_last.pth", weights_only=False)
    assert ckpt["method"] == "isd" and ckpt["epoch"] == 1 and "rng" in ckpt
    assert ckpt["state_dict"]["queue.queue"].shape == (8, 64)
    rows = [json.loads(line) for line in (isd_run / "log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in train_rows)
    assert all(r["lr"] == 0.01 for r in train_rows) and "purity" in train_rows[0]
    assert (isd_run / "config.yaml").is_file()


# ------------------------------------------------------------------------------------------ methods end to end, amp


@pytest.mark.parametrize("method", ["isd-plus", "moco", "byol"])
def test_isd_train_runs_every_method(method, image_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["train", str(image_root), "--method", method, "--run-dir", str(run_dir), "--epochs", "1",
            "--num-workers", "0", "--device", "cpu", "--batch-size", "4", "--queue-size", "8",
            "--set", "image_size=32", "--set", "stem=small", "--set", "width=8", "--set", "temp_teacher=0.05"]
    with single_thread():
        assert main(argv) == 0
    ckpt = torch.load(run_dir / "ckpt_epoch_1.pth", weights_only=False)
    assert ckpt["opt"]["method"] == method and ckpt["opt"]["temp_teacher"] == 0.05 and ckpt["epoch"] == 1
    assert ("queue.queue" in ckpt["state_dict"]) == (method != "byol")


@pytest.mark.parametrize("amp, expected", [("off", torch.float32), ("bf16", torch.bfloat16)])
def test_amp_setting_decides_backbone_precision_on_cpu(amp, expected, image_root, tmp_path, monkeypatch):
    """`amp: bf16` must run the backbone in bf16 on the training device, CPU included (loss stays fp32)."""
    seen = []
    real = loop.method_from_config

    def build_and_watch(*args, **kwargs):
        model = real(*args, **kwargs)
        model.encoder_q.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        return model

    monkeypatch.setattr(loop, "method_from_config", build_and_watch)
    run(tiny_values(image_root, tmp_path / "run", epochs=1, amp=amp))
    assert seen and set(seen) == {expected}


@pytest.mark.parametrize("native, amp, device, bf16", [
    (True, "auto", "cpu", True), (False, "auto", "cpu", False), (True, "off", "cpu", False),
    (False, "bf16", "cpu", True), (False, "auto", "cuda", True), (True, "off", "cuda", False)])
def test_amp_auto_is_bf16_on_a_gpu_and_on_a_cpu_with_native_bf16(native, amp, device, bf16, monkeypatch):
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: native)
    assert loop.use_bf16(build_config(None, {"data": "D", "amp": amp}), torch.device(device)) == bf16


@pytest.mark.parametrize("native, amp, device, warns", [
    (False, "bf16", "cpu", True), (True, "bf16", "cpu", False), (False, "off", "cpu", False),
    (False, "auto", "cpu", False), (False, "bf16", "cuda", False)])
def test_bf16_on_a_cpu_without_native_bf16_is_named_as_slow(native, amp, device, warns, monkeypatch):
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: native)
    cfg = build_config(None, {"data": "D", "amp": amp})
    warning = loop.slow_bf16_warning(cfg, torch.device(device))
    assert (warning is not None) == warns
    if warns:
        assert "amp=off" in warning and "AVX512-BF16" in warning


def test_imagenet100_keeps_the_spec_classes(tmp_path):
    import numpy as np
    from PIL import Image

    from isd.data.sources import image_folder

    names = [f"n{i:05d}" for i in range(105)]
    for name in names:
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (int(name[1:]) % 256, 0, 0)).save(tmp_path / "train" / name / "a.png")
    source = image_folder(tmp_path / "train", imagenet100=True)
    np.random.seed(1234)
    expected = sorted(names[i] for i in np.random.permutation(len(names))[:100])
    assert source.classes == expected and len(source) == 100
    assert sorted(set(source.targets.tolist())) == list(range(100))
    for path, target in zip(source.files, source.targets.tolist()):
        assert Path(path).parent.name == expected[target]  # relabelled 0..99 in sorted order
