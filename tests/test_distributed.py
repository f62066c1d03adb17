"""Several processes on CPU with gloo: rank agreement, shuffle-BN, 1-vs-2 process equivalence, resume, failure.

The workers are this file run as a script (`python -m torch.distributed.run --nproc_per_node 2
tests/test_distributed.py MODE SPEC.json`): a tiny harness that trains on a fake in-memory set of random
28 px images and saves each rank's model state and losses to OUT/rank{R}.pt.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]

# 32 fake images, global batch 8 -> 4 steps per epoch; queue of 2 global batches
BASE = {"method": "isd", "width": 8, "stem": "small", "batch_size": 8, "queue_size": 16, "num_workers": 0,
        "device": "cpu", "print_freq": 1, "dataset": "folder", "data": "unused", "ema": 0.9, "lr": 0.05,
        "amp": "off", "channels_last": "off"}  # the tolerances below were set for contiguous fp32 / fp64
N_IMAGES = 32


# --------------------------------------------------------------------------------------------- harness
def fake_source(*_args, **_kwargs):
    from isd.data.sources import Source
    gen = torch.Generator().manual_seed(1234)
    images = torch.randint(0, 256, (N_IMAGES, 1, 28, 28), dtype=torch.uint8, generator=gen)
    targets = torch.arange(N_IMAGES) % 4
    return Source(name="fake", classes=[str(c) for c in range(4)], targets=targets, mean=(0.5,), std=(0.25,),
                  native_size=28, images=images)


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """CPU stand-in for SyncBatchNorm (torch's has no CPU kernel): normalise with the statistics of the
    all-gathered global batch (differentiable gather), keep this rank's rows."""

    def _check_input_dim(self, x):
        pass

    def forward(self, x):
        import torch.distributed as dist
        import torch.distributed.nn.functional as dnn
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        parts = dnn.all_gather(x.contiguous()) if torch.is_grad_enabled() else self._gather(x)
        rank, local = dist.get_rank(), x.shape[0]
        return super().forward(torch.cat(parts))[rank * local:(rank + 1) * local]

    @staticmethod
    def _gather(x):
        import torch.distributed as dist
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return parts


def to_global_bn(module: torch.nn.Module) -> torch.nn.Module:
    for name, child in module.named_children():
        if type(child) in (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d):
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.weight.requires_grad_(child.weight.requires_grad)
            new.bias.requires_grad_(child.bias.requires_grad)
            setattr(module, name, new)
        else:
            to_global_bn(child)
    return module


def harness_train(spec: dict) -> None:
    import isd.train.loop as loop
    from isd.config import build_config
    from isd.errors import Preempted
    from isd.methods.momentum import MomentumMethod

    rank = int(os.environ.get("RANK", 0))
    loop.load_source = fake_source
    losses: list[float] = []
    forward = MomentumMethod.forward
    fail_rank = os.environ.get("ISD_TEST_FAIL_RANK")

    def recording_forward(self, key, query, labels=None):
        if fail_rank is not None and int(fail_rank) == rank and len(losses) >= 1:
            raise RuntimeError(f"injected failure on rank {rank}")
        if os.environ.get("ISD_TEST_SIGNAL_RANK") == str(rank) and len(losses) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # this rank alone is told to stop, during its second step
        if spec.get("float64"):
            key, query = key.double(), query.double()
        step = forward(self, key, query, labels)
        losses.append(float(step.loss.detach()))
        return step

    MomentumMethod.forward = recording_forward
    if spec.get("float64"):  # model, queue and loss in float64: what is left of a difference is the algorithm's
        torch.set_default_dtype(torch.float64)
    if spec.get("global_bn"):  # what loop.build's sync_bn conversion does on GPUs, here on CPU
        torch.nn.SyncBatchNorm.convert_sync_batchnorm = staticmethod(lambda m, *a, **k: to_global_bn(m))
    try:
        setup = loop.train(build_config(None, spec["values"], spec.get("set", [])), log=lambda _: None)
    except Preempted as stopped:
        (Path(spec["out"]) / f"stopped{rank}.txt").write_text(f"{len(losses)} {stopped}")
        sys.exit(stopped.exit_code)
    import torch.distributed as dist
    torch.save({"state": setup.model.state_dict(), "losses": losses, "world": setup.world,
                "group_left": not dist.is_initialized()}, Path(spec["out"]) / f"rank{rank}.pt")


class IdEncoder(torch.nn.Module):
    """Stands in for the teacher: returns the input's first D values and records which sample ids it saw."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim, self.seen = dim, []

    def forward(self, x):
        self.seen.append(x.flatten(1)[:, 0].round().long().tolist())
        return x.flatten(1)[:, :self.dim]


def harness_shuffle(spec: dict) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F
    from isd.config import build_config
    from isd.methods import method_from_config

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = method_from_config(build_config(None, {**BASE, "image_size": 8}), in_channels=1, stem="small")
    model.encoder_k = IdEncoder(8)
    local, report = 4, {"rank": rank, "exact": [], "own": [], "seen": []}
    for call in range(6):
        ids = torch.arange(rank * local, (rank + 1) * local) + 100 * call
        x = torch.randn(len(ids), 1, 4, 4, generator=torch.Generator().manual_seed(call * 10 + rank))
        x[:, 0, 0, 0] = ids.float()  # the first value names the sample
        k = model.teacher_embed(x)
        expected = F.normalize(x.flatten(1)[:, :8].float(), dim=1)
        report["exact"].append(bool(torch.equal(k, expected)))
        report["own"].append(ids.tolist())
        report["seen"].append(model.encoder_k.seen[-1])
    (Path(spec["out"]) / f"shuffle{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


# --------------------------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"), **extra)
    return env


def launch(tmp: Path, mode: str, nproc: int, timeout: float = 120, env: dict | None = None,
           **spec) -> subprocess.CompletedProcess:
    spec_file = tmp / f"spec_{mode}_{nproc}_{time.monotonic_ns()}.json"
    spec_file.write_text(json.dumps(spec))
    if nproc == 1:
        cmd = [sys.executable, str(HERE), mode, str(spec_file)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "--monitor_interval", "0.5",
               str(HERE), mode, str(spec_file)]
    return subprocess.run(cmd, cwd=ROOT, env=worker_env(**(env or {})), capture_output=True, text=True,
                          timeout=timeout)


def checked(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def train_values(run_dir: Path, **extra) -> dict:
    return {**BASE, "run_dir": str(run_dir), **extra}


def load_rank(out: Path, rank: int) -> dict:
    return torch.load(out / f"rank{rank}.pt", map_location="cpu", weights_only=False)


def is_bn_stat(name: str) -> bool:
    return name.endswith(("running_mean", "running_var", "num_batches_tracked"))


# --------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def two_proc_run(tmp_path_factory) -> Path:
    """2 processes x 1 epoch (4 steps) of tiny ISD, default BatchNorm (shuffle-BN), rank files in run/."""
    run = tmp_path_factory.mktemp("two_proc")
    checked(launch(run, "train", 2, out=str(run), values=train_values(run, epochs=1)))
    return run


def test_ranks_agree_on_queue_and_weights(two_proc_run):
    r0, r1 = load_rank(two_proc_run, 0), load_rank(two_proc_run, 1)
    assert r0["world"] == r1["world"] == 2
    assert r0["group_left"] and r1["group_left"]  # train() left the group it joined: no gloo threads at exit
    s0, s1 = r0["state"], r1["state"]
    assert s0.keys() == s1.keys()
    for name in ("queue.queue", "queue.ptr", "queue.labels"):
        assert torch.equal(s0[name], s1[name]), name
    assert int(s0["queue.ptr"]) == (4 * 8) % 16
    compared = 0
    for name in s0:
        # BN running statistics are per-rank buffers (broadcast_buffers=False): only the weights must agree
        if is_bn_stat(name):
            continue
        assert torch.equal(s0[name], s1[name]), name
        compared += 1
    assert any(n.startswith("encoder_k.") for n in s0) and compared > 20
    assert r0["losses"] != r1["losses"]  # each rank really saw its own half of the batch


def test_shuffle_unshuffle_returns_each_key_to_its_sample(tmp_path):
    checked(launch(tmp_path, "shuffle", 2, out=str(tmp_path)))
    reports = [json.loads((tmp_path / f"shuffle{r}.json").read_text()) for r in range(2)]
    for rep in reports:
        assert all(rep["exact"]), rep  # teacher_embed(x) == normalize(fake(x)) row for row, on every rank
        assert any(sorted(seen) != sorted(own) for seen, own in zip(rep["seen"], rep["own"])), rep
    for call in range(6):  # together the ranks' forwards saw exactly the global batch, each sample once
        seen = sorted(reports[0]["seen"][call] + reports[1]["seen"][call])
        assert seen == sorted(reports[0]["own"][call] + reports[1]["own"][call])


@pytest.mark.parametrize("precision, weight_tol", [("float64", 1e-5), ("float32", 1e-4)])
def test_two_processes_match_one_with_sync_bn(precision, weight_tol, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    values = dict(epochs=1, sync_bn=True)
    flags = dict(global_bn=True, float64=precision == "float64")
    checked(launch(one, "train", 1, out=str(one), values=train_values(one, **values), **flags))
    checked(launch(two, "train", 2, out=str(two), values=train_values(two, **values), **flags))
    single, ranks = load_rank(one, 0), [load_rank(two, r) for r in range(2)]
    assert single["world"] == 1 and ranks[0]["world"] == 2
    assert single["state"]["encoder_q.conv1.weight"].dtype == getattr(torch, precision)
    # the loss is a per-sample mean: the global loss is the mean of the two halves' losses
    merged = torch.tensor([ranks[0]["losses"], ranks[1]["losses"]], dtype=torch.float64).mean(0)
    torch.testing.assert_close(merged, torch.tensor(single["losses"], dtype=torch.float64), rtol=0, atol=1e-5)
    worst = {}
    for name, value in single["state"].items():
        for r in ranks:
            other = r["state"][name]
            if value.is_floating_point():
                worst[name] = max(worst.get(name, 0.0), float((value - other).abs().max()))
            else:
                assert torch.equal(value, other), name
    # float64: the two runs are the same algorithm (differences ~1e-13). float32: reduction order (BN over
    # gathered rows, gradient all-reduce) amplified by the 0.02 temperature leaves up to ~6e-5 after 4 steps
    bad = {n: d for n, d in worst.items() if d > weight_tol}
    assert not bad, sorted(bad.items(), key=lambda kv: -kv[1])[:10]


def test_sync_bn_on_cpu_is_a_usage_error(tmp_path):
    proc = launch(tmp_path, "train", 2, out=str(tmp_path), values=train_values(tmp_path, epochs=1, sync_bn=True))
    assert proc.returncode != 0
    assert "sync_bn=true needs CUDA GPUs" in proc.stdout + proc.stderr


def test_two_process_checkpoint_resumes_in_one(two_proc_run):
    checked(launch(two_proc_run, "train", 1, out=str(two_proc_run),
                   values=train_values(two_proc_run, epochs=2, resume="auto")))
    assert (two_proc_run / "ckpt_epoch_2.pth").exists()
    assert load_rank(two_proc_run, 0)["world"] == 1


def test_one_process_checkpoint_resumes_in_two(tmp_path):
    checked(launch(tmp_path, "train", 1, out=str(tmp_path), values=train_values(tmp_path, epochs=1)))
    assert (tmp_path / "ckpt_epoch_1.pth").exists()
    checked(launch(tmp_path, "train", 2, out=str(tmp_path), values=train_values(tmp_path, epochs=2, resume="auto")))
    assert (tmp_path / "ckpt_epoch_2.pth").exists()
    assert load_rank(tmp_path, 1)["world"] == 2


def test_torchrun_cli_on_cpu_trains_and_its_checkpoint_evaluates(tmp_path):
    """The issue's "done means": `torchrun --nproc_per_node 2 -m isd train ...` on CPU, then `isd knn` on it."""
    sys.path.insert(0, str(HERE.parent))
    from conftest import write_image_folder
    write_image_folder(tmp_path / "data" / "train", classes=2, per_class=8, size=36)
    write_image_folder(tmp_path / "data" / "val", classes=2, per_class=3, size=36, seed=1)
    run_dir = tmp_path / "run"
    train = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", str(free_port()), "-m", "isd", "train", "--method", "isd", str(tmp_path / "data"),
             "--run-dir", str(run_dir), "--epochs", "2", "--batch-size", "8", "--queue-size", "16",
             "--num-workers", "0", "--device", "cpu", "--set", "width=8", "--set", "stem=small",
             "--set", "image_size=32"]
    trained = checked(subprocess.run(train, cwd=ROOT, env=worker_env(), capture_output=True, text=True,
                                     timeout=180))
    assert "2 process(es)" in trained.stdout + trained.stderr
    knn = [sys.executable, "-m", "isd", "knn", str(run_dir / "ckpt_last.pth"), str(tmp_path / "data"),
           "--out", str(tmp_path / "eval"), "--num-workers", "0", "--batch-size", "8"]
    checked(subprocess.run(knn, cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=180))
    result = json.loads((tmp_path / "eval" / "knn.json").read_text())
    assert torch.load(run_dir / "ckpt_last.pth", weights_only=False)["epoch"] == 2
    assert set(result["top1"]) == {"1", "16"} and (result["counts"]["train"], result["counts"]["val"]) == (16, 6)
    assert all(0 <= acc <= 100 for acc in result["top1"].values())


def test_failing_rank_ends_the_job(tmp_path):
    start = time.monotonic()
    proc = launch(tmp_path, "train", 2, timeout=90, env={"ISD_TEST_FAIL_RANK": "1"}, out=str(tmp_path),
                  values=train_values(tmp_path, epochs=1))
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stdout + proc.stderr
    assert elapsed < 60, elapsed
    assert not (tmp_path / "ckpt_epoch_1.pth").exists()


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    proc = launch(tmp_path, "train", 2, env={"ISD_TEST_SIGNAL_RANK": "1"}, out=str(tmp_path),
                  values=train_values(tmp_path, epochs=2))
    assert proc.returncode != 0 and "exitcode  : 75" in proc.stdout + proc.stderr, proc.stderr[-6000:]
    stopped = [(tmp_path / f"stopped{r}.txt").read_text() for r in range(2)]
    # rank 1's flag of step 2 is agreed on (all-reduced) during step 3: both ranks ran exactly 3 steps
    assert [text.split()[0] for text in stopped] == ["3", "3"], stopped
    assert "a stop request on another rank received" in stopped[0] and "SIGTERM received" in stopped[1]
    state = torch.load(tmp_path / "ckpt_last.pth", weights_only=False)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 3)
    checked(launch(tmp_path, "train", 2, out=str(tmp_path), values=train_values(tmp_path, epochs=1, resume="auto")))
    assert torch.load(tmp_path / "ckpt_last.pth", weights_only=False)["step_in_epoch"] == 0


@pytest.mark.parametrize("env, gpus, device, expected", [
    ({}, 2, "auto", True),
    ({}, 4, "cuda", True),
    ({}, 1, "auto", False),
    ({}, 0, "auto", False),
    ({}, 2, "cpu", False),
    ({"WORLD_SIZE": "2"}, 2, "auto", False),
    ({"LOCAL_RANK": "0"}, 2, "auto", False),
    ({"RANK": "0", "WORLD_SIZE": "1"}, 8, "auto", False),
    ({"TORCHELASTIC_RUN_ID": "x"}, 8, "auto", False),
])
def test_needs_self_launch(env, gpus, device, expected):
    from isd.cli.launch import needs_self_launch
    assert needs_self_launch(env, gpus, device) is expected


def test_legacy_script_on_one_device_does_not_self_launch(monkeypatch):
    import isd.cli.launch as launch_mod
    calls = []
    monkeypatch.setattr(launch_mod, "self_launch", lambda *a, **k: calls.append(a) or 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert launch_mod.maybe_self_launch("train_isd.py", "m", ["data"], "auto") is None
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for k in ("WORLD_SIZE", "LOCAL_RANK", "RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    assert launch_mod.maybe_self_launch("train_isd.py", "m", ["data"], "auto") == 0
    assert calls == [("train_isd.py", "m", ["data"], 2)]


def test_self_launched_workers_run_the_script_module_with_the_scripts_command_line(monkeypatch):
    """Each worker runs `python -m isd.cli.legacy_train SCRIPT ARGS...`: the launcher is told what to run."""
    import isd.cli.launch as launch_mod
    from isd.cli import legacy_train

    launched = []
    monkeypatch.setattr(launch_mod, "self_launch", lambda *a: launched.append(a) or 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for k in ("WORLD_SIZE", "LOCAL_RANK", "RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    assert legacy_train.main("train_isd.py", ["/data/x", "--epochs", "3"]) == 0
    assert launched == [("train_isd.py", "isd.cli.legacy_train", ["train_isd.py", "/data/x", "--epochs", "3"], 2)]
    assert legacy_train.WORKER == legacy_train.__name__


if __name__ == "__main__":
    torch.set_num_threads(1)
    spec = json.loads(Path(sys.argv[2]).read_text())
    {"train": harness_train, "shuffle": harness_shuffle}[sys.argv[1]](spec)
