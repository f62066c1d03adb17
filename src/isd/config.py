"""Run configuration: one dataclass, recipes shipped as YAML, `--set key=value` overrides, validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from isd.errors import SettingError, UsageError
from isd.runtime import path_problem

METHODS = ("isd", "isd-plus", "byol", "moco", "supervised", "distill")
ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
AUGMENTATIONS = ("weak", "strong")
SAME_VIEW = "same"  # as the key recipe: the teacher sees the student's own view (distillation: one view)
DATASETS = ("folder", "imagenet", "imagenet100", "fashion-mnist", "mnist", "cifar10", "cifar100")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
TORCHVISION = "torchvision:"  # a teacher named by torchvision's weights, e.g. torchvision:resnet50:IMAGENET1K_V2


@dataclass
class Config:
    # what to train
    method: str = "isd"
    arch: str = "resnet18"
    stem: str = "auto"  # imagenet (7x7/2 + maxpool) | small (3x3/1, no maxpool) | auto: small below 64 px
    width: int = 64  # channels of the first residual stage; 64 is torchvision's ResNet
    # data
    data: str = ""  # ImageFolder root (with train/) or the folder holding a built-in set's files
    dataset: str = "folder"
    subset_file: str | None = None
    image_size: int | None = None  # None: 224 for folders, native size for 28-32 px sets
    augmentation: str = "strong/strong"  # KEY(teacher)/QUERY(student)
    crop_scale: tuple[float, float] = (0.2, 1.0)
    blur_prob: float = 0.5  # probability of the strong recipe's Gaussian blur (0 = no blur)
    holdout: int = 0  # train images held out as a validation split (never trained on; for tuning)
    common_classes: int = 0  # unbalanced data: this many classes keep all images (0 = balanced) ...
    rare_per_class: int = 500  # ... the others keep this many
    draw: int = 1  # which classes are common and which images the rare ones keep
    imbalance_ratio: float = 0.0  # long-tailed data: class c keeps n_max * ratio**(-c/(C-1)) images (0 = off)
    max_train_images: int = 0  # train on a fixed seeded subset of N images (0 = all)
    in_memory: str = "auto"  # folders of small images decoded once into memory: auto | on | off (isd.data.memory)
    download: bool = False  # CIFAR: fetch torchvision's copy into `data` when it is not there
    num_workers: int = 8
    data_pipeline: str = "auto"  # image files: auto (device on a GPU) | workers (PIL per image) | device (batched)
    # optimisation
    epochs: int = 200
    batch_size: int = 256  # global batch, split across processes
    lr: float = 0.01
    sgd_momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"  # step | cos
    lr_decay_epochs: tuple[int, ...] = (140, 180)
    lr_decay_rate: float = 0.2
    # method
    ema: float = 0.999  # teacher momentum m
    queue_size: int = 128000
    temp_student: float = 0.02  # ISD, ISD+: the student's temperature (ISD's one T)
    temp_teacher: float | None = None  # ISD, ISD+: the teacher's temperature; None = temp_student
    temp_infonce: float = 0.2  # MoCo: the InfoNCE temperature
    # distillation (method distill, CompRess): a frozen teacher
    teacher: str | None = None  # checkpoint or state_dict file, or torchvision:ARCH[:WEIGHTS]
    teacher_encoder: str = "student"  # which encoder of an isd / original checkpoint teaches
    distill_variant: str = "2q"  # 2q: the student compares with a queue of its momentum key encoder | 1q: the teacher's
    teacher_cache: bool = False  # one teacher pass over the unaugmented images, reused every epoch
    # engine
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (bf16 on CUDA and on a CPU with native bf16) | bf16 | off
    channels_last: str = "auto"  # auto (on) | on | off
    compile: str = "off"  # torch.compile the networks: off | default | reduce-overhead (CUDA graphs) | max-autotune
    seed: int = 0
    deterministic: bool = False
    sync_bn: bool = False
    # run folder and checkpoints
    run_dir: str = "runs/isd"
    save_freq: int = 10  # also keep ckpt_epoch_N.pth every N epochs (never pruned)
    ckpt_every_steps: int = 0  # mid-epoch checkpoint every N steps (0 = only at epoch ends)
    keep_checkpoints: int = 3  # rolling ckpt_step_*.pth files kept (the newest N)
    on_nonfinite: str = "stop"  # stop | skip: what a non-finite loss or gradient does
    print_freq: int = 100
    resume: str | None = None  # PATH or "auto"
    eval_every: int = 0  # kNN on the labelled held-out split every N epochs (0 = never)
    eval_max_images: int = 0  # cap the kNN bank and query set of --eval-every at N images each (0 = all)
    max_bad_fraction: float = 0.01  # stop when more than this fraction of an epoch's images is unreadable
    recipe: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @property
    def key_aug(self) -> str:
        return self.augmentation.split("/")[0]

    @property
    def query_aug(self) -> str:
        return self.augmentation.split("/")[1]



FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# the original scripts' names, still read from their flags, recipes, plans and older checkpoints: `temp` was the
# one temperature of every method (ISD's T, MoCo's InfoNCE T), `temp_t` the teacher's
ALIASES = ("temp", "temp_t")


def alias_target(name: str, method: str) -> str:
    if name == "temp_t":
        return "temp_teacher"
    return "temp_infonce" if method == "moco" else "temp_student"


def recipe_names() -> list[str]:
    folder = resources.files("isd") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name: str) -> dict[str, Any]:
    if name not in recipe_names():
        raise SettingError("unknown recipe {name!r} ({recipe}); available: {names} (see `isd recipes`)", name=name,
                           names=", ".join(recipe_names()))
    text = (resources.files("isd") / "recipes" / f"{name}.yaml").read_text()
    values = yaml.safe_load(text) or {}
    values.pop("description", None)
    return values


def recipe_description(name: str) -> str:
    text = (resources.files("isd") / "recipes" / f"{name}.yaml").read_text()
    return str((yaml.safe_load(text) or {}).get("description", "")).strip()


def _coerce(name: str, raw: Any) -> Any:
    """Turn a YAML/`--set` value into the field's type, or explain which flag is wrong."""
    default = FIELDS[name].default
    optional = "None" in str(FIELDS[name].type)
    if raw is None or (optional and str(raw).strip().lower() in ("none", "null", "")):
        if not optional:
            raise UsageError(f"'{name}' needs a value: expected {_type_name(default, name)}")
        return None
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            text = str(raw).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, tuple):
            items = raw if isinstance(raw, (list, tuple)) else [s for s in str(raw).replace(" ", "").split(",") if s]
            item = float if name == "crop_scale" else int
            return tuple(item(v) for v in items)
        kind = _base_type(name)
        if kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(raw)
        if kind is float:
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise UsageError(f"bad value {raw!r} for '{name}': expected {_type_name(default, name)}") from None


def _base_type(name: str) -> type:
    """int, float or str, from the field's annotation (`int | None` -> int)."""
    annotation = str(FIELDS[name].type)
    return int if annotation.startswith("int") else float if annotation.startswith("float") else str


def _type_name(default: Any, name: str) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, tuple):
        return "a comma-separated list of numbers"
    return {int: "an integer", float: "a number", str: "a string"}[_base_type(name)]


def apply_values(cfg: Config, values: dict[str, Any], origin: str) -> Config:
    """Set each value (YAML or text) on cfg; `origin` says where they came from, in messages (a template: it may
    name a setting, `{set}`)."""
    named = [(name.replace("-", "_"), raw) for name, raw in values.items()]
    for name, raw in sorted(named, key=lambda item: item[0] in ALIASES):  # an alias after the method it depends on
        if name in ALIASES:
            name = alias_target(name, cfg.method)
        if name not in FIELDS:
            close = [f for f in FIELDS if f.startswith(name[:3])]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SettingError(f"unknown config key {{given!r}} in {origin}{{hint}} (valid keys: {{valid}})",
                               given=name, hint=hint, valid=", ".join(FIELDS))
        setattr(cfg, name, _coerce(name, raw))
    return cfg


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`key=value` texts (the `set` setting of the command lines) as values."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SettingError("{set} expects key=value, got {pair!r} (e.g. {set} epochs=10)", pair=pair)
        key, value = pair.split("=", 1)
        if key.strip().replace("-", "_") == "recipe":
            raise SettingError("'recipe' is not a {set} key: load a recipe with {recipe} NAME (see `isd recipes`)")
        out[key.strip()] = value.strip()
    return out


def build_config(recipe: str | None = None, values: dict[str, Any] | None = None,
                 overrides: list[str] | None = None, files_exist: bool = True) -> Config:
    """Defaults <- recipe <- explicit values (flags) <- `key=value` overrides, then validated. `files_exist=False`
    checks the values only, not that the files they name (teacher, subset file, resume checkpoint) exist yet: an
    experiment plan may name a file another plan's cells will make."""
    cfg = Config()
    if recipe:
        apply_values(cfg, load_recipe(recipe), f"recipe '{recipe}'")
        cfg.recipe = recipe
    apply_values(cfg, values or {}, "the given values")
    apply_values(cfg, parse_overrides(overrides or []), "{set}")
    validate(cfg, files_exist)
    return cfg


# ----------------------------------------------------------------------------------------------- ranges


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    note: str = ""  # why, or an example

    def holds(self, v: float) -> bool:
        return (self.low is None or (v > self.low if self.open_low else v >= self.low)) and \
            (self.high is None or (v < self.high if self.open_high else v <= self.high))

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {_num(self.low)}"
        return f"{'<' if self.open_high else '<='} {_num(self.high)}"


def _num(x: float | None) -> str:
    if x is None:
        return "any"
    if x >= 2**16 and float(x).is_integer() and int(x) & (int(x) - 1) == 0:
        return f"2**{int(x).bit_length() - 1}"
    return f"{x:g}"


# The ranges of the settings that training and evaluation share, and of training's own. Evaluation checks its
# values with `check_range` against this table too (isd.eval.protocols), with its own entries beside it.
RANGES = {
    "epochs": Range(1), "lr": Range(0, open_low=True), "seed": Range(0, 2**32, open_high=True),
    "num_workers": Range(0, 256), "image_size": Range(8, 1024),
    "batch_size": Range(2, note="BatchNorm needs two samples"), "sgd_momentum": Range(0, 1, open_high=True),
    "weight_decay": Range(0), "lr_decay_rate": Range(0, 1, open_low=True, note="lr *= rate at each decay epoch"),
    "lr_decay_epochs": Range(1, note="epochs, e.g. 140,180"), "width": Range(8, 1024, note="64 is torchvision's"),
    "ema": Range(0, 1, open_high=True), "temp_student": Range(1e-3, note="ISD uses 0.02"),
    "temp_teacher": Range(1e-3), "temp_infonce": Range(1e-3, note="MoCo-v2 uses 0.2"), "save_freq": Range(1),
    "print_freq": Range(1), "ckpt_every_steps": Range(0, note="0 = epoch ends only"), "keep_checkpoints": Range(1),
    "eval_every": Range(0, note="0 = never"), "eval_max_images": Range(0, note="0 = all"), "blur_prob": Range(0, 1),
    "holdout": Range(0, note="0 = off"), "common_classes": Range(0, note="0 = off"),
    "max_train_images": Range(0, note="0 = off"), "rare_per_class": Range(1),
    "imbalance_ratio": Range(0, 10**6, note="0 = off; CIFAR-10-LT uses 100"), "max_bad_fraction": Range(0, 1),
    "queue_size": Range(0, 2**24, note="the paper's is 128000"),
}


def check_range(key: str, value: Any, rule: Range | None = None) -> None:
    """SettingError naming `key` unless every number of `value` (one, or a tuple) is finite and in its range."""
    rule = rule or RANGES[key]
    for v in value if isinstance(value, (tuple, list)) else (value,):
        if v is None or isinstance(v, (bool, str)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise SettingError("{%s} must be a finite number, got {got}" % key, got=v)
        if isinstance(v, int) and not -2**63 < v < 2**63:
            raise SettingError("{%s} must be an integer below 2**63, got {got}" % key, got=v)
        if not rule.holds(v):
            note = f" ({rule.note})" if rule.note else ""
            raise SettingError("{%s} must be %s%s, got {got}" % (key, rule, note), got=_shown(value))


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def validate(cfg: Config, files_exist: bool = True) -> None:
    """Every check that needs no data and no model: runs before anything is loaded."""
    for name in FIELDS:
        check_range(name, getattr(cfg, name), RANGES.get(name, Range()))
    _check_choices(cfg)
    if cfg.method in ("isd", "isd-plus", "moco", "distill"):
        if cfg.queue_size < cfg.batch_size or cfg.queue_size % cfg.batch_size:
            raise SettingError("{queue_size} {queue} must be a multiple of the global {batch_size} {batch} "
                               "(e.g. {queue_size} {fit})", queue=cfg.queue_size, batch=cfg.batch_size,
                               fit=max(1, cfg.queue_size // cfg.batch_size) * cfg.batch_size)
    if cfg.method == "distill" and not cfg.teacher:
        raise SettingError("method distill needs a {teacher}: a checkpoint or state_dict file, or "
                           "torchvision:ARCH[:WEIGHTS] (e.g. torchvision:resnet50:IMAGENET1K_V2)")
    if cfg.method in ("isd", "isd-plus", "byol", "moco", "supervised") and cfg.key_aug == SAME_VIEW:
        raise SettingError("{augmentation} {got}: KEY same (one view for teacher and student) is distillation's; "
                           "{method} {method_name} compares two views, e.g. strong/strong", got=cfg.augmentation,
                           method_name=cfg.method)
    if 0 < cfg.imbalance_ratio < 1:
        raise SettingError("{imbalance_ratio} is the largest class's size over the smallest's: 0 (off) or >= 1, "
                           "got {got}", got=cfg.imbalance_ratio)
    if cfg.imbalance_ratio and cfg.common_classes:
        raise SettingError("{imbalance_ratio} (a long tail) and {common_classes} (common and rare classes) are two "
                           "ways of unbalancing the data: set one of them")
    if not (len(cfg.crop_scale) == 2 and 0 < cfg.crop_scale[0] <= cfg.crop_scale[1] <= 1):
        raise SettingError("{crop_scale} must be two numbers 0 < lo <= hi <= 1, got {got}", got=cfg.crop_scale)
    _check_paths(cfg, files_exist)


def _check_choices(cfg: Config) -> None:
    choices = {"method": METHODS, "arch": ARCHS, "dataset": DATASETS, "stem": ("auto", "imagenet", "small"),
               "schedule": ("step", "cos"), "device": ("auto", "cpu", "cuda"), "amp": ("auto", "bf16", "off"),
               "data_pipeline": ("auto", "workers", "device"), "in_memory": ("auto", "on", "off"),
               "channels_last": ("auto", "on", "off"), "on_nonfinite": ("stop", "skip"),
               "distill_variant": ("1q", "2q"), "teacher_encoder": ("student", "teacher"),
               "compile": COMPILE_MODES}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise SettingError("unknown %s {got!r} ({%s}); choose from {allowed}" % (name.replace("_", " "), name),
                               got=getattr(cfg, name), allowed=", ".join(allowed))
    parts = cfg.augmentation.split("/")
    if not (len(parts) == 2 and parts[0] in (*AUGMENTATIONS, SAME_VIEW) and parts[1] in AUGMENTATIONS):
        raise SettingError("bad {augmentation} {got!r}: use KEY/QUERY with weak or strong, e.g. weak/strong (KEY "
                           "same: the teacher sees the student's view)", got=cfg.augmentation)


def _check_paths(cfg: Config, files_exist: bool) -> None:
    if cfg.dataset in ("folder", "imagenet", "imagenet100") and not cfg.data:
        raise SettingError("no data folder given: pass {data} (a folder with train/ inside), or {dataset} "
                           "fashion-mnist")
    if not cfg.run_dir:
        raise SettingError("the run folder is empty ({run_dir}): pass a folder, e.g. runs/isd")
    for name in ("data", "run_dir", "subset_file", "resume") + (() if str(cfg.teacher).startswith(TORCHVISION)
                                                                else ("teacher",)):
        problem = path_problem(getattr(cfg, name)) if getattr(cfg, name) else None
        if problem is not None:
            raise SettingError("{%s} {path}: {problem}; pass a usable path" % name, path=getattr(cfg, name),
                               problem=problem)
    if not files_exist:
        return
    if cfg.subset_file and not Path(cfg.subset_file).is_file():
        raise SettingError("{subset_file} {path} does not exist", path=cfg.subset_file)
    if cfg.method == "distill" and not str(cfg.teacher).startswith(TORCHVISION) and not Path(
            str(cfg.teacher)).is_file():
        raise SettingError("teacher {path} does not exist ({teacher}); pass a checkpoint or state_dict file, or "
                           "torchvision:ARCH[:WEIGHTS]", path=cfg.teacher)
    if cfg.resume and cfg.resume != "auto" and not Path(cfg.resume).is_file():
        raise SettingError("checkpoint {path} does not exist ({resume}); pass a checkpoint file, or {resume} auto "
                           "for the newest one in the run folder", path=cfg.resume)


def save_yaml(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_from_dict(values: dict[str, Any]) -> Config:
    known = {k: v for k, v in values.items() if k in FIELDS or k in ALIASES}
    return apply_values(Config(), known, "a checkpoint")
