"""Run the cells of a plan: each one an ordinary run folder that ends with `result.json`.

A finished cell (its result.json exists) is skipped; an unfinished one continues from its newest checkpoint
(`--resume auto`). Several processes, on one machine or on several sharing the folder, can work on one
experiment at once: each claims a cell with an exclusive lock file before running it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from isd.checkpoint import load_teacher
from isd.data.splits import common_class_ids, evaluation_sets, head_classes
from isd.errors import UsageError
from isd.eval.features import Encoded, capped_sets, encode, raw_pixels
from isd.eval.monitor import knn_monitor
from isd.experiments.evaluate import metrics
from isd.experiments.plans import Cell, Plan
from isd.experiments.provenance import provenance
from isd.experiments.report import train_seconds
from isd.methods import method_from_config
from isd.runtime import resolve_device, write_atomic
from isd.train.loop import image_size_and_stem, train

RESULT = "result.json"
CLAIM = ".claim"


def write_json(path: Path, obj: object) -> None:
    write_atomic(path, lambda fh: fh.write(json.dumps(obj, indent=1).encode()))


def read_result(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / RESULT).read_text())
    except (OSError, ValueError):
        return None


class Claim:
    """An exclusive lock file in the cell's folder; a lock left by a dead process of this host is taken over."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / CLAIM
        self.mine = f"{socket.gethostname()} {os.getpid()}"

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._stale():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(self.mine)
            return True
        return False

    def _stale(self) -> bool:
        try:
            host, pid = self.path.read_text().split()
        except (OSError, ValueError):
            return True
        if host != socket.gethostname():
            return False  # another machine's: only it can tell
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return False
        return False

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def run_cells(plan: Plan, cells: list[Cell], exp_dir: Path, data: str = "", device: str = "auto",
              say: Callable[[str], None] = print) -> list[dict]:
    """Runs every unfinished, unclaimed cell in order; returns the results of the cells run now."""
    done = []
    for cell in cells:
        run_dir = exp_dir / cell.name
        if read_result(run_dir) is not None:
            continue
        claim = Claim(run_dir)
        if not claim.acquire():
            say(f"{cell.name}: claimed by another process ({claim.path}), skipped")
            continue
        try:
            result = run_cell(plan, cell, run_dir, data, device, say)
        finally:
            claim.release()
        m = result["metrics"]
        say(f"{cell.name}: 1-NN {m['knn1']:.2f}  20-NN {m['knn20']:.2f}  weighted 200-NN {m['knn200']:.2f}  "
            f"linear {m['linear']:.2f}  ({result['seconds']:.0f} s)")
        done.append(result)
    return done


def run_cell(plan: Plan, cell: Cell, run_dir: Path, data: str, device_name: str,
             say: Callable[[str], None]) -> dict:
    started = time.perf_counter()
    cfg = cell.config(run_dir, data)
    cfg.device = device_name if device_name != "auto" else cfg.device
    check_same_config(run_dir, cfg)
    bank, queries = capped_sets(*evaluation_sets(cfg, plan.queries), cell.eval_images)
    device = resolve_device(cfg.device)
    train_info: dict = {}
    evaluation_started = started
    encoded: Encoded
    if cell.floor == "raw-pixels":
        encoded = raw_pixels(bank, queries)
    else:
        size, stem = image_size_and_stem(cfg, bank)
        if cell.floor == "teacher":  # a fixed encoder: what a distilled student is measured against
            net = load_teacher(str(cfg.teacher), cfg.teacher_encoder)[0].to(device)
        elif cell.floor == "random-init":
            torch.manual_seed(cfg.seed)  # the initial weights of the trained cells of this seed
            net = method_from_config(cfg, in_channels=bank.channels, stem=stem, num_classes=len(bank.classes)).encoder_q
            net = net.to(device)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            cfg.resume = "auto"
            hook = knn_monitor(cfg) if cfg.eval_every else None
            say(f"{cell.name}: training in {run_dir}")
            setup = train(cfg, log=lambda m: say(f"{cell.name}: {m}"), on_epoch_end=hook)
            net = setup.model.encoder_q
            train_info = training_summary(run_dir, cfg, len(setup.source), time.perf_counter() - started)
            evaluation_started = time.perf_counter()
        encoded = encode(net, bank, queries, size, device, cfg.num_workers)
    encoded.bank_x = encoded.bank_x.to(device)  # metrics run where the bank is
    scores = metrics(encoded, len(bank.classes), seed=cfg.seed)
    common = (common_class_ids(len(bank.classes), cfg.common_classes, cfg.draw) if cfg.common_classes else
              head_classes(len(bank.classes), cfg.imbalance_ratio) if cfg.imbalance_ratio else [])
    result = {
        "plan": plan.name, "budget": cell.budget, "budget_about": plan.budget(cell.budget).get("about", ""),
        "planned_pairs": plan.planned_pairs(cell.budget),
        "cell": cell.name, "method": cell.method, "trained_method": None if cell.floor else cfg.method,
        "floor": cell.floor, "baseline": plan.baseline, "seed": cell.seed, "draw": cell.draw, "queries": plan.queries,
        "classes": bank.classes, "common_classes": common,
        "rare_classes": [c for c in range(len(bank.classes)) if common and c not in common],
        "metrics": {k: v for k, v in scores.items() if k not in ("per_class", "sizes", "protocol", "seconds")},
        "per_class": scores["per_class"], "eval": {**scores["sizes"], **scores["protocol"],
                                                   "metrics_seconds": scores["seconds"],
                                                   # raw-pixel cells written before this key used 0-1 pixels
                                                   **({"pixels": "standardised per channel"}
                                                      if cell.floor == "raw-pixels" else {}),
                                                   "seconds": round(time.perf_counter() - evaluation_started, 1)},
        "train": train_info, "seconds": round(time.perf_counter() - started, 1),
        "provenance": provenance(device), "config": cfg.to_dict(),
    }
    write_json(run_dir / RESULT, result)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# what may differ between a cell's first run and its resumption: where and how it runs, not what it computes
RUN_ONLY_KEYS = {"resume", "run_dir", "device", "num_workers", "print_freq", "data"}


def check_same_config(run_dir: Path, cfg) -> None:
    """An unfinished cell resumes only under the config it started with (a changed plan would mix two runs)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    before = yaml.safe_load(path.read_text()) or {}
    now = cfg.to_dict()
    changed = sorted(k for k in now if k not in RUN_ONLY_KEYS and k in before and before[k] != now[k])
    if changed:
        diff = ", ".join(f"{k} {before[k]} -> {now[k]}" for k in changed[:4])
        raise UsageError(f"cell {run_dir} was started with another config ({diff}); delete that folder to run the "
                         f"cell afresh, or pass another --out")


def training_summary(run_dir: Path, cfg, images: int, seconds: float) -> dict:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    windows = [r for r in rows if r.get("kind") == "train" and "images_per_s" in r]
    steady = windows[1:] or windows  # the first window holds the warm-up
    history_path = run_dir / "knn_history.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    return {"images": images, "epochs": cfg.epochs, "steps_per_epoch": images // cfg.batch_size,
            "seconds": round(train_seconds({"seconds": seconds, "history": history}), 1),
            "images_per_s": round(sum(r["images_per_s"] for r in steady) / len(steady), 1) if steady else None,
            "final_loss": windows[-1]["loss"] if windows else None,
            "history": history}
