"""Checkpoints: atomic writes, the original's file names and top-level keys, RNG state for exact resume."""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from isd import checkpoint_reader as reader
from isd.errors import CheckpointWriteError, UsageError
from isd.runtime import checksum_path, file_sha256, write_checked

LAST = "ckpt_last.pth"  # a link to the newest rolling checkpoint
# /2: the teacher includes the update after the last optimizer step. In /1 and in the original's files it still
# owes that update, which the original makes at the top of its next forward: resume makes it first.
FORMAT = "isd-ssl/2"
STEP_FILE = re.compile(r"ckpt_step_(\d+)\.pth$")
EPOCH_FILE = re.compile(r"ckpt_epoch_(\d+)\.pth$")


def epoch_name(epoch: int) -> str:
    return f"ckpt_epoch_{epoch}.pth"


def step_name(global_step: int) -> str:
    return f"ckpt_step_{global_step:08d}.pth"


def atomic_save(obj: Any, path: Path) -> None:
    """Temporary file in the same folder, fsync, rename, then a `sha256sum -c` sidecar: a crash never leaves
    half a file under the real name, and later corruption is caught on load. A failed write (disk full)
    raises CheckpointWriteError and leaves every earlier checkpoint as it was."""
    _write_checked(path, lambda fh: torch.save(obj, fh))


def copy_checkpoint(src: Path, dst: Path) -> None:
    """A second name for a checkpoint just written (ckpt_epoch_N.pth): its bytes, not a second serialisation."""
    with open(src, "rb") as data:
        _write_checked(dst, lambda fh: shutil.copyfileobj(data, fh, 1 << 22))


def _write_checked(path: Path, write) -> None:
    try:
        write_checked(path, write)
    except OSError as err:
        reason = "disk full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "write failed"
        earlier = [p.name for p in checkpoints_newest_first(path.parent) if p != path]
        kept = f"the previous checkpoint {earlier[0]} is intact" if earlier else "no earlier checkpoint exists"
        raise CheckpointWriteError(f"{reason} while writing checkpoint {path} ({err.strerror or err}); {kept}. "
                                   f"Free space in {path.parent} (or pass another --run-dir) and rerun with "
                                   f"--resume auto") from None


def save_rolling(obj: Any, run_dir: Path, global_step: int, keep: int) -> Path:
    """ckpt_step_N.pth, then ckpt_last.pth pointed at it, then all but the newest `keep` removed."""
    path = run_dir / step_name(global_step)
    atomic_save(obj, path)
    point_last_at(path)
    steps = sorted((p for p in run_dir.glob("ckpt_step_*.pth") if STEP_FILE.match(p.name)), reverse=True)
    for old in steps[keep:]:
        old.unlink(missing_ok=True)
        checksum_path(old).unlink(missing_ok=True)
    return path


def point_last_at(path: Path) -> None:
    link, tmp = path.parent / LAST, path.parent / f".{LAST}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(path.name)  # relative: the run folder can be moved or copied
        os.replace(tmp, link)
    except OSError:  # a filesystem without symlinks: a copy instead
        tmp.unlink(missing_ok=True)
        shutil.copyfile(path, tmp)
        os.replace(tmp, link)


def rng_state() -> dict[str, Any]:
    name, keys, *rest = np.random.get_state()
    # numpy's key as a plain list: the file then needs no numpy type to load (the safe reader knows numpy's array
    # pickling only under the installed numpy's names, which changed in numpy 2)
    state = {"torch": torch.get_rng_state(), "numpy": (name, keys.tolist(), *rest), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_checkpoint(cfg, model, optimizer, epoch: int, step_in_epoch: int = 0) -> dict[str, Any]:
    """Top-level keys of the original (`opt`, `state_dict`, `optimizer`, `epoch`) plus what exact resume needs."""
    return {"opt": cfg.to_dict(), "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "epoch": epoch, "step_in_epoch": step_in_epoch, "method": cfg.method, "arch": cfg.arch,
            "rng": rng_state(), "format": FORMAT}


def teacher_is_current(ckpt: dict[str, Any]) -> bool:
    return ckpt.get("format") == FORMAT


def verify(path: Path, trust_code: bool = False) -> dict[str, Any]:
    """Load a checkpoint, first checking its sha256 sidecar when there is one; raise ValueError if corrupt,
    UnsafeCheckpoint if it holds a type the safe reader refuses."""
    sidecar = checksum_path(path.resolve())
    if sidecar.is_file():
        expected = sidecar.read_bytes().split()[0].decode()
        if file_sha256(path) != expected:
            raise ValueError(f"its sha256 does not match {sidecar.name}: the file is corrupt or truncated")
    state = reader.load(path, trust_code)
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not a training checkpoint")
    return state


def load_checkpoint(path: str | Path, trust_code: bool = False) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist (--resume)")
    try:
        return verify(path, trust_code)
    except reader.UnsafeCheckpoint:
        raise
    except Exception as err:
        raise UsageError(f"checkpoint {path} cannot be read ({reader.failure_reason(err)}); it may be truncated: "
                         f"resume from an earlier checkpoint, or use --resume auto to pick the newest good one"
                         ) from None


def checkpoints_newest_first(run_dir: Path, steps_per_epoch: int = 1) -> list[Path]:
    """By training progress read from the names (ckpt_step_N: N steps; ckpt_epoch_E: E epochs), not by mtime,
    so a copied run folder keeps its order; a rolling file before an epoch file at the same point. A
    ckpt_last.pth that is a plain file (runs of older versions) comes first."""
    ranked = []
    for path in run_dir.glob("ckpt_*.pth"):
        if match := STEP_FILE.match(path.name):
            ranked.append(((int(match.group(1)), 1), path))
        elif match := EPOCH_FILE.match(path.name):
            ranked.append(((int(match.group(1)) * steps_per_epoch, 0), path))
        elif path.name == LAST and not path.is_symlink() and path.is_file():
            ranked.append(((float("inf"), 2), path))
    return [path for _, path in sorted(ranked, key=lambda item: item[0], reverse=True)]


def load_latest(run_dir: Path, warn=print, steps_per_epoch: int = 1,
                trust_code: bool = False) -> tuple[Path, dict[str, Any]] | None:
    """The newest good checkpoint of a run folder (`--resume auto`); a bad one is named and the previous used.
    A file the safe reader refuses stops the search: it was put there, it did not go bad by accident."""
    skipped: list[str] = []
    for path in checkpoints_newest_first(run_dir, steps_per_epoch):
        try:
            state = verify(path, trust_code)
        except reader.UnsafeCheckpoint:
            raise
        except Exception as err:
            skipped.append(f"{path} ({reader.failure_reason(err)})")
            continue
        for bad in skipped:
            warn(f"warning: checkpoint {bad} is unreadable; resuming from {path} instead")
        return path, state
    for bad in skipped:
        warn(f"warning: checkpoint {bad} is unreadable and no earlier good checkpoint exists")
    return None


def check_compatible(ckpt: dict[str, Any], cfg, path: Path) -> None:
    method = reader.method_of(ckpt)
    arch = ckpt.get("arch", reader.training_options(ckpt).get("arch"))
    if method and method != cfg.method:
        raise UsageError(f"checkpoint {path} was trained with --method {method}, not {cfg.method}: "
                         f"resume with --method {method} or start a new run folder")
    if arch and arch != cfg.arch:
        raise UsageError(f"checkpoint {path} holds a {arch}, not a {cfg.arch}: resume with --arch {arch}")
