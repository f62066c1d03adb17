"""Run configuration: one dataclass, recipes shipped as YAML, `--set key=value` overrides, validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from isd.errors import UsageError
from isd.runtime import path_problem

METHODS = ("isd", "isd-plus", "byol", "moco", "supervised")
ARCHS = ("resnet18", "resnet34", "resnet50")
AUGMENTATIONS = ("weak", "strong")
DATASETS = ("folder", "imagenet", "imagenet100", "fashion-mnist", "cifar10", "cifar100")


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
    max_train_images: int = 0  # train on a fixed seeded subset of N images (0 = all)
    num_workers: int = 8
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
    # engine
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | off
    channels_last: str = "auto"  # auto (on CUDA) | on | off
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
        raise UsageError(f"unknown recipe '{name}' (--recipe); available: {', '.join(recipe_names())} (see `isd recipes`)")
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
            kind = float if name == "crop_scale" else int
            return tuple(kind(v) for v in items)
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
    named = [(name.replace("-", "_"), raw) for name, raw in values.items()]
    for name, raw in sorted(named, key=lambda item: item[0] in ALIASES):  # an alias after the method it depends on
        if name in ALIASES:
            name = alias_target(name, cfg.method)
        if name not in FIELDS:
            close = [f for f in FIELDS if f.startswith(name[:3])]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"unknown config key '{name}' in {origin}{hint} (valid keys: {', '.join(FIELDS)})")
        if name == "recipe" and origin == "--set":
            raise UsageError("'recipe' is not a --set key: load a recipe with --recipe NAME (see `isd recipes`)")
        setattr(cfg, name, _coerce(name, raw))
    return cfg


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--set expects key=value, got '{pair}' (e.g. --set epochs=10)")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def build_config(recipe: str | None = None, values: dict[str, Any] | None = None,
                 overrides: list[str] | None = None) -> Config:
    """Defaults <- recipe <- explicit values (flags) <- `--set` overrides, then validated."""
    cfg = Config()
    if recipe:
        apply_values(cfg, load_recipe(recipe), f"recipe '{recipe}'")
        cfg.recipe = recipe
    apply_values(cfg, values or {}, "the command line")
    apply_values(cfg, parse_overrides(overrides or []), "--set")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Every check that needs no data and no model: runs before anything is loaded."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UsageError(message)

    # any number first: finite floats, integers a 64-bit value holds (torch, numpy and the seeds need both)
    flags = {"lr": "--lr / --learning_rate", "ema": "--momentum / --set ema", "temp_student": "--temp / --temp_s",
             "temp_teacher": "--temp_t", "epochs": "--epochs", "batch_size": "--batch_size", "queue_size": "--queue_size",
             "seed": "--seed", "num_workers": "--num_workers", "lr_decay_rate": "--lr_decay_rate",
             "lr_decay_epochs": "--lr_decay_epochs", "weight_decay": "--weight_decay",
             "sgd_momentum": "--sgd_momentum", "save_freq": "--save_freq", "print_freq": "--print_freq",
             "eval_every": "--eval-every", "ckpt_every_steps": "--ckpt-every-steps",
             "keep_checkpoints": "--keep-checkpoints"}
    for name in FIELDS:
        value = getattr(cfg, name)
        flag = flags.get(name, f"--set {name}")
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float):
                need(math.isfinite(v), f"{name} must be a finite number ({flag}), got {v}")
            elif isinstance(v, int) and not isinstance(v, bool):
                need(-2**63 < v < 2**63, f"{name} must be an integer below 2**63 ({flag}), got {v}")
    need(cfg.method in METHODS, f"unknown method '{cfg.method}' (--method); choose from {', '.join(METHODS)}")
    need(cfg.arch in ARCHS, f"unknown arch '{cfg.arch}' (--arch); choose from {', '.join(ARCHS)}")
    need(cfg.stem in ("auto", "imagenet", "small"), f"unknown stem '{cfg.stem}'; choose auto, imagenet or small")
    need(cfg.dataset in DATASETS, f"unknown dataset '{cfg.dataset}' (--dataset); choose from {', '.join(DATASETS)}")
    parts = cfg.augmentation.split("/")
    need(len(parts) == 2 and all(p in AUGMENTATIONS for p in parts),
         f"bad --augmentation '{cfg.augmentation}': use KEY/QUERY with weak or strong, e.g. weak/strong")
    need(cfg.schedule in ("step", "cos"), f"unknown schedule '{cfg.schedule}'; choose step or cos")
    need(cfg.device in ("auto", "cpu", "cuda"), f"unknown device '{cfg.device}'; choose auto, cpu or cuda")
    need(cfg.amp in ("auto", "bf16", "off"), f"unknown amp '{cfg.amp}'; choose auto, bf16 or off")
    need(cfg.channels_last in ("auto", "on", "off"), f"bad channels_last '{cfg.channels_last}'; choose auto, on or off")
    need(cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}")
    need(cfg.batch_size >= 2, f"--batch_size must be >= 2 (BatchNorm needs two samples), got {cfg.batch_size}")
    need(cfg.lr > 0, f"--lr / --learning_rate must be > 0, got {cfg.lr}")
    need(0.0 <= cfg.sgd_momentum < 1.0, f"--sgd_momentum must be in [0, 1), got {cfg.sgd_momentum}")
    need(cfg.weight_decay >= 0, f"--weight_decay must be >= 0, got {cfg.weight_decay}")
    need(0.0 < cfg.lr_decay_rate <= 1.0, f"--lr_decay_rate must be in (0, 1] (lr *= rate at each decay epoch), "
         f"got {cfg.lr_decay_rate}")
    need(all(e >= 1 for e in cfg.lr_decay_epochs), f"--lr_decay_epochs must be epochs >= 1 (e.g. 140,180), got "
         f"{','.join(map(str, cfg.lr_decay_epochs))}")
    need(8 <= cfg.width <= 1024, f"width must be in [8, 1024] (64 is torchvision's ResNet), got {cfg.width}")
    need(0.0 <= cfg.ema < 1.0, f"teacher momentum (--momentum / ema) must be in [0, 1), got {cfg.ema}")
    temps = (cfg.temp_student, cfg.temp_student if cfg.temp_teacher is None else cfg.temp_teacher, cfg.temp_infonce)
    need(min(temps) >= 1e-3, f"temperatures (--temp, --temp_s, --temp_t, temp_infonce) must be >= 0.001 (ISD uses "
         f"0.02), got student {temps[0]}, teacher {temps[1]}, InfoNCE {temps[2]}")
    need(cfg.save_freq >= 1 and cfg.print_freq >= 1, "--save_freq and --print_freq must be >= 1")
    need(cfg.ckpt_every_steps >= 0, f"--ckpt-every-steps must be >= 0 (0 = epoch ends only), got {cfg.ckpt_every_steps}")
    need(cfg.keep_checkpoints >= 1, f"--keep-checkpoints must be >= 1, got {cfg.keep_checkpoints}")
    need(cfg.on_nonfinite in ("stop", "skip"), f"unknown --on-nonfinite '{cfg.on_nonfinite}'; choose stop or skip")
    need(0 <= cfg.num_workers <= 256, f"--num_workers must be in [0, 256], got {cfg.num_workers}")
    need(0 <= cfg.seed < 2**32, f"--seed must be in [0, 2**32), got {cfg.seed}")
    need(cfg.eval_every >= 0, f"--eval-every must be >= 0 (0 = never), got {cfg.eval_every}")
    need(cfg.eval_max_images >= 0, f"eval_max_images must be >= 0 (0 = all), got {cfg.eval_max_images}")
    need(0 < cfg.crop_scale[0] <= cfg.crop_scale[1] <= 1 if len(cfg.crop_scale) == 2 else False,
         f"crop_scale must be two numbers 0 < lo <= hi <= 1, got {cfg.crop_scale}")
    need(cfg.image_size is None or 8 <= cfg.image_size <= 1024, f"image_size must be in [8, 1024], got {cfg.image_size}")
    need(0.0 <= cfg.blur_prob <= 1.0, f"blur_prob must be in [0, 1], got {cfg.blur_prob}")
    for name in ("holdout", "common_classes", "max_train_images"):
        need(getattr(cfg, name) >= 0, f"{name} must be >= 0 (0 = off), got {getattr(cfg, name)}")
    need(cfg.rare_per_class >= 1, f"rare_per_class must be >= 1, got {cfg.rare_per_class}")
    need(0.0 <= cfg.max_bad_fraction <= 1.0, f"max_bad_fraction must be in [0, 1], got {cfg.max_bad_fraction}")
    need(0 <= cfg.queue_size <= 2**24, f"--queue_size must be in [0, 2**24 = 16777216] (the paper's is 128000), "
         f"got {cfg.queue_size}")
    if cfg.method in ("isd", "isd-plus", "moco"):
        need(cfg.queue_size >= cfg.batch_size and cfg.queue_size % cfg.batch_size == 0,
             f"--queue_size {cfg.queue_size} must be a multiple of the global --batch_size {cfg.batch_size} "
             f"(e.g. --queue_size {max(1, cfg.queue_size // cfg.batch_size) * cfg.batch_size})")
    if cfg.dataset in ("folder", "imagenet", "imagenet100"):
        need(bool(cfg.data), "no data folder given: pass DATA (a folder with train/ inside), or --dataset fashion-mnist")
    need(bool(cfg.run_dir), "the run folder is empty (--run-dir / --checkpoint_path): pass a folder, e.g. runs/isd")
    for name, flag in (("data", "DATA"), ("run_dir", "--run-dir / --checkpoint_path"),
                       ("subset_file", "--subset-file"), ("resume", "--resume")):
        problem = path_problem(getattr(cfg, name)) if getattr(cfg, name) else None
        need(problem is None, f"{flag} {getattr(cfg, name)}: {problem}; pass a usable path")
    if cfg.subset_file:
        need(Path(cfg.subset_file).is_file(), f"--subset-file {cfg.subset_file} does not exist")
    if cfg.resume and cfg.resume != "auto":
        need(Path(cfg.resume).is_file(), f"checkpoint {cfg.resume} does not exist (--resume); pass a checkpoint "
             f"file, or --resume auto for the newest one in the run folder")


def save_yaml(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_from_dict(values: dict[str, Any]) -> Config:
    known = {k: v for k, v in values.items() if k in FIELDS or k in ALIASES}
    return apply_values(Config(), known, "a checkpoint")
