"""`--eval-every N`: kNN of student and teacher during training, to the logs and to curves.png."""

from __future__ import annotations

import json
import time
from pathlib import Path

from isd.data.splits import evaluation_sets
from isd.errors import SettingError, UsageError
from isd.eval.features import capped_sets, encode
from isd.eval.knn import knn_of
from isd.nets.backbones import teacher_with_student_bn
from isd.plots import pyplot


def knn_monitor(cfg, ks=(1, 20)):
    """Checks the held-out split now (before any compute) and returns the on_epoch_end hook."""
    try:
        bank_set, val = evaluation_sets(cfg)  # the holdout when there is one, else the val split
    except UsageError as err:
        raise SettingError("{eval_every} needs a labelled val split: {why}", why=err) from None
    state: dict = {"history": [], "started": time.perf_counter()}
    earlier = Path(cfg.run_dir) / "knn_history.json"
    if cfg.resume and earlier.is_file():  # a resumed run continues its curves
        try:
            state["history"] = json.loads(earlier.read_text())
            state["started"] -= state["history"][-1].get("seconds", 0.0) if state["history"] else 0.0
        except (OSError, ValueError):
            state["history"] = []

    def hook(setup, epoch: int, runlog) -> dict | None:
        if epoch % cfg.eval_every and epoch != cfg.epochs:
            return None
        if setup.rank != 0:
            return None
        model = setup.model
        bank, queries = capped_sets(bank_set, val, cfg.eval_max_images, cfg.seed)
        row: dict = {"epoch": epoch, "seconds": round(time.perf_counter() - state["started"], 1)}
        encoders = {"student": model.encoder_q}
        if hasattr(model, "encoder_k"):
            encoders["teacher"] = teacher_with_student_bn(model.encoder_k, model.encoder_q)
        for name, net in encoders.items():
            encoded = encode(net, bank, queries, setup.size, setup.device, cfg.num_workers)
            result = knn_of(encoded, len(bank_set.classes), ks)
            row.update({f"{name}_{k}nn": acc for k, acc in result["at"].items()})
        state["history"] = [r for r in state["history"] if r["epoch"] < epoch] + [row]
        runlog.record("eval", epoch, row)
        runlog.say(f"epoch {epoch} kNN: " + "  ".join(f"{k} {v:.2f}%" for k, v in row.items() if k.endswith("nn")))
        (Path(setup.run_dir) / "knn_history.json").write_text(json.dumps(state["history"], indent=1))
        plot_curves(state["history"], Path(setup.run_dir) / "curves.png")
        return row

    hook.state = state  # type: ignore[attr-defined]  # the curves so far, for a caller that wants them
    return hook


def plot_curves(history: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [row["epoch"] for row in history]
    for key in sorted(k for k in history[0] if k.endswith("nn")):
        ax.plot(epochs, [row[key] for row in history], marker="o", label=key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("kNN accuracy (%)")
    ax.set_title("evolution of teacher and student")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
