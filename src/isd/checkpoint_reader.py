"""The one way a checkpoint is read: safe unpickling, and the original code's key layout mapped onto ours.

A checkpoint is a pickle, and a pickle can name any callable to run on load. Files are therefore read with
`torch.load(weights_only=True)`: only tensors, containers, numbers, strings and the few types on the allow-list
below can be built. That list holds what the original scripts' files and ours contain besides those: the
original's options (an `argparse.Namespace`) and the numpy arrays in the RNG state of checkpoints that earlier
versions of isd wrote. Anything else is refused with one line naming the file and the type, before it runs. The
`--trust-checkpoint-code` flag (`trust_code=True` here) unpickles a file the user vouches for without limits.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from isd.cli.common import TRUST_FLAG
from isd.errors import UsageError

# the original keeps its queue as bare buffers of the model: name there -> name in our MemoryQueue
ORIGINAL_BUFFERS = {"queue": "queue.queue", "queue_ptr": "queue.ptr", "labels": "queue.labels"}


class UnsafeCheckpoint(UsageError):
    """The file needs a type outside the allow-list: nothing of it was run."""


def allowed_globals() -> list[Any]:
    """Types a checkpoint may hold besides tensors and plain containers."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed its core module
    allowed = [argparse.Namespace, core.multiarray._reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles a dtype through its class
    if dtypes is not None:
        allowed.append(dtypes.UInt32DType)  # the MT19937 key of numpy's RNG state
    return allowed


def _allowing(extra: list[Any]):
    if hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5: scoped to this load
        return torch.serialization.safe_globals(extra)
    torch.serialization.add_safe_globals(extra)  # torch 2.4 has only the process-wide list
    return contextlib.nullcontext()


def load(path: str | Path, trust_code: bool = False) -> Any:
    """The unpickled file, tensors on the CPU; UnsafeCheckpoint for a type outside the allow-list. Other
    failures (a missing, truncated or foreign file) raise as torch raises them: the caller names the fix."""
    if trust_code:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with _allowing(allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_type(path, str(err))
        if refused is None:
            raise
        raise UnsafeCheckpoint(f"checkpoint {path} holds {refused}, which isd does not unpickle from a file it "
                               f"cannot trust (it could run code); nothing was loaded or run. Only if you made "
                               f"this file or trust its source, pass {TRUST_FLAG}") from None


def failure_reason(err: BaseException) -> str:
    """Why torch could not read a file, in one short line (its weights-only messages run to a page)."""
    text = str(err).split("WeightsUnpickler error:", 1)[-1]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(err).__name__}: {line[:200]}" if line else type(err).__name__


_REFUSAL = [re.compile(p) for p in (r"GLOBAL (\S+) was not an allowed global", r"got <class '([^']+)'>",
                                      r"unrecognized function (\S+)", r"Unsupported class (\S+)")]


def _refused_type(path: str | Path, message: str) -> str | None:
    """The type a weights-only load refused, or None when the failure was something else (a corrupt file)."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5, zip files
    if finder is not None:
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in allowed_globals()}
        try:
            names = [n for n in finder(path) if n not in allowed]
        except Exception:  # a legacy (pre-1.6) file, or not a zip at all: read the message instead
            names = []
        if names:
            return ", ".join(names)
    for pattern in _REFUSAL:
        if match := pattern.search(message):
            return match[1].rstrip(".,")
    return None


# ------------------------------------------------------------------------------------------ what a file holds


def training_options(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The options a checkpoint was trained with: ours are a dict, the original's an argparse Namespace."""
    opt = ckpt.get("opt")
    if isinstance(opt, dict):
        return opt
    return dict(vars(opt)) if hasattr(opt, "__dict__") else {}


def raw_model_state(ckpt: dict[str, Any]) -> Any:
    """The weights as stored: under 'state_dict' (ours, the original's), 'model', or the file is the dict."""
    return ckpt.get("state_dict", ckpt.get("model", ckpt))


def _without_module(key: str) -> str:
    return re.sub(r"(^|\.)module\.", r"\1", key)


def our_layout(state: dict[str, Any]) -> dict[str, Any]:
    """Keys as our models name them, whichever code wrote the file.

    The original wraps each part in DataParallel (`encoder_q.module.conv1.weight`) and other code the whole
    model (`module.encoder_q...`): every `module` segment goes. Its queue buffers `queue`, `queue_ptr` (shape
    [1]) and ISD+'s `labels` become `queue.queue`, `queue.ptr` (a scalar) and `queue.labels`; ISD's original
    queue has no labels, so they start at -1 (unknown), as a fresh queue's do. Our own keys pass unchanged.
    """
    out = {}
    for key, value in state.items():
        key = _without_module(key)
        if key in ORIGINAL_BUFFERS and isinstance(value, Tensor):
            key, value = ORIGINAL_BUFFERS[key], value.reshape(()) if key == "queue_ptr" else value
        out[key] = value
    queue = out.get("queue.queue")
    if isinstance(queue, Tensor) and "queue.labels" not in out:
        out["queue.labels"] = torch.full((queue.shape[0],), -1, dtype=torch.long)
    return out


def method_of(ckpt: dict[str, Any]) -> str | None:
    """The training method: as recorded (ours), else read from an original file's weights. All three original
    scripts have a student predictor; ISD+ keeps labels beside its queue, ISD a queue without them, BYOL none."""
    recorded = ckpt.get("method", training_options(ckpt).get("method"))
    state = raw_model_state(ckpt)
    if recorded or not isinstance(state, dict):
        return recorded
    keys = {_without_module(k) for k in state}
    if not any(k.startswith("predict_q.") for k in keys):
        return None
    return "isd-plus" if "labels" in keys else "isd" if "queue" in keys else "byol"
