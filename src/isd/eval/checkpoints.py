"""A frozen backbone from any checkpoint: ours, the original code's (`encoder_q.module.*`, `module.encoder_q.*`),
or a plain state_dict. Files are read by the safe reader, `isd.checkpoint_reader`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from isd import checkpoint_reader as reader
from isd.errors import UsageError
from isd.eval.features import teacher_with_student_bn
from isd.nets.backbones import build_backbone, feature_dim

ENCODERS = ("student", "teacher")
_BLOCKS = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}


def read_checkpoint(path: str | Path, trust_code: bool = False) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        obj = reader.load(path, trust_code)
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(f"checkpoint {path} cannot be read ({reader.failure_reason(err)})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of weights (a state_dict "
                         f"or {{'state_dict': ...}})")
    return obj


def split_encoders(ckpt: dict[str, Any], name: str) -> tuple[str, dict[str, Tensor], dict[str, Tensor] | None]:
    """(layout, student backbone weights, teacher backbone weights or None), heads and queue dropped."""
    state = reader.raw_model_state(ckpt)
    if not isinstance(state, dict):
        raise UsageError(f"checkpoint {name}: 'state_dict' is a {type(state).__name__}, not a dict of tensors")
    state = {k: v for k, v in reader.our_layout(state).items() if isinstance(v, Tensor)}

    def part(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix):]: v for k, v in state.items()
                if k.startswith(prefix) and not k[len(prefix):].startswith("fc.")}

    if any(k.startswith("encoder_q.") for k in state):
        layout = "isd" if str(ckpt.get("format", "")).startswith("isd-ssl") else "original"
        return layout, part("encoder_q."), part("encoder_k.") or None
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
        return "plain", part(""), None
    seen = ", ".join(list(state)[:6]) or ", ".join(map(str, list(ckpt)[:6])) or "nothing"
    raise UsageError(f"checkpoint {name}: unknown layout (keys seen: {seen}); expected an isd/original training "
                     f"checkpoint (encoder_q.*) or a torchvision ResNet state_dict (conv1.weight, layer1.*)")


def infer_shape(weights: dict[str, Tensor], name: str) -> dict[str, Any]:
    """arch, stem, width and input channels, read from the weights themselves."""
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
    weights. A file is read by the safe reader (isd.checkpoint_reader); `trust_checkpoint_code=True` lifts its
    limits for a file you trust.
    """
    if encoder not in ENCODERS:
        raise UsageError(f"unknown encoder '{encoder}' (--encoder); choose student or teacher")
    is_path = not isinstance(path_or_ckpt, dict)
    name = str(path_or_ckpt) if is_path else "(in memory)"
    ckpt = read_checkpoint(path_or_ckpt, trust_checkpoint_code) if is_path else path_or_ckpt
    layout, student_w, teacher_w = split_encoders(ckpt, name)
    shape = infer_shape(student_w, name)
    if arch and arch != shape["arch"]:
        raise UsageError(f"checkpoint {name} holds {shape['arch']} weights, not {arch} (--arch); "
                         f"use --arch {shape['arch']} or leave it out")
    net = _build(shape, student_w, name)
    if encoder == "teacher":
        if teacher_w is None:
            raise UsageError(f"checkpoint {name} has no teacher (encoder_k.*; layout '{layout}'): "
                             f"use --encoder student")
        net = teacher_with_student_bn(_build(shape, teacher_w, name), net).eval()
    opt = reader.training_options(ckpt)
    info = {**shape, "layout": layout, "encoder": encoder, "feature_dim": feature_dim(shape["arch"], shape["width"]),
            "method": reader.method_of(ckpt), "epoch": ckpt.get("epoch"),
            "image_size": opt.get("image_size"), "dataset": opt.get("dataset"),
            "torchvision_compatible": shape["stem"] == "imagenet" and shape["width"] == 64
            and shape["in_channels"] == 3}
    if is_path:
        info["checkpoint"] = str(Path(path_or_ckpt).resolve())
    return net, info
