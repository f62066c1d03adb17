"""Preemption, mid-epoch checkpoints, non-finite guards and failed checkpoint writes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import isd.methods.isd as isd_module
from conftest import ROOT, single_thread, tiny_values, write_image_folder
from isd.cli.main import main
from isd.config import build_config
from isd.data import batches
from isd.errors import CheckpointWriteError, NonFiniteError, Preempted
from isd import checkpoint as ck
from isd.train.loop import train
from isd.train.nonfinite import NonFiniteGuard
from isd.train.preemption import StopRequests

STEPS = 4  # steps per epoch of the folder below (16 images, batch 4)


@pytest.fixture(scope="module")
def data16(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data16")
    write_image_folder(root / "train", classes=2, per_class=8, size=36, seed=3)
    return root


def run(values: dict, logs: list | None = None):
    with single_thread():
        return train(build_config(None, values), log=(logs.append if logs is not None else lambda _: None))


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / ck.LAST, weights_only=False)["state_dict"]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


@pytest.fixture(scope="module")
def reference(data16, tmp_path_factory) -> Path:
    """2 uninterrupted epochs of tiny ISD."""
    run_dir = tmp_path_factory.mktemp("reference")
    run(tiny_values(data16, run_dir, epochs=2))
    return run_dir


def signal_at(monkeypatch, signum: int, at_step: int, epoch: int = 1) -> None:
    """Deliver `signum` to this process while the loader hands out batch `at_step` of `epoch`."""
    real = batches.FileLoader.epoch

    def epoch_with_signal(self, e, start_step=0):
        for step, batch in enumerate(real(self, e, start_step), start=start_step):
            if e == epoch and step == at_step:
                os.kill(os.getpid(), signum)
            yield batch

    monkeypatch.setattr(batches.FileLoader, "epoch", epoch_with_signal)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_signal_finishes_the_step_checkpoints_and_resume_is_exact(signum, data16, reference, tmp_path, monkeypatch):
    values = tiny_values(data16, tmp_path, epochs=2)
    before = signal.getsignal(signum)
    signal_at(monkeypatch, signum, at_step=2, epoch=1)
    with pytest.raises(Preempted) as stopped:
        run(values)
    assert signal.Signals(signum).name in str(stopped.value) and "epoch 1, step 3/4" in str(stopped.value)
    state = torch.load(tmp_path / ck.LAST, weights_only=False)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 3)  # the step that was running finished
    assert signal.getsignal(signum) is before  # the handler that was there before the run is back
    monkeypatch.undo()
    logs = []
    run({**values, "resume": "auto"}, logs)
    assert any("resumed from" in line and "step 3" in line for line in logs)
    assert_same(weights(reference), weights(tmp_path))


def test_sigterm_from_outside_exits_75_and_resumes(data16, tmp_path):
    """The real thing: a separate `isd train` process, SIGTERM while it trains."""
    argv = [sys.executable, "-m", "isd", "train", str(data16), "--run-dir", str(tmp_path), "--epochs", "200",
            "--batch-size", "4", "--queue-size", "8", "--num-workers", "0", "--device", "cpu",
            "--set", "width=8", "--set", "stem=small", "--set", "image_size=32", "--set", "print_freq=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    err_file = open(tmp_path / "stderr.txt", "w+")  # not a pipe: unread progress output would block the child
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err_file, text=True)
    log = tmp_path / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and sum(1 for _ in open(log)) >= 6:
            break
        time.sleep(0.1)
    assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 75, err  # stopped by the signal, not at the end of its 200 epochs (no clock asked)
    assert "SIGTERM received" in err and "--resume auto" in err and "Traceback" not in err
    state = torch.load(tmp_path / ck.LAST, weights_only=False)
    done = (state["epoch"] - 1) * STEPS + (state["step_in_epoch"] or STEPS)
    rows = [json.loads(line) for line in open(log) if '"train"' in line]
    assert done == rows[-1]["step"]  # the checkpoint holds exactly the last step logged
    resumed = subprocess.run(argv[:-2] + ["--set", f"epochs={state['epoch'] + 1}", "--resume", "auto"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(tmp_path / ck.LAST, weights_only=False)["epoch"] == state["epoch"] + 1


def test_mid_epoch_checkpoints_resume_at_the_exact_step(data16, reference, tmp_path):
    values = tiny_values(data16, tmp_path, epochs=2, ckpt_every_steps=1, keep_checkpoints=10)
    run(values)
    assert_same(weights(reference), weights(tmp_path))  # checkpointing changes nothing
    # a crash after step 3 of epoch 1: every later checkpoint is gone
    for path in tmp_path.glob("ckpt_*"):
        if not path.name.startswith(("ckpt_step_00000001", "ckpt_step_00000002", "ckpt_step_00000003")):
            path.unlink()
    logs = []
    run({**values, "resume": "auto"}, logs)
    assert any("resumed from" in line and "ckpt_step_00000003.pth" in line and "step 3" in line for line in logs)
    assert_same(weights(reference), weights(tmp_path))


class NaNAt:
    """Wraps isd_loss: the call numbered `at` (1-based) returns NaN, or a finite loss with NaN gradients."""

    def __init__(self, at: int, where: str) -> None:
        self.at, self.where, self.calls, self.real = at, where, 0, isd_module.isd_loss

    def __call__(self, q, k, queue, temp_s, temp_t):
        self.calls += 1
        if self.calls == self.at:
            if self.where == "loss":
                return self.real(q, k, queue, temp_s, temp_t) * float("nan")
            q = NaNGradient.apply(q)
        return self.real(q, k, queue, temp_s, temp_t)


class NaNGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


@pytest.mark.parametrize("where, tensor", [("loss", "non-finite loss"), ("grad", "non-finite gradient of")])
def test_nonfinite_stops_with_a_diagnostic_and_keeps_the_last_good_checkpoint(where, tensor, data16, reference,
                                                                              tmp_path, monkeypatch):
    values = tiny_values(data16, tmp_path, epochs=2, print_freq=100)
    monkeypatch.setattr(isd_module, "isd_loss", NaNAt(STEPS + 2, where))  # epoch 2, step 1 (0-based)
    with pytest.raises(NonFiniteError) as stopped:
        run(values)
    message = str(stopped.value)
    assert tensor in message and "epoch 2, step 1 " in message and "lr 0.01" in message and "loss=" in message
    assert ("loss=nan" in message) == (where == "loss")
    state = torch.load(tmp_path / ck.LAST, weights_only=False)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)  # nothing written after the bad step
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert sorted(p.name for p in tmp_path.glob("ckpt_*.pth")) == ["ckpt_last.pth", "ckpt_step_00000004.pth"]


def test_nonfinite_skip_drops_the_step_and_counts_it(data16, tmp_path, monkeypatch):
    values = tiny_values(data16, tmp_path, epochs=1, on_nonfinite="skip")
    injected = NaNAt(3, "loss")
    monkeypatch.setattr(isd_module, "isd_loss", injected)
    before = {}

    def remember(setup, epoch, runlog):
        before["ptr"] = int(setup.model.queue.ptr)

    setup = train(build_config(None, values), log=lambda _: None, on_epoch_end=remember)
    rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 4]  # step 3 skipped: no row of its own
    assert train_rows[-1]["skipped_steps"] == 1
    assert before["ptr"] == (3 * 4) % 8  # 3 of 4 steps enqueued their keys
    state = setup.model.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nonfinite_teacher_weight_is_named():
    from torch import nn

    model = nn.Module()
    model.student = nn.Linear(2, 2)
    model.teacher = nn.Linear(2, 2).requires_grad_(False)
    with torch.no_grad():
        model.teacher.bias[1] = float("inf")
    with pytest.raises(NonFiniteError, match="non-finite teacher weight teacher.bias at epoch 5"):
        NonFiniteGuard(model, "stop").check(epoch=5, lr=0.1)


def guarded_steps(guard: NonFiniteGuard, model, steps: dict[int, str], n: int) -> None:
    """`n` steps through the guard; `steps` maps a step to what is bad in it: the loss, a gradient or a stat."""
    for step in range(n):
        what = steps.get(step)
        model.student.weight.grad = torch.full_like(model.student.weight, float("nan") if what == "grad" else 1.0)
        model.student.bias.grad = torch.ones_like(model.student.bias)
        loss = torch.tensor(float("inf") if what == "loss" else 0.5)
        assert guard.after_backward(loss, {"purity": torch.tensor(float("nan") if what == "stat" else 0.25)},
                                    step) is False  # stop mode: never decided (or synced) in the step


@pytest.mark.parametrize("fold", [256, 3])
def test_nonfinite_check_names_the_first_bad_step_of_the_window(fold, monkeypatch):
    """Rows of a window (folded into one tensor every `fold` steps) are read at the check: the first bad step is
    named, with its tensor; a non-finite logged stat alone is not a bad step, as before."""
    from torch import nn

    from isd.train import nonfinite
    from isd.train.bench import OpCounter

    monkeypatch.setattr(nonfinite, "FOLD", fold)
    model = nn.Module()
    model.student = nn.Linear(2, 2)
    guard = NonFiniteGuard(model, "stop")
    guarded_steps(guard, model, {2: "stat"}, 10)
    guard.check(epoch=1, lr=0.1)  # nothing bad: the stat is only logged
    guarded_steps(guard, model, {4: "grad", 7: "loss"}, 9)
    with pytest.raises(NonFiniteError, match="non-finite gradient of student.weight at epoch 3, step 4 .*loss=0.5"):
        guard.check(epoch=3, lr=0.1)
    guarded_steps(guard, model, {5: "loss", 6: "grad"}, 8)
    with pytest.raises(NonFiniteError, match="non-finite loss at epoch 3, step 5 .*loss=inf, purity=0.25"):
        guard.check(epoch=3, lr=0.1)
    guard.check(epoch=3, lr=0.1)  # a check reads each window once
    with OpCounter() as ops:
        guarded_steps(guard, model, {}, 1)
    guard_ops = {k: v for k, v in ops.counts["all"].items() if k not in ("full_like", "ones_like", "lift_fresh")}
    assert sum(guard_ops.values()) <= 2, guard_ops  # the gradients' norms, one stack: nothing more per step


def test_disk_full_keeps_the_previous_checkpoint_and_says_so(image_root, tmp_path, monkeypatch, capsys):
    real, calls = torch.save, []

    def save_until_full(obj, fh, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:  # the epoch-1 checkpoint fits, the epoch-2 one does not
            fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, fh, *args, **kwargs)

    monkeypatch.setattr(ck.torch, "save", save_until_full)
    argv = ["train", str(image_root), "--run-dir", str(tmp_path), "--epochs", "2", "--batch-size", "4",
            "--queue-size", "8", "--num-workers", "0", "--device", "cpu", "--set", "width=8", "--set", "stem=small",
            "--set", "image_size=32"]
    with single_thread():
        code = main(argv)
    err = capsys.readouterr().err
    assert code == CheckpointWriteError.exit_code == 4
    assert "disk full while writing checkpoint" in err and "ckpt_step_00000004.pth" in err
    assert "the previous checkpoint ckpt_step_00000002.pth is intact" in err and "--resume auto" in err
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written file left behind
    assert torch.load(tmp_path / ck.LAST, weights_only=False)["epoch"] == 1


def test_a_second_ctrl_c_interrupts_at_once():
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN in a background job (`make test &`)
    with StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.should_stop() and stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # the handler that was there before, whatever it was


def test_stop_handlers_work_and_are_put_back_when_sigint_starts_ignored():
    """What a background job (`make test &`, `nohup`) gets: SIGINT ignored. The run still stops on it, and the
    ignore is what it leaves behind."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequests() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.should_stop() and stop.name == "SIGINT"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_kill_test_script_survives_sigkills(tmp_path):
    out = tmp_path / "kill.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kill_test.py"), "--kills", "4", "--epochs", "12",
                           "--window-steps", "20", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["kills"] == 4 and result["identical"] and not result["different_tensors"]
