"""Checkpoints: atomic writes, the original's file names and top-level keys, RNG state for exact resume."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from isd.errors import UsageError

LAST = "ckpt_last.pth"


def epoch_name(epoch: int) -> str:
    return f"ckpt_epoch_{epoch}.pth"


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_checkpoint(cfg, model, optimizer, epoch: int, step_in_epoch: int = 0) -> dict[str, Any]:
    """Top-level keys of the original (`opt`, `state_dict`, `optimizer`, `epoch`) plus what exact resume needs."""
    return {"opt": cfg.to_dict(), "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "epoch": epoch, "step_in_epoch": step_in_epoch, "method": cfg.method, "arch": cfg.arch,
            "rng": rng_state(), "format": "isd-ssl/1"}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist (--resume)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise UsageError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); "
                         f"it may be truncated: resume from an earlier ckpt_epoch_N.pth") from None


def load_latest(run_dir: Path, warn=print) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of a run folder (`--resume auto`); unreadable ones are named and skipped."""
    candidates = sorted(run_dir.glob("ckpt_*.pth"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            return path, torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            warn(f"warning: checkpoint {path} is unreadable ({type(err).__name__}); trying the previous one")
    return None


def check_compatible(ckpt: dict[str, Any], cfg, path: Path) -> None:
    opt = ckpt.get("opt") or {}
    if not isinstance(opt, dict):  # the original scripts store an argparse.Namespace
        opt = vars(opt) if hasattr(opt, "__dict__") else {}
    method = ckpt.get("method", opt.get("method"))
    arch = ckpt.get("arch", opt.get("arch"))
    if method and method != cfg.method:
        raise UsageError(f"checkpoint {path} was trained with --method {method}, not {cfg.method}: "
                         f"resume with --method {method} or start a new run folder")
    if arch and arch != cfg.arch:
        raise UsageError(f"checkpoint {path} holds a {arch}, not a {cfg.arch}: resume with --arch {arch}")
