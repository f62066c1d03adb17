"""`--eval-every N`: kNN of student and teacher during training, to the logs and to curves.png."""

from __future__ import annotations

import json
from pathlib import Path

from isd.data.sources import load_source
from isd.errors import UsageError
from isd.eval.features import extract_features, same_classes, seeded_subset, teacher_with_student_bn
from isd.eval.knn import knn_evaluate


def knn_monitor(cfg, ks=(1, 20)):
    """Checks the held-out split now (before any compute) and returns the on_epoch_end hook."""
    try:
        all_val = load_source(cfg.dataset, cfg.data, "val", None)
    except UsageError as err:
        raise UsageError(f"--eval-every needs a labelled val split: {err}") from None
    state: dict = {"history": []}

    def hook(setup, epoch: int, runlog) -> dict | None:
        if epoch % cfg.eval_every and epoch != cfg.epochs:
            return None
        if setup.rank != 0:
            return None
        # the bank's labels number the training classes (--subset-file keeps some): the queries' must match
        val = same_classes(all_val, setup.source.classes)
        if len(val) == 0:
            raise UsageError(f"--eval-every: {all_val.name} has no images of the {len(setup.source.classes)} "
                             f"training classes; give a val split with the same class folders")
        model = setup.model
        train_pick = seeded_subset(len(setup.source), cfg.eval_max_images, cfg.seed)
        val_pick = seeded_subset(len(val), cfg.eval_max_images, cfg.seed + 1)
        row = {"epoch": epoch}
        encoders = {"student": model.encoder_q,
                    "teacher": teacher_with_student_bn(model.encoder_k, model.encoder_q)}
        for name, net in encoders.items():
            bank, bank_y = extract_features(net, setup.source, setup.size, setup.device,
                                            num_workers=cfg.num_workers, indices=train_pick)
            query, query_y = extract_features(net, val, setup.size, setup.device,
                                              num_workers=cfg.num_workers, indices=val_pick)
            usable = {k: min(k, len(bank)) for k in ks}  # a tiny bank: 20-NN becomes all-NN
            result = knn_evaluate(bank, bank_y, query, query_y, ks=tuple(sorted(set(usable.values()))),
                                  num_classes=len(setup.source.classes))
            for k in ks:
                row[f"{name}_{k}nn"] = result["top1"][str(usable[k])]
        state["history"].append(row)
        runlog.record("eval", epoch, row)
        runlog.say(f"epoch {epoch} kNN: " + "  ".join(f"{k} {v:.2f}%" for k, v in row.items() if k != "epoch"))
        (Path(setup.run_dir) / "knn_history.json").write_text(json.dumps(state["history"], indent=1))
        plot_curves(state["history"], Path(setup.run_dir) / "curves.png")
        return row

    hook.state = state
    return hook


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [row["epoch"] for row in history]
    for key in sorted(k for k in history[0] if k != "epoch"):
        ax.plot(epochs, [row[key] for row in history], marker="o", label=key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("kNN accuracy (%)")
    ax.set_title("evolution of teacher and student")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
