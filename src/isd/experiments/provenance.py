"""Where a number came from: code version, library versions, machine and command."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch
import torchvision

import isd

# The runner and `isd report` rewrite committed reports and plots here while a grid runs; they are outputs,
# so changes under it do not make the code that produced a cell "dirty".
RESULT_FILES = "benchmarks/results"


def _checkout_root() -> Path:
    return Path(isd.__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    root = _checkout_root()
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version() -> dict[str, object]:
    """The git commit of the package's checkout and whether tracked files other than result files differ from it.

    ISD_GIT_COMMIT / ISD_GIT_DIRTY stand in where the code runs from a copy without .git (a remote machine
    that received the working tree of a known commit)."""
    if os.environ.get("ISD_GIT_COMMIT"):
        return {"commit": os.environ["ISD_GIT_COMMIT"], "dirty": os.environ.get("ISD_GIT_DIRTY", "0") == "1"}
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){RESULT_FILES}")
    return {"commit": commit, "dirty": bool(status)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # the kernels ATen dispatches to (AVX2, AVX512, ...): two CPUs of one model name may differ in them
    return f"CPU: {model} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads"


def command_line() -> str:
    program = Path(sys.argv[0]).name
    program = "python -m isd" if program == "__main__.py" else program
    return shlex.join([program, *sys.argv[1:]])


def provenance(device: torch.device) -> dict[str, object]:
    return {**code_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "device": device_name(device),
            "command": command_line(),
            "host": platform.node(), "concurrent_cells": int(os.environ.get("ISD_CONCURRENT_CELLS", "1")),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
