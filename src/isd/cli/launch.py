"""One worker per visible GPU for the original scripts (`CUDA_VISIBLE_DEVICES=0,1 python train_isd.py ...`).

The original spawned its own workers; here the script relaunches itself through torch's elastic launcher
(the machinery behind torchrun), so every worker is an ordinary torchrun worker of the same engine. The caller
names the module each worker runs (`python -m MODULE ARGS`), so this launcher imports none of them.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import uuid
from collections.abc import Mapping

import torch
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from isd.errors import Preempted

LAUNCHER_VARS = ("WORLD_SIZE", "LOCAL_RANK", "RANK", "TORCHELASTIC_RUN_ID")


def needs_self_launch(env: Mapping[str, str], cuda_count: int, device: str | None = "auto") -> bool:
    """True when several GPUs are visible, the run may use them, and no launcher started this process."""
    if device == "cpu" or cuda_count <= 1:
        return False
    return not any(name in env for name in LAUNCHER_VARS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_launch(name: str, module: str, args: list[str], nproc: int) -> int:
    """Runs `python -m module args` in `nproc` workers on this node via torch.distributed.launcher; 0 when all
    succeed. `name` is what the messages call the command (the script's name)."""
    # the launcher passes these on to the workers, which checkpoint and exit 75 (SIGUSR1: SLURM's warning)
    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"isd-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{_free_port()}", max_restarts=0,
                          monitor_interval=1)
    print(f"{name}: {nproc} GPUs visible, starting one worker per GPU (same as torchrun --nproc_per_node "
          f"{nproc})", flush=True)
    try:
        elastic_launch(config, sys.executable)("-m", module, *args)
    except SignalException as err:
        print(f"{name}: {signal_name(err.sigval)} received, passed on to the workers (each writes a checkpoint "
              f"first); continue with --resume auto", file=sys.stderr, flush=True)
        return Preempted.exit_code
    except ChildFailedError as err:
        if all(f.exitcode == Preempted.exit_code for f in err.failures.values()):
            print(f"{name}: stopped by a signal after a checkpoint; continue with --resume auto",
                  file=sys.stderr, flush=True)
            return Preempted.exit_code
        print(f"{name}: a worker failed:\n{err}", file=sys.stderr, flush=True)
        return 1
    return 0


def signal_name(sigval) -> str:
    try:
        return signal.Signals(sigval).name
    except ValueError:
        return f"signal {sigval}"


def maybe_self_launch(name: str, module: str, args: list[str], device: str | None) -> int | None:
    """The exit code of a self-launched multi-GPU run, or None when this process should train itself."""
    count = torch.cuda.device_count()
    if not needs_self_launch(os.environ, count, device):
        return None
    return self_launch(name, module, args, count)
