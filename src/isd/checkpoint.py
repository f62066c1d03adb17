"""Checkpoints: the one module that reads and writes them.

Reading: a checkpoint is a pickle, and a pickle can name any callable to run on load. Files are therefore read
with `torch.load(weights_only=True)`: only tensors, containers, numbers, strings and the few types on the
allow-list below can be built. That list holds what the original scripts' files and ours contain besides those:
the original's options (an `argparse.Namespace`) and the numpy arrays in the RNG state of checkpoints that earlier
versions of isd wrote. Anything else is refused with one line naming the file and the type, before it runs. The
`trust_checkpoint_code` setting unpickles a file the user vouches for without limits. Every layout is read: ours,
the original code's (`encoder_q.module.*`, bare queue buffers), `module.encoder_q.*`, a plain state_dict.

Writing: atomically, with a sha256 sidecar (isd.runtime), under the original's file names and top-level keys, with
the RNG state for an exact resume.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torchvision import models as tv_models

from isd.errors import CheckpointWriteError, SettingError, UsageError
from isd.nets.backbones import MOBILENETS, build_backbone, feature_dim, teacher_with_student_bn
from isd.runtime import checksum_path, file_sha256, write_checked

LAST = "ckpt_last.pth"  # a link to the newest rolling checkpoint
STEP_FILE = re.compile(r"ckpt_step_(\d+)\.pth$")
EPOCH_FILE = re.compile(r"ckpt_epoch_(\d+)\.pth$")
# /2: the teacher includes the update after the last optimizer step. In /1 and in the original's files it still
# owes that update, which the original makes at the top of its next forward: resume makes it first.
FORMAT = "isd-ssl/2"
# the original keeps its queue as bare buffers of the model: name there -> name in our MemoryQueue
ORIGINAL_BUFFERS = {"queue": "queue.queue", "queue_ptr": "queue.ptr", "labels": "queue.labels"}
ENCODERS = ("student", "teacher")
_BLOCKS = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}


class UnsafeCheckpoint(SettingError):
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
        raise UnsafeCheckpoint("checkpoint {path} holds {refused}, which isd does not unpickle from a file it cannot "
                               "trust (it could run code); nothing was loaded or run. Only if you made this file or "
                               "trust its source, pass {trust_checkpoint_code}", path=path, refused=refused) from None


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


# ----------------------------------------------------------------------------------------------- layouts


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


# ----------------------------------------------------------------------------------------------- training checkpoints


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
        raise CheckpointWriteError("{reason} while writing checkpoint {path} ({why}); {kept}. Free space in {folder} "
                                   "(or pass another {run_dir}) and rerun with {resume} auto", reason=reason,
                                   path=path, why=err.strerror or err, kept=kept, folder=path.parent) from None


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
    name, keys, *rest = cast(tuple, np.random.get_state())
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


def make_checkpoint(cfg, model, optimizer, epoch: int, step_in_epoch: int = 0,
                    stem: str | None = None) -> dict[str, Any]:
    """Top-level keys of the original (`opt`, `state_dict`, `optimizer`, `epoch`) plus what exact resume needs, and
    the stem the backbone was built with (`stem: auto` resolved: a MobileNet's weights do not show it)."""
    return {"opt": cfg.to_dict(), "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "epoch": epoch, "step_in_epoch": step_in_epoch, "method": cfg.method, "arch": cfg.arch,
            "stem": stem or cfg.stem, "rng": rng_state(), "format": FORMAT}


def teacher_is_current(ckpt: dict[str, Any]) -> bool:
    return ckpt.get("format") == FORMAT


def verify(path: Path, trust_code: bool = False) -> dict[str, Any]:
    """Load a checkpoint, first checking its sha256 sidecar when there is one; raise ValueError if corrupt or not a
    dict, UnsafeCheckpoint if it holds a type the safe reader refuses."""
    sidecar = checksum_path(path.resolve())
    if sidecar.is_file():
        expected = sidecar.read_bytes().split()[0].decode()
        if file_sha256(path) != expected:
            raise ValueError(f"its sha256 does not match {sidecar.name}: the file is corrupt or truncated")
    state = load(path, trust_code)
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not a dict of weights (a training checkpoint or a "
                         f"state_dict)")
    return state


def read(path: str | Path, trust_code: bool = False) -> dict[str, Any]:
    """A checkpoint file of any layout as a dict, or one line (UsageError) naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        return verify(path, trust_code)
    except UnsafeCheckpoint:
        raise
    except Exception as err:
        raise UsageError(f"checkpoint {path} cannot be read ({failure_reason(err)})") from None


def read_for_resume(path: str | Path, trust_code: bool = False) -> dict[str, Any]:
    try:
        return read(path, trust_code)
    except UnsafeCheckpoint:
        raise
    except UsageError as err:
        raise SettingError("{why}; it may be truncated: resume from an earlier checkpoint, or use {resume} auto to "
                           "pick the newest good one", why=err) from None


def checkpoints_newest_first(run_dir: Path, steps_per_epoch: int = 1) -> list[Path]:
    """By training progress read from the names (ckpt_step_N: N steps; ckpt_epoch_E: E epochs), not by mtime,
    so a copied run folder keeps its order; a rolling file before an epoch file at the same point. A
    ckpt_last.pth that is a plain file (runs of older versions) comes first."""
    ranked: list[tuple[tuple[float, int], Path]] = []
    for path in run_dir.glob("ckpt_*.pth"):
        if match := STEP_FILE.match(path.name):
            ranked.append(((int(match.group(1)), 1), path))
        elif match := EPOCH_FILE.match(path.name):
            ranked.append(((int(match.group(1)) * steps_per_epoch, 0), path))
        elif path.name == LAST and not path.is_symlink() and path.is_file():
            ranked.append(((float("inf"), 2), path))
    return [path for _, path in sorted(ranked, key=lambda item: item[0], reverse=True)]


def load_latest(run_dir: Path, warn: Callable[[str], None] = print, steps_per_epoch: int = 1,
                trust_code: bool = False) -> tuple[Path, dict[str, Any]] | None:
    """The newest good checkpoint of a run folder (`resume: auto`); a bad one is named and the previous used.
    A file the safe reader refuses stops the search: it was put there, it did not go bad by accident."""
    skipped: list[str] = []
    for path in checkpoints_newest_first(run_dir, steps_per_epoch):
        try:
            state = verify(path, trust_code)
        except UnsafeCheckpoint:
            raise
        except Exception as err:
            skipped.append(f"{path} ({failure_reason(err)})")
            continue
        for bad in skipped:
            warn(f"warning: checkpoint {bad} is unreadable; resuming from {path} instead")
        return path, state
    for bad in skipped:
        warn(f"warning: checkpoint {bad} is unreadable and no earlier good checkpoint exists")
    return None


def check_compatible(ckpt: dict[str, Any], cfg, path: Path) -> None:
    method = method_of(ckpt)
    arch = ckpt.get("arch", training_options(ckpt).get("arch"))
    if method and method != cfg.method:
        raise SettingError("checkpoint {path} was trained with {method} {theirs}, not {ours}: resume with {method} "
                           "{theirs} or start a new run folder", path=path, theirs=method, ours=cfg.method)
    if arch and arch != cfg.arch:
        raise SettingError("checkpoint {path} holds a {theirs}, not a {ours}: resume with {arch} {theirs}", path=path,
                           theirs=arch, ours=cfg.arch)


# ----------------------------------------------------------------------------------------------- backbones


def split_encoders(ckpt: dict[str, Any], name: str) -> tuple[str, dict[str, Tensor], dict[str, Tensor] | None]:
    """(layout, student backbone weights, teacher backbone weights or None), heads and queue dropped."""
    state = raw_model_state(ckpt)
    if not isinstance(state, dict):
        raise UsageError(f"checkpoint {name}: 'state_dict' is a {type(state).__name__}, not a dict of tensors")
    state = {k: v for k, v in our_layout(state).items() if isinstance(v, Tensor)}

    def part(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix):]: v for k, v in state.items()
                if k.startswith(prefix) and not k[len(prefix):].startswith("fc.")}

    if any(k.startswith("encoder_q.") for k in state):
        layout = "isd" if str(ckpt.get("format", "")).startswith("isd-ssl") else "original"
        return layout, part("encoder_q."), part("encoder_k.") or None
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state) or "features.0.0.weight" in state:
        return "plain", part(""), None
    seen = ", ".join(list(state)[:6]) or ", ".join(map(str, list(ckpt)[:6])) or "nothing"
    raise UsageError(f"checkpoint {name}: unknown layout (keys seen: {seen}); expected an isd/original training "
                     f"checkpoint (encoder_q.*) or a torchvision ResNet state_dict (conv1.weight, layer1.*)")


MOBILENET_BLOCKS = {19: "mobilenet_v2", 13: "mobilenet_v3_small", 17: "mobilenet_v3_large"}


def mobilenet_weights(weights: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """A MobileNet's weights under torchvision's names (`features.*`), from a method's `body.features.*` too;
    None for any other network."""
    for prefix in ("", "body."):
        if f"{prefix}features.0.0.weight" in weights:
            return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    return None


def infer_shape(weights: dict[str, Tensor], name: str, ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """arch, stem, width and input channels, read from the weights themselves (a MobileNet's stem from the
    checkpoint, which records it)."""
    mobile = mobilenet_weights(weights)
    if mobile is not None:
        count = len({k.split(".")[1] for k in mobile if k.startswith("features.")})
        arch = (ckpt or {}).get("arch") if (ckpt or {}).get("arch") in MOBILENETS else MOBILENET_BLOCKS.get(count)
        if arch is None:
            raise UsageError(f"checkpoint {name}: a MobileNet with {count} feature blocks matches none of "
                             f"{', '.join(MOBILENETS)}")
        stem = (ckpt or {}).get("stem")
        return {"arch": arch, "stem": stem if stem in ("small", "imagenet") else "imagenet", "width": 64,
                "in_channels": mobile["features.0.0.weight"].shape[1]}
    if "conv1.weight" not in weights:
        raise UsageError(f"checkpoint {name}: the encoder has no conv1.weight; it is not a ResNet backbone")
    conv1 = weights["conv1.weight"]
    if "layer1.0.conv3.weight" in weights:
        arch = "resnet50"
    else:
        blocks = tuple(len({k.split(".")[1] for k in weights if k.startswith(f"layer{i}.")}) for i in range(1, 5))
        if blocks not in _BLOCKS:
            raise UsageError(f"checkpoint {name}: blocks per stage {blocks} match no supported ResNet "
                             f"(resnet18 2,2,2,2; resnet34 3,4,6,3; resnet50 bottlenecks)")
        arch = _BLOCKS[blocks]
    return {"arch": arch, "stem": "small" if conv1.shape[-1] == 3 else "imagenet", "width": conv1.shape[0],
            "in_channels": conv1.shape[1]}


def _build(shape: dict[str, Any], weights: dict[str, Tensor], name: str) -> nn.Module:
    net = build_backbone(shape["arch"], shape["stem"], shape["width"], shape["in_channels"])
    weights = mobilenet_weights(weights) or weights if shape["arch"] in MOBILENETS else weights
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        detail = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err))
        raise UsageError(f"checkpoint {name}: weights do not fit a {shape['arch']} ({detail[:200]})") from None
    return net.eval()


def load_backbone(path_or_ckpt: str | Path | dict[str, Any], encoder: str = "student", arch: str | None = None,
                  trust_checkpoint_code: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone (fc = Identity, eval mode) and an info dict (layout, arch, stem, width, opt...).

    `teacher` gives the teacher's weights with the student's BatchNorm running statistics (as the original's
    teacher evaluation, docs/faithfulness.md); `arch`, when given, must match the architecture found in the
    weights. A file is read by the safe reader (above); `trust_checkpoint_code=True` lifts its limits for a file
    you trust.
    """
    if encoder not in ENCODERS:
        raise SettingError("unknown encoder {name!r} ({encoder}); choose student or teacher", name=encoder)
    if isinstance(path_or_ckpt, dict):
        ckpt, name, where = path_or_ckpt, "(in memory)", None
    else:
        ckpt, name, where = read(path_or_ckpt, trust_checkpoint_code), str(path_or_ckpt), Path(path_or_ckpt)
    layout, student_w, teacher_w = split_encoders(ckpt, name)
    shape = infer_shape(student_w, name, ckpt)
    if arch and arch != shape["arch"]:
        raise SettingError("checkpoint {name} holds {theirs} weights, not {ours} ({arch}); use {arch} {theirs} or "
                           "leave it out", name=name, theirs=shape["arch"], ours=arch)
    net = _build(shape, student_w, name)
    if encoder == "teacher":
        if teacher_w is None:
            raise SettingError("checkpoint {name} has no teacher (encoder_k.*; layout {layout!r}): use {encoder} "
                               "student", name=name, layout=layout)
        net = teacher_with_student_bn(_build(shape, teacher_w, name), net).eval()
    opt = training_options(ckpt)
    info = {**shape, "layout": layout, "encoder": encoder, "feature_dim": feature_dim(shape["arch"], shape["width"]),
            "method": method_of(ckpt), "epoch": ckpt.get("epoch"),
            "image_size": opt.get("image_size"), "dataset": opt.get("dataset"),
            "torchvision_compatible": shape["stem"] == "imagenet" and shape["width"] == 64
            and shape["in_channels"] == 3}
    if shape["arch"] in MOBILENETS:
        info["torchvision_compatible"] = False  # its classifier is an Identity: torchvision's has a Linear
    if where is not None:
        info["checkpoint"] = str(where.resolve())
    return net, info


# ----------------------------------------------------------------------------------------------- teachers


TORCHVISION = "torchvision:"


def load_teacher(spec: str, encoder: str = "student",
                 trust_checkpoint_code: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """A frozen teacher for distillation (pooled features out, eval mode) and its info: a checkpoint of isd, of
    the original code or a plain ResNet state_dict (`load_backbone`, read by the safe reader), or torchvision's
    pretrained weights as `torchvision:ARCH[:WEIGHTS]` (WEIGHTS defaults to DEFAULT), downloaded where there is
    internet."""
    if not spec.startswith(TORCHVISION):
        net, info = load_backbone(spec, encoder, trust_checkpoint_code=trust_checkpoint_code)
        return net, info
    arch, _, weights_name = spec[len(TORCHVISION):].partition(":")
    if arch not in tv_models.list_models(tv_models):
        raise SettingError("teacher {spec}: torchvision has no model {arch!r} ({teacher}); e.g. "
                           "torchvision:resnet50:IMAGENET1K_V2", spec=spec, arch=arch)
    enum = tv_models.get_model_weights(arch)
    try:
        weights = enum[weights_name or "DEFAULT"]
    except KeyError:
        raise SettingError("teacher {spec}: {arch} has no weights {name!r} ({teacher}); it has {names}", spec=spec,
                           arch=arch, name=weights_name, names=", ".join(w.name for w in enum)) from None
    net = tv_models.get_model(arch)
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as err:  # offline, proxy, a truncated file...
        raise SettingError("teacher {spec}: its weights could not be downloaded ({why}); without internet, put "
                           "{file} there (from {url}), or pass a weights file as {teacher}", spec=spec,
                           why=type(err).__name__, file=file, url=weights.url) from None
    net.load_state_dict(state)
    head = "fc" if isinstance(getattr(net, "fc", None), nn.Module) else "classifier"
    if not isinstance(getattr(net, head, None), nn.Module):
        raise SettingError("teacher {spec}: {arch} has no fc or classifier head to remove; use a ResNet, MobileNet "
                           "or EfficientNet ({teacher})", spec=spec, arch=arch)
    setattr(net, head, nn.Identity())
    info = {"arch": arch, "weights": weights.name, "in_channels": 3, "layout": "torchvision", "encoder": "student",
            "image_size": weights.transforms().crop_size[0] if hasattr(weights.transforms(), "crop_size") else None,
            "checkpoint": str(file)}
    return net.eval(), info
