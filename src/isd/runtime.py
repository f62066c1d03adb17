"""What every layer may use and nothing of isd above it: the device, the process group, stop signals, atomic and
checksummed file writes, and path checks."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch
import torch.distributed as dist

from isd.errors import SettingError

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))


# ----------------------------------------------------------------------------------------------- device, processes


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda -> the device of this process (its LOCAL_RANK's GPU under torchrun)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SettingError("{device} cuda asked for, but no CUDA GPU is visible; use {device} cpu (or auto)")
    if name == "cpu" or not torch.cuda.is_available():
        keep_freed_memory()
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc malloc.h)
_memory_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Let glibc keep the memory a CPU step frees and hand it to the next step.

    By default glibc maps each large tensor (activations, gradients) fresh and unmaps it when it is freed, so every
    step of CPU training faults its pages in again and the kernel zeroes them: about 25,000 page faults a step
    on the demo's. With no mmap below 1 GiB (32 MiB where glibc refuses more)
    and no trimming, the second step reuses the first one's pages; the process keeps its peak memory, which a
    training process reaches every step anyway. Set ISD_KEEP_FREED_MEMORY=0 to leave malloc as it is. Once per
    process; True when the setting took."""
    global _memory_kept
    if _memory_kept is None:
        _memory_kept = False
        if (os.environ.get("ISD_KEEP_FREED_MEMORY", "1") != "0" and platform.system() == "Linux"
                and platform.libc_ver()[0] == "glibc"):
            libc = ctypes.CDLL("libc.so.6")
            mmap_set = any(libc.mallopt(_M_MMAP_THRESHOLD, size) == 1 for size in (1 << 30, 32 << 20))
            # both or neither: a fixed trim threshold alone turns off glibc's own raising of the mmap threshold
            _memory_kept = mmap_set and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return _memory_kept


def init_distributed(device: torch.device) -> tuple[int, int, bool]:
    """Joins the process group when started by torchrun (WORLD_SIZE > 1); (rank, world size, whether this call
    joined it: a group the caller had set up is theirs to leave)."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return 0, 1, False
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), joined


def leave_distributed() -> None:
    """Leave the process group (and its side groups) at the end of a run, on every rank: its threads stop before
    the interpreter does. Left to the interpreter's exit, gloo's threads can abort a rank that has finished
    ("terminate called without an active exception", SIGABRT), and torchrun then reports the run as failed."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """For DataLoader workers (`worker_init_fn`): the main process handles these signals (checkpoint, then stop);
    a worker killed by the terminal's Ctrl-C, sent to the whole process group, would crash it."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


# ----------------------------------------------------------------------------------------------- files


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Temporary file in the same folder, fsync, rename: a crash never leaves half a file under the real name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_checked(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """`write_atomic`, then a `sha256sum -c` sidecar (NAME.sha256), so later corruption is caught on load.
    OSError (disk full...) leaves no temporary file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, write)
    line = file_sha256(path).encode() + b"  " + os.fsencode(path.name) + b"\n"  # any file name, as sha256sum
    write_atomic(checksum_path(path), lambda fh: fh.write(line))


def path_problem(path: str) -> str | None:
    """Why `path` can never be used (a name too long for the filesystem, a loop of links...), or None. A path that
    merely does not exist yet is left to the check that needs it (a data folder, a run folder to create)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        return err.strerror or type(err).__name__
    except ValueError as err:  # a NUL byte: a YAML value can hold one, a command line cannot
        return str(err)
    return None
